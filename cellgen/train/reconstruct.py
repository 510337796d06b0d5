"""``cellgen reconstruct``: the learned codes (and rotations) evaluated on a grid of any size and
number of time points, written as mask sequences in the published layout; optionally the Dice of
each sequence against the prepared ground truth (sdf_vid <= 0) at the training resolution.

Output: OUT/seq_XXX/mask_tYYY.tif (XXX = index of the training sequence), OUT/reconstruct.json
(settings, checkpoint, training names), and with a comparison OUT/dice.csv.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from cellgen.errors import InputDataError, OutputError
from cellgen.evaluate.overlap import dice
from cellgen.generate.sequence import frame_times, output_voxel_size, sdf_function
from cellgen.generate.voxelize import voxelize_dense
from cellgen.io import read_json, read_tiff, sha256_file, write_json_atomic, write_mask_tiff, write_text_atomic
from cellgen.layout import DataDir, SequenceDir, sequence_name
from cellgen.train.checkpoint import load_trained_model

Grid3 = tuple[int, int, int]


@dataclass
class ReconstructResult:
    out: Path
    sequences: list[int]
    frames_written: int
    dice: dict[int, float] = field(default_factory=dict)
    """Mean over frames of the Dice per sequence (training index), when compared."""

    @property
    def mean_dice(self) -> float | None:
        return float(np.mean(list(self.dice.values()))) if self.dice else None


def parse_indices(text: str | None) -> list[int] | None:
    """'0,3,5' -> [0, 3, 5]; None or '' -> None (every sequence)."""
    if text is None or not text.strip():
        return None
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputDataError("--sequences must be comma-separated indices", text, "e.g. --sequences 0,3,5") from None


def _check_indices(picks: list[int], n_sequences: int) -> None:
    bad = [i for i in picks if not 0 <= i < n_sequences]
    if bad:
        raise InputDataError(f"sequence index {bad[0]} does not exist", picks,
                             f"the model was trained on {n_sequences} sequences (0..{n_sequences - 1})")


def reconstruct(
    exp_or_checkpoint: Path,
    out: Path,
    size: Grid3 | None = None,
    frames: int | None = None,
    sequences: list[int] | None = None,
    compare: Path | None = None,
    device: str = "cpu",
    chunk_points: int = 262144,
    force: bool = False,
    progress: bool = True,
) -> ReconstructResult:
    """Voxelize the learned shapes; see the module docstring."""
    trained = load_trained_model(exp_or_checkpoint, device)
    state = trained.checkpoint
    names = list(state["sequences"])
    data_size: Grid3 = tuple(int(v) for v in state["data_size"])  # type: ignore[assignment]
    grid: Grid3 = tuple(size) if size is not None else data_size  # type: ignore[assignment]
    picks = list(range(len(names))) if sequences is None else list(sequences)
    _check_indices(picks, len(names))
    frame_counts = {s: frames or int(state["frames"][s]) for s in picks}
    if compare is not None and (grid != data_size or (frames is not None and any(
            frames != int(state["frames"][s]) for s in picks))):
        raise InputDataError("--compare needs the training size and frame count", f"{grid}, {frames} frames",
                             f"drop --size/--frames (training: {data_size}, frames {state['frames']})")
    truth = DataDir(compare) if compare is not None else None
    if truth is not None:
        _check_truth(truth, names, picks, state)

    settings = {"checkpoint": str(trained.path), "checkpoint_sha256": sha256_file(trained.path),
                "epoch": int(state["epoch"]), "size": list(grid),
                "frames": {sequence_name(s): frame_counts[s] for s in picks},
                "names": {sequence_name(s): names[s] for s in picks}}
    _claim_output(Path(out), settings, force)

    model = trained.model
    codes = model.latent_codes()
    rotations = model.rotation_matrices()
    voxel_size = output_voxel_size(data_size, grid)
    result = ReconstructResult(out=Path(out), sequences=picks, frames_written=0)
    total = sum(frame_counts.values())
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("reconstructing", total=total)
        for s in picks:
            seq_dir = SequenceDir(Path(out) / sequence_name(s))
            scores = []
            truth_volume = _read_truth(truth, names[s]) if truth is not None else None
            for f, t in enumerate(frame_times(frame_counts[s])):
                path = seq_dir.mask(f)
                if path.exists() and not force:
                    mask = read_tiff(path)[0] > 0 if truth_volume is not None else None
                else:
                    fn = sdf_function(model.decoder, codes[s : s + 1], rotations[s], t)
                    mask = voxelize_dense(fn, grid, chunk_points, device=device).mask
                    write_mask_tiff(path, mask, voxel_size)
                    result.frames_written += 1
                if truth_volume is not None:
                    scores.append(dice(mask, truth_volume[f] <= 0))
                bar.advance(task)
            if scores:
                result.dice[s] = float(np.mean(scores))
    if result.dice:
        _write_dice_csv(Path(out) / "dice.csv", result, names)
    return result


def _claim_output(out: Path, settings: dict, force: bool) -> None:
    """Refuse to mix reconstructions of other settings into one folder."""
    record = out / "reconstruct.json"
    if record.is_file() and not force:
        previous = read_json(record)
        if {k: previous.get(k) for k in settings} != settings:
            raise OutputError("output folder holds reconstructions with other settings", out,
                              "use --force to redo them, or choose another output folder")
    write_json_atomic(record, settings)


def _check_truth(truth: DataDir, names: list[str], picks: list[int], state: dict) -> None:
    if not truth.manifest.is_file():
        raise InputDataError("no prepared data here (manifest.json missing)", truth.root, "pass the DATA folder of cellgen prepare")
    for s in picks:
        if not truth.sdf_file(names[s]).is_file():
            raise InputDataError(f"ground truth for training sequence {names[s]} not found", truth.sdf_file(names[s]),
                                 "compare against the data folder the model was trained on")


def _read_truth(truth: DataDir, name: str) -> np.ndarray:
    with h5py.File(truth.sdf_file(name), "r") as h5:
        return h5["sdf_vid"][...]


def _write_dice_csv(path: Path, result: ReconstructResult, names: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sequence", "name", "dice"])
    for s, value in result.dice.items():
        writer.writerow([sequence_name(s), names[s], f"{value:.6f}"])
    writer.writerow(["mean", "", f"{result.mean_dice:.6f}"])
    write_text_atomic(path, buffer.getvalue())


def default_device(gpu: bool | None) -> str:
    if gpu is None:
        gpu = torch.cuda.is_available()
    return "cuda" if gpu else "cpu"
