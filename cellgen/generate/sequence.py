"""Rendering one generated sequence: the decoder evaluated at a code, a rotation and each time
point, voxelized, written in the published layout. No Ray: the actor pool and the in-process
runner both call ``SequenceRenderer.render``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cellgen.data.sdf import frame_time, remove_debris
from cellgen.generate.voxelize import SdfFn, Voxelized, voxelize_adaptive, voxelize_dense
from cellgen.generate.writers import (
    sdf_video_writer,
    surface_mesh,
    write_frame,
    write_ply,
    write_preview,
)
from cellgen.io import read_tiff
from cellgen.layout import SequenceDir, sequence_name
from cellgen.model.decoder import SdfDecoder
from cellgen.model.rotation import rotate_points

TEST_KILL_MARKER_ENV = "CELLGEN_TEST_KILL_MARKER"
"""Tests only: the first renderer that creates this file dies (os._exit) after one frame."""


def frame_times(frames: int) -> list[float]:
    """Times of ``frames`` evenly spaced frames over the learned range [-1, 1] (0 for one frame)."""
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    return [frame_time(f, frames) for f in range(frames)]


def output_voxel_size(data_size: tuple[int, int, int], size: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size (z, y, x) of an output grid in training-grid voxels: both grids span the same
    physical box, so a non-cubic output grid gets anisotropic voxels and keeps the aspect."""
    return tuple(  # type: ignore[return-value]
        (max(d, 2) - 1) / (n - 1) if n > 1 else float(max(d, 2) - 1) for d, n in zip(data_size, size)
    )


@dataclass(frozen=True)
class RenderSettings:
    """Everything a renderer needs besides the model (plain values: sent to Ray actors)."""

    out: str
    size: tuple[int, int, int]
    times: tuple[float, ...]
    voxelizer: str
    chunk_points: int
    coarse_cell: int
    safety: float
    margin: float
    units_per_sdf: float | None
    max_trusted_sdf: float | None
    voxel_size: tuple[float, float, float]
    write_sdf: bool = False
    write_mesh: bool = False
    debris_fraction: float = 0.0
    """Remove pieces smaller than this fraction of a frame's largest piece (0 = raw output)."""

    def sequence_dir(self, index: int) -> SequenceDir:
        return SequenceDir(Path(self.out) / sequence_name(index))

    def frame_files(self, seq: SequenceDir, frame: int) -> list[Path]:
        files = [seq.mask(frame), seq.mip(frame)]
        if self.write_mesh:
            files.append(seq.mesh(frame))
        return files

    def missing_frames(self, seq: SequenceDir) -> list[int]:
        return [f for f in range(len(self.times)) if not all(p.exists() for p in self.frame_files(seq, f))]

    def is_done(self, index: int) -> bool:
        """A sequence is done when every file is in place (the preview is written last)."""
        seq = self.sequence_dir(index)
        if not seq.preview.exists() or (self.write_sdf and not seq.sdf_video.exists()):
            return False
        return not self.missing_frames(seq)


@dataclass(frozen=True)
class SequenceTask:
    """One sequence to render: its code and the rotation applied as ``xyz @ rotation``."""

    index: int
    code: tuple[float, ...]
    rotation: tuple[tuple[float, float, float], ...]


@dataclass
class SequenceStats:
    index: int
    frames_rendered: int
    evaluations: int
    seconds: float
    debris_frames: int = 0
    """Frames in which pieces were removed as debris."""
    debris_voxels: int = 0


def sdf_function(decoder: SdfDecoder, code: Tensor, rotation: Tensor, t: float) -> SdfFn:
    """xyz (N, 3) -> decoder(code, [xyz @ rotation, t]); the code (1, L)'s share of the network
    is computed once per call, not once per point (``SdfDecoder.forward_indexed``)."""

    def fn(xyz: Tensor) -> Tensor:
        time_column = torch.full((xyz.shape[0], 1), float(t), dtype=xyz.dtype, device=xyz.device)
        xyzt = torch.cat([rotate_points(xyz, rotation), time_column], dim=1)
        return decoder.forward_indexed(code, None, xyzt)

    return fn


def voxelize(sdf_fn: SdfFn, settings: RenderSettings, device: torch.device, keep_sdf: bool) -> Voxelized:
    """The frame's mask (and SDF when kept), with debris removed as ``settings`` asks."""
    return without_debris(_voxelize_raw(sdf_fn, settings, device, keep_sdf), settings.debris_fraction)


