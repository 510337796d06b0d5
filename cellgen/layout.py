"""Where files go. The only module that knows the data and experiment directory layouts.

Data directory (written by ``cellgen prepare``)::

    DATA/
      manifest.json            sequences, frame counts, sources, shapes, shards, settings hash
      sdf/<sequence>.h5        dataset sdf_vid float32 (T, Z, Y, X), one gzip chunk per frame
      points/shard_000.h5 ...  sampled points: xyzt (N, 4), sdf (N,), sequence (N,), frames table
      points/.samples/         per-sequence samples while prepare runs (removed once shards exist)

Experiment directory (written by ``cellgen train`` and later stages)::

    EXP/
      config.yaml              the resolved config of the run
      data.json                which data directory and manifest hash it was trained on
      checkpoints/epoch_000100.pt ...   one file per checkpoint (model, codes, rotations, optimiser)
      metrics.csv              one row per epoch
      loss.png                 loss curve
      ray/                     Ray Train's own run folder (storage_path)
      reconstructions/         ``cellgen reconstruct`` output, unless another OUT is given

Mask sequences (phantoms, reconstructions, generated cells; the published layout)::

    OUT/seq_000/mask_t000.tif ... mask_t029.tif   3D uint8 ZYX, 0 / 255
    OUT/seq_000/mip_t000.tif ...                  2D max-intensity projection along Z
    OUT/seq_000/preview.gif                       MIPs over time

Synthetic microscopy (written by ``cellgen render``; each view folder is in the layout above)::

    OUT/render.json                    settings, masks folder, views written
    OUT/mip/seq_000/image_t000.tif     2D uint16 maximum-intensity projection along Z
    OUT/mip/seq_000/mask_t000.tif      2D uint8 0 / 255: MIP of the 3D mask
    OUT/slice/seq_000/...              2D in-focus slice through the middle of the cell, its mask
    OUT/3d/seq_000/...                 3D uint16 stack and the 3D mask

Demo run (written by ``cellgen demo OUT``), one folder per cell line::

    OUT/SUMMARY.md                     headline figures of every line
    OUT/<line>/masks/                  training phantoms (mask sequences)
    OUT/<line>/data/                   prepared data (DATA above)
    OUT/<line>/exp/                    the trained demo model (EXP above)
    OUT/<line>/reconstructions/        the model's reconstructions of the phantoms
    OUT/<line>/synthetic/              generated cells
    OUT/<line>/report/                 ``cellgen evaluate`` of synthetic vs phantoms
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


def sequence_name(index: int) -> str:
    return f"seq_{index:03d}"


def mask_name(frame: int) -> str:
    return f"mask_t{frame:03d}.tif"


def mip_name(frame: int) -> str:
    return f"mip_t{frame:03d}.tif"


def image_name(frame: int) -> str:
    return f"image_t{frame:03d}.tif"


@dataclass(frozen=True)
class DataDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def sdf_dir(self) -> Path:
        return self.root / "sdf"

    def sdf_file(self, sequence: str) -> Path:
        return self.sdf_dir / f"{sequence}.h5"

    @property
    def points_dir(self) -> Path:
        return self.root / "points"

    def shard_file(self, index: int) -> Path:
        return self.points_dir / f"shard_{index:03d}.h5"

    def shard_files(self) -> list[Path]:
        return sorted(self.points_dir.glob("shard_*.h5"))

    @property
    def samples_dir(self) -> Path:
        """Per-sequence point samples that ``prepare`` streams into the shards, then deletes."""
        return self.points_dir / ".samples"

    def samples_file(self, sequence: str) -> Path:
        return self.samples_dir / f"{sequence}.h5"


_CKPT = re.compile(r"^epoch_(\d{6,})\.pt$")


@dataclass(frozen=True)
class ExperimentDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_ref(self) -> Path:
        return self.root / "data.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints_dir / f"epoch_{epoch:06d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (temporary files are never matched), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for path in self.checkpoints_dir.iterdir():
            match = _CKPT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def ray_dir(self) -> Path:
        return self.root / "ray"

    @property
    def stop_request(self) -> Path:
        """Created by the driver on SIGTERM/Ctrl-C; workers checkpoint and stop when it appears."""
        return self.root / ".stop"

    @property
    def reconstructions(self) -> Path:
        return self.root / "reconstructions"


@dataclass(frozen=True)
class SequenceDir:
    """One mask sequence in the published layout."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def mask(self, frame: int) -> Path:
        return self.root / mask_name(frame)

    def mip(self, frame: int) -> Path:
        return self.root / mip_name(frame)

    def image(self, frame: int) -> Path:
        """A synthetic microscopy image of the frame (``cellgen render``)."""
        return self.root / image_name(frame)

    def mesh(self, frame: int) -> Path:
        """Surface mesh of the frame (``cellgen generate --mesh``), binary PLY."""
        return self.root / f"mesh_t{frame:03d}.ply"

    @property
    def sdf_video(self) -> Path:
        """The sequence's SDF volumes (``cellgen generate --sdf``), prepare's sdf_vid format."""
        return self.root / "sdf.h5"

    @property
    def preview(self) -> Path:
        return self.root / "preview.gif"


@dataclass(frozen=True)
class RenderDir:
    """Output of ``cellgen render``: one folder per view (mip, slice, 3d) of mask sequences."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def record(self) -> Path:
        return self.root / "render.json"

    def view(self, view: str) -> Path:
        return self.root / view

    def sequence(self, view: str, sequence: str) -> SequenceDir:
        return SequenceDir(self.root / view / sequence)


@dataclass(frozen=True)
class DemoLineDir:
    """One cell line's folder of a ``cellgen demo`` run (``DemoLineDir.of(OUT, line)``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, demo_out: Path, line: str) -> DemoLineDir:
        return cls(Path(demo_out) / line)

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def exp(self) -> Path:
        return self.root / "exp"

    @property
    def reconstructions(self) -> Path:
        return self.root / "reconstructions"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def report(self) -> Path:
        return self.root / "report"
