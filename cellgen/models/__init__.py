"""Trained models that ship with cellgen: one small demo model per cell line.

``demo-plat.pt``, ``demo-cele.pt`` and ``demo-filo.pt`` are exported checkpoints (see
``cellgen.train.checkpoint.export_model``) of ``cellgen demo``'s training on its own phantoms
(configs/demo.yaml), so ``cellgen generate --model demo-filo OUT`` works right after install.
``SHA256SUMS`` lists their checksums (``sha256sum -c SHA256SUMS`` checks them).

Rebuild them, bit for bit on CPU with the pinned torch, with ``make models``, which runs::

    cellgen demo out/models          # the demo pipeline and config, all three lines
    python -m cellgen.models out/models
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cellgen.demo import LINES
from cellgen.errors import CellgenError, CheckpointError
from cellgen.layout import DemoLineDir

MODELS_DIR = Path(__file__).resolve().parent
CHECKSUMS = "SHA256SUMS"


class ModelNotFound(CellgenError):
    """A ``--model`` that is neither a shipped model nor a file."""


def shipped_name(line: str) -> str:
    return f"demo-{line}"


def available(folder: Path = MODELS_DIR) -> dict[str, Path]:
    """Shipped model name -> file, e.g. ``{"demo-cele": .../demo-cele.pt, ...}``."""
    return {path.stem: path for path in sorted(Path(folder).glob("*.pt"))}


def resolve(name: str, folder: Path = MODELS_DIR) -> Path:
    """The file of a shipped model, or ``name`` itself when it is the path of a model file."""
    models = available(folder)
    if name in models:
        return models[name]
    path = Path(name).expanduser()
    if path.is_file():
        return path
    choices = f"choose one of {', '.join(models)}" if models else "no model is installed"
    raise ModelNotFound("unknown model", name, f"{choices}, or give the path of an exported .pt file")


def read_checksums(folder: Path = MODELS_DIR) -> dict[str, str]:
    """File name -> sha256 hex digest, from ``SHA256SUMS`` (``sha256sum`` format)."""
    sums = {}
    path = Path(folder) / CHECKSUMS
    if path.is_file():
        for line in path.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if digest and name:
                sums[name.lstrip("*")] = digest
    return sums


def write_checksums(folder: Path = MODELS_DIR) -> Path:
    """Rewrite ``SHA256SUMS`` for every ``*.pt`` in ``folder`` (sorted, ``sha256sum`` format)."""
    from cellgen.io import sha256_file, write_text_atomic

    path = Path(folder) / CHECKSUMS
    lines = [f"{sha256_file(file)}  {file.name}" for file in available(folder).values()]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def ship_demo_models(demo_out: Path, folder: Path = MODELS_DIR, lines: Sequence[str] = LINES) -> dict[str, Path]:
    """Export ``demo_out/<line>/exp`` (a ``cellgen demo`` output folder) to
    ``folder/demo-<line>.pt`` for every line, then rewrite ``SHA256SUMS``."""
    from cellgen.train.checkpoint import export_model, find_checkpoint, load_checkpoint

    sources = {}
    for line in lines:  # check every line before replacing any shipped file
        checkpoint = find_checkpoint(DemoLineDir.of(demo_out, line).exp)
        state = load_checkpoint(checkpoint)
        epochs = int(state["config"]["train"]["epochs"])
        if int(state["epoch"]) < epochs:
            raise CheckpointError(f"the {line} demo training is not finished (epoch {state['epoch']} of {epochs})",
                                  checkpoint, f"rerun cellgen demo {demo_out} to finish it")
        sources[line] = checkpoint
    shipped = {}
    for line, checkpoint in sources.items():
        name = shipped_name(line)
        shipped[name] = export_model(checkpoint, Path(folder) / f"{name}.pt")
    write_checksums(folder)
    return shipped