def without_debris(result: Voxelized, debris_fraction: float) -> Voxelized:
    """``result`` without pieces smaller than ``debris_fraction`` of its largest piece; in a kept
    SDF the removed voxels turn positive (outside), so a mesh made from it agrees with the mask."""
    if debris_fraction <= 0:
        return result
    mask = remove_debris(result.mask, debris_fraction)
    removed = result.mask & ~mask
    count = int(np.count_nonzero(removed))
    if not count:
        return result
    sdf = result.sdf
    if sdf is not None:
        sdf = sdf.copy()
        sdf[removed] = np.maximum(np.abs(sdf[removed]), np.float32(1e-6))
    return replace(result, mask=mask, sdf=sdf, debris_voxels=count)


def _voxelize_raw(sdf_fn: SdfFn, settings: RenderSettings, device: torch.device, keep_sdf: bool) -> Voxelized:
    if settings.voxelizer == "dense":
        return voxelize_dense(sdf_fn, settings.size, settings.chunk_points, device=device)
    if settings.units_per_sdf is None:
        raise ValueError("the adaptive voxelizer needs units_per_sdf")
    return voxelize_adaptive(
        sdf_fn,
        settings.size,
        units_per_sdf=settings.units_per_sdf,
        coarse_cell=settings.coarse_cell,
        chunk_points=settings.chunk_points,
        safety=settings.safety,
        margin=settings.margin,
        max_trusted_sdf=settings.max_trusted_sdf,
        keep_sdf=keep_sdf,
        device=device,
    )


class SequenceRenderer:
    """Holds one decoder; renders sequences one after another. Ray wraps this class as an actor."""

    def __init__(
        self,
        decoder: SdfDecoder | None,
        settings: RenderSettings,
        device: str = "cpu",
        checkpoint: str | None = None,
        threads: int | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        if decoder is None:
            if checkpoint is None:
                raise ValueError("give a decoder or a checkpoint")
            from cellgen.train.checkpoint import load_trained_model

            decoder = load_trained_model(Path(checkpoint), self.device).model.decoder
        self.decoder = decoder.to(self.device).eval()
        self.settings = settings

    def render(self, task: SequenceTask, on_frame: Callable[[int, int], None] | None = None) -> SequenceStats:
        """Render the frames of ``task`` that are missing and the sequence files; skip done work."""
        settings = self.settings
        seq = settings.sequence_dir(task.index)
        seq.root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(seq.root)
        started = time.perf_counter()
        code = torch.tensor(task.code, dtype=torch.float32, device=self.device).reshape(1, -1)
        rotation = torch.tensor(task.rotation, dtype=torch.float32, device=self.device)
        need_sdf = settings.write_sdf and not seq.sdf_video.exists()
        frames = range(len(settings.times)) if need_sdf else settings.missing_frames(seq)
        evaluations = debris_frames = debris_voxels = 0
        with ExitStack() as stack:
            write_sdf = None
            if need_sdf:
                write_sdf = stack.enter_context(
                    sdf_video_writer(
                        seq.sdf_video,
                        len(settings.times),
                        settings.size,
                        list(settings.times),
                        exact="everywhere" if settings.voxelizer == "dense" else "voxels next to the surface",
                    )
                )
            for count, frame in enumerate(frames):
                fn = sdf_function(self.decoder, code, rotation, settings.times[frame])
                result = voxelize(fn, settings, self.device, keep_sdf=need_sdf or settings.write_mesh)
                evaluations += result.evaluations
                debris_frames += result.debris_voxels > 0
                debris_voxels += result.debris_voxels
                if write_sdf is not None:
                    write_sdf(frame, result.sdf)
                if settings.write_mesh and not seq.mesh(frame).exists():
                    write_ply(seq.mesh(frame), *surface_mesh(result.sdf, settings.voxel_size))
                if not (seq.mask(frame).exists() and seq.mip(frame).exists()):
                    write_frame(seq.mask(frame), seq.mip(frame), result.mask, settings.voxel_size)
                if count == 0:
                    _die_here_for_tests()
                if on_frame is not None:
                    on_frame(task.index, frame)
        if not seq.preview.exists() or frames:
            write_preview(seq.preview, [read_tiff(seq.mip(f))[0] for f in range(len(settings.times))])
        return SequenceStats(
            task.index, len(frames), evaluations, time.perf_counter() - started, debris_frames, debris_voxels
        )


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files left by a renderer that died mid-write (one renderer per sequence)."""
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _die_here_for_tests() -> None:
    marker = os.environ.get(TEST_KILL_MARKER_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(17)

