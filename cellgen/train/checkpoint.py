"""One checkpoint = one file, written atomically by rank 0, loadable with ``weights_only=True``.

Keys: ``format`` (1), ``epoch`` (epochs completed), ``model`` (AutoDecoder state_dict),
``optimizer``, ``config`` (resolved config dict), ``data_hash`` (manifest settings_hash),
``sequences`` (names), ``frames`` (frame count per sequence), ``data_size`` [Z, Y, X],
``sdf_factor_min`` / ``sdf_factor_max`` (voxels per SDF unit over all training frames),
``normalisation`` ("frame" | "fixed"), ``cellgen_version``. Only tensors, primitives, lists and
dicts, so nothing in a checkpoint can execute code when loaded.

An exported model (``export_model``, ``cellgen export``) is the same format without
``optimizer`` and ``data_hash``: what generation needs, nothing machine- or time-dependent.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cellgen.config import CellgenConfig, config_from_dict
from cellgen.errors import CellgenError, CheckpointError
from cellgen.io import atomic_path
from cellgen.layout import ExperimentDir
from cellgen.model.autodecoder import AutoDecoder

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "epoch", "model", "config", "sequences", "frames", "data_size")
EXPORTED_KEYS = ("sdf_factor_min", "sdf_factor_max", "normalisation", "cellgen_version")
"""What an exported model keeps besides REQUIRED_KEYS: the facts generation needs. Not the
optimiser, and not ``data_hash``: prepare's settings hash covers the source files' mtimes (its
rerun check), so it differs between two identical builds and would make exports time-dependent."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary name + rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint file safely; any unreadable or foreign file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path, "check the path, or train first")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError("cannot read checkpoint", path, f"{first[:120]}; is the file complete?") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError("not a cellgen checkpoint", path, "expected a file written by cellgen train")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint format {state['format']} is not supported (expected {CHECKPOINT_FORMAT})", path
        )
    return state


def find_checkpoint(exp_or_checkpoint: Path) -> Path:
    """A checkpoint file, or the newest complete checkpoint of an experiment directory."""
    path = Path(exp_or_checkpoint)
    if path.is_file():
        return path
    if path.is_dir():
        latest = ExperimentDir(path).latest_checkpoint()
        if latest is None:
            raise CheckpointError("experiment has no checkpoint yet", path, "run cellgen train first")
        return latest
    raise CheckpointError("no experiment or checkpoint at this path", path, "check the path")


@dataclass
class TrainedModel:
    model: AutoDecoder
    config: CellgenConfig
    checkpoint: dict
    path: Path


def load_trained_model(exp_or_checkpoint: Path, device: Any = "cpu") -> TrainedModel:
    """The trained auto-decoder of an experiment (newest checkpoint) or of one checkpoint file,
    in eval mode on ``device``."""
    path = find_checkpoint(exp_or_checkpoint)
    state = load_checkpoint(path)
    try:
        config = config_from_dict(state["config"])
    except CellgenError as err:
        raise CheckpointError("checkpoint holds an invalid config", path, err.message) from None
    model = AutoDecoder(config.model, len(state["sequences"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError("checkpoint weights do not fit its config", path, str(err)[:120]) from None
    model.to(device).eval()
    return TrainedModel(model=model, config=config, checkpoint=state, path=path)


def export_model(checkpoint_or_exp: Path, out: Path) -> Path:
    """Write a stripped copy of a checkpoint (an experiment's newest, or one file) to ``out``:
    model weights, resolved config and generation metadata; no optimiser state, no paths, no times.

    The bytes depend only on the checkpoint's content: ``torch.save`` names the zip's records
    after the file it writes to, so the model is serialised in memory (fixed record names, zip
    times fixed to 1980) and then written atomically. Loads with ``load_trained_model(out)``.
    """
    out = Path(out)
    if out.is_dir():
        raise CheckpointError("the export target is a folder", out, "give a file name, e.g. model.pt")
    source = find_checkpoint(checkpoint_or_exp)
    trained = load_trained_model(source)  # refuses foreign files and weights that do not fit
    state = trained.checkpoint
    stripped = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(state["epoch"]),
        "model": {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state["model"].items()},
        "config": trained.config.to_dict(),
        "sequences": [str(name) for name in state["sequences"]],
        "frames": [int(n) for n in state["frames"]],
        "data_size": [int(n) for n in state["data_size"]],
    }
    stripped.update({key: state[key] for key in EXPORTED_KEYS if key in state})
    buffer = io.BytesIO()
    torch.save(stripped, buffer)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return out


def check_compatible(state: dict, config: CellgenConfig, data_hash: str | None, path: Path) -> None:
    """Refuse to resume from a checkpoint of another model architecture or another data set."""
    saved_model = state["config"].get("model") or {}
    wanted_model = config.model.model_dump(mode="json")
    if saved_model != wanted_model:
        changed = sorted(k for k in set(saved_model) | set(wanted_model) if saved_model.get(k) != wanted_model.get(k))
        raise CheckpointError(
            f"cannot resume: the model config differs from the checkpoint's ({', '.join(changed)})",
            path,
            "use the config the experiment was trained with, or train into a new experiment folder",
        )
    if data_hash is not None and state.get("data_hash") != data_hash:
        raise CheckpointError(
            "cannot resume: the checkpoint was trained on another data set (settings hash differs)",
            path,
            "use the data folder the experiment was trained on, or train into a new experiment folder",
        )
