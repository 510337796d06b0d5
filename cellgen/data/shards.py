"""Point-sample shards: the on-disk format between ``prepare`` and ``train``.

One shard is an HDF5 file holding whole frames of sampled points, each frame contiguous::

    xyzt      float32 (N, 4)  x, y, z in [-1, 1] (x = last array axis), t in [-1, 1]
    sdf       float32 (N,)    normalised signed distance (negative inside)
    sequence  int32   (N,)    index into manifest["sequences"]
    frames    int64   (F, 4)  one row per frame: sequence index, frame index, start row, count
    attrs: shard (int), settings_hash (str), n_points (int), n_frames (int)

Frames are spread round-robin over shards so every shard holds many sequences. Training workers
stream only their own shards (rank r of W reads shards r, r+W, ...), one batch of
``frames_per_batch`` frames at a time, so memory stays bounded whatever the data set size.
Point data are stored uncompressed in large chunks: reading a frame is one contiguous slice.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cellgen.errors import InputDataError
from cellgen.io import atomic_path

_CHUNK_ROWS = 1 << 16


@dataclass
class FramePoints:
    """The sampled points of one frame."""

    sequence: int
    frame: int
    xyzt: np.ndarray  # float32 (n, 4)
    sdf: np.ndarray  # float32 (n,)


def write_shard(path: str | os.PathLike[str], frames: Sequence[FramePoints], shard: int, settings_hash: str) -> None:
    """Write one shard atomically from a list of frames."""
    n = sum(len(f.sdf) for f in frames)
    with shard_writer(path, shard, settings_hash, n) as writer:
        for f in frames:
            writer.add(f)


class ShardWriter:
    """Fills one shard frame by frame, so only one frame's points are in memory at a time."""

    def __init__(self, h5: h5py.File, n_points: int):
        rows = min(n_points, _CHUNK_ROWS) or None  # an empty shard cannot be chunked
        self._xyzt = h5.create_dataset("xyzt", shape=(n_points, 4), dtype="f4", chunks=rows and (rows, 4))
        self._sdf = h5.create_dataset("sdf", shape=(n_points,), dtype="f4", chunks=rows and (rows,))
        self._sequence = h5.create_dataset("sequence", shape=(n_points,), dtype="i4", chunks=rows and (rows,))
        self.n_points = n_points
        self.rows: list[tuple[int, int, int, int]] = []
        self.written = 0

    def add(self, frame: FramePoints) -> None:
        a, b = self.written, self.written + len(frame.sdf)
        if b > self.n_points:
            raise ValueError(f"shard declared {self.n_points} points, got more")
        self._xyzt[a:b] = frame.xyzt
        self._sdf[a:b] = frame.sdf
        self._sequence[a:b] = frame.sequence
        self.rows.append((frame.sequence, frame.frame, a, b - a))
        self.written = b


@contextlib.contextmanager
def shard_writer(
    path: str | os.PathLike[str], shard: int, settings_hash: str, n_points: int
) -> Iterator[ShardWriter]:
    """A ``ShardWriter`` for exactly ``n_points`` points; the shard appears at ``path`` only when
    the block ends without error and every point was written."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            writer = ShardWriter(h5, n_points)
            yield writer
            if writer.written != n_points:
                raise ValueError(f"shard declared {n_points} points, got {writer.written}")
            h5.create_dataset("frames", data=np.array(writer.rows, dtype=np.int64).reshape(-1, 4))
            h5.attrs["shard"] = shard
            h5.attrs["settings_hash"] = settings_hash
            h5.attrs["n_points"] = n_points
            h5.attrs["n_frames"] = len(writer.rows)


def read_frames_table(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        with h5py.File(path, "r") as h5:
            return h5["frames"][...]
    except (OSError, KeyError) as err:
        raise InputDataError("cannot read point shard", path, f"{err}; rerun cellgen prepare --force") from None


@dataclass
class Batch:
    """Points of ``frames_per_batch`` frames, as numpy arrays (the trainer moves them to torch)."""

    xyzt: np.ndarray  # float32 (N, 4)
    sdf: np.ndarray  # float32 (N,)
    sequence: np.ndarray  # int64 (N,)

    @property
    def n_points(self) -> int:
        return len(self.sdf)


class ShardReader:
    """Streams this worker's share of the shards as batches of whole frames.

    Every worker yields the same number of batches per epoch (DDP needs equal step counts):
    ``batches_per_epoch`` is computed from the frame counts of *all* shards' shares.
    """

    def __init__(self, shard_paths: Sequence[str | os.PathLike[str]], rank: int = 0, world_size: int = 1):
        paths = [Path(p) for p in shard_paths]
        if not paths:
            raise InputDataError("no point shards found", None, "run cellgen prepare first")
        if world_size > len(paths):
            raise InputDataError(
                f"{world_size} workers but only {len(paths)} point shards",
                None,
                f"use at most {len(paths)} workers, or prepare with --shards {world_size} or more",
            )
        self.rank = rank
        self.world_size = world_size
        self.paths = paths[rank::world_size]
        tables = [read_frames_table(p) for p in paths]
        self._share_frames = [
            sum(len(tables[i]) for i in range(r, len(paths), world_size)) for r in range(world_size)
        ]
        # (shard position in self.paths, row in that shard's frames table)
        self._tables = [tables[i] for i in range(rank, len(paths), world_size)]
        self._index = np.array(
            [(s, r) for s, t in enumerate(self._tables) for r in range(len(t))], dtype=np.int64
        ).reshape(-1, 2)

    @property
    def n_frames(self) -> int:
        return len(self._index)

    def batches_per_epoch(self, frames_per_batch: int) -> int:
        """Common step count of all workers: the smallest share decides."""
        return max(1, min(self._share_frames) // frames_per_batch) if min(self._share_frames) else 0

    def iter_batches(self, frames_per_batch: int, epoch: int, seed: int = 0) -> Iterator[Batch]:
        """Yield ``batches_per_epoch`` batches; the frame order is reshuffled every epoch."""
        n_batches = self.batches_per_epoch(frames_per_batch)
        rng = np.random.default_rng([seed, epoch, self.rank])
        order = rng.permutation(len(self._index))
        # A share smaller than the batch size is cycled, so every worker still yields n_batches.
        need = n_batches * frames_per_batch
        if need > len(order):
            order = np.resize(order, need)
        files = [h5py.File(p, "r") for p in self.paths]
        try:
            for b in range(n_batches):
                picks = order[b * frames_per_batch : (b + 1) * frames_per_batch]
                xyzt, sdf, seq = [], [], []
                for pos in picks:
                    s, row = self._index[pos]
                    seq_idx, _frame, start, count = self._tables[s][row]
                    h5 = files[s]
                    xyzt.append(h5["xyzt"][start : start + count])
                    sdf.append(h5["sdf"][start : start + count])
                    seq.append(np.full(count, seq_idx, dtype=np.int64))
                yield Batch(np.concatenate(xyzt), np.concatenate(sdf), np.concatenate(seq))
        finally:
            for h5 in files:
                h5.close()
