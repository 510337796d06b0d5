"""Turning an SDF function into a voxel mask: dense (every voxel) and adaptive (coarse-to-fine).

Coordinates follow the project convention: voxel (k, j, i) of a (Z, Y, X) grid sits at
x = lin(X)[i], y = lin(Y)[j], z = lin(Z)[k], lin(n) = linspace(-1, 1, n) (0 when n == 1), and
points are handed to ``sdf_fn`` as (x, y, z) rows. mask = sdf <= 0.

The adaptive voxelizer tiles the grid into blocks of ``coarse_cell`` voxels and evaluates each
block at the centre of its voxel centres. A value v means the surface is at least
``safety * (|v| - margin) * units_per_sdf`` coordinate units away: a Lipschitz bound, made
conservative twice because a network is only approximately a distance function -- ``margin``
absorbs its error near the surface (ripples finer than the training grid move the zero level a
little), ``safety`` < 1 a gradient somewhat steeper than the target's. A block whose farthest
voxel is closer than that bound holds no surface and takes the sign of v. Other blocks are halved and
re-evaluated until blocks are single voxels, which are evaluated exactly where the dense
voxelizer would. Beyond the training clamp distance the learned SDF is a constant plateau that
says only "far away", so |v| is trusted at most up to ``max_trusted_sdf``: blocks wider than the
clamp distance are always refined.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SdfFn = Callable[[Tensor], Tensor]
"""xyz (N, 3) in [-1, 1] -> sdf (N,)."""

Shape3 = tuple[int, int, int]

DEFAULT_SAFETY = 0.8
"""Share of the Lipschitz distance bound the adaptive voxelizer relies on."""
DEFAULT_MARGIN = 0.05
"""SDF units taken off |v| before the bound is used (the network's error near the surface)."""


@dataclass
class Voxelized:
    mask: np.ndarray
    """bool (Z, Y, X): sdf <= 0."""
    sdf: np.ndarray | None
    """float32 (Z, Y, X) or None. Adaptive: exact on evaluated voxels (every voxel next to the
    surface when ``keep_sdf``), elsewhere the value of the enclosing block's centre."""
    evaluations: int
    """Points passed through ``sdf_fn``."""
    debris_voxels: int = 0
    """Voxels removed afterwards as debris (``sequence.without_debris``)."""


def grid_axes(shape: Shape3, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """The z, y, x coordinate axes of a (Z, Y, X) grid: linspace(-1, 1, n), and [0] when n == 1."""
    _check_shape(shape)
    return tuple(  # type: ignore[return-value]
        torch.zeros(1, device=device) if n == 1 else torch.linspace(-1.0, 1.0, n, device=device)
        for n in shape
    )


def _check_shape(shape: Sequence[int]) -> None:
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"grid shape must be three positive sides (Z, Y, X), got {tuple(shape)}")


def _evaluate(sdf_fn: SdfFn, xyz: Tensor, chunk_points: int) -> Tensor:
    """sdf_fn over ``xyz`` in chunks, as float32 on the points' device."""
    out = torch.empty(xyz.shape[0], dtype=torch.float32, device=xyz.device)
    with torch.no_grad():
        for start in range(0, xyz.shape[0], chunk_points):
            stop = min(start + chunk_points, xyz.shape[0])
            out[start:stop] = sdf_fn(xyz[start:stop]).reshape(-1).to(torch.float32)
    return out


def voxelize_dense(
    sdf_fn: SdfFn, shape: Shape3, chunk_points: int = 262144, device: torch.device | str = "cpu"
) -> Voxelized:
    """Every voxel through ``sdf_fn`` in chunks of ``chunk_points`` (the reference behaviour)."""
    z_axis, y_axis, x_axis = grid_axes(shape, device)
    nz, ny, nx = shape
    total = nz * ny * nx
    sdf = torch.empty(total, dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, total, chunk_points):
            index = torch.arange(start, min(start + chunk_points, total), device=device)
            xyz = torch.stack([x_axis[index % nx], y_axis[(index // nx) % ny], z_axis[index // (nx * ny)]], 1)
            sdf[start : start + xyz.shape[0]] = sdf_fn(xyz).reshape(-1).to(torch.float32)
    volume = sdf.reshape(shape).cpu().numpy()
    return Voxelized(mask=volume <= 0, sdf=volume, evaluations=total)


def voxelize_adaptive(
    sdf_fn: SdfFn,
    shape: Shape3,
    *,
    units_per_sdf: float | Sequence[float],
    coarse_cell: int = 8,
    chunk_points: int = 262144,
    safety: float = DEFAULT_SAFETY,
    margin: float = DEFAULT_MARGIN,
    max_trusted_sdf: float | None = None,
    keep_sdf: bool = False,
    device: torch.device | str = "cpu",
) -> Voxelized:
    """Coarse-to-fine voxelization; the same mask as ``voxelize_dense`` wherever ``sdf_fn``
    obeys the distance bound.

    units_per_sdf: coordinate units per SDF unit (one number, or per axis (z, y, x)): a value v
        means the surface is at least |v| * units_per_sdf away.
    coarse_cell: side of the first blocks, in voxels.
    safety: in (0, 1]: only this share of the bound is relied on.
    margin: SDF units taken off |v| first: the network's error, which can move its surface by
        that much wherever the learned shape has detail finer than the training grid.
    max_trusted_sdf: |v| above this is treated as this (the clamp plateau); None = no limit.
    keep_sdf: return an SDF volume that is exact on every voxel with a neighbour of the other
        sign (so marching cubes on it matches the dense result); costs a few extra evaluations.
    """
    _check_shape(shape)
    if coarse_cell < 1:
        raise ValueError(f"coarse_cell must be at least 1, got {coarse_cell}")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must lie in (0, 1], got {safety}")
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    units = torch.as_tensor(units_per_sdf, dtype=torch.float64).reshape(-1).expand(3).clone()
    if not bool((units > 0).all()):
        raise ValueError(f"units_per_sdf must be positive, got {units_per_sdf}")
    axes = grid_axes(shape, device)
    axes64 = [a.to(torch.float64) for a in axes]
    sdf = torch.zeros(shape, dtype=torch.float32, device=device)
    evaluated = torch.zeros(shape, dtype=torch.bool, device=device)
    evaluations = 0

    lo, size = _tile(shape, coarse_cell, device)
    while lo.shape[0]:
        hi = lo + size - 1
        xyz = torch.stack([(axes[a][lo[:, a]] + axes[a][hi[:, a]]) / 2 for a in (2, 1, 0)], 1)
        values = _evaluate(sdf_fn, xyz, chunk_points)
        evaluations += int(values.shape[0])
        single = (size == 1).all(1)
        # Voxels: exact values, final.
        voxel = lo[single]
        sdf[voxel[:, 0], voxel[:, 1], voxel[:, 2]] = values[single]
        evaluated[voxel[:, 0], voxel[:, 1], voxel[:, 2]] = True
        # Blocks: distance from the evaluated centre to the farthest voxel centre, in SDF units.
        block_lo, block_size, block_values = lo[~single], size[~single], values[~single]
        half = torch.stack(
            [(axes64[a][block_lo[:, a] + block_size[:, a] - 1] - axes64[a][block_lo[:, a]]) / 2 for a in range(3)], 1
        )
        needed = torch.sqrt(((half / units.to(device)) ** 2).sum(1))
        trusted = block_values.abs().to(torch.float64)
        if max_trusted_sdf is not None:
            trusted = trusted.clamp(max=max_trusted_sdf)
        empty = safety * (trusted - margin) > needed
        _fill_blocks(sdf, block_lo[empty], block_size[empty], block_values[empty])
        lo, size = _split(block_lo[~empty], block_size[~empty])

    if keep_sdf:
        evaluations += _evaluate_boundary(sdf_fn, sdf, evaluated, axes, chunk_points)
    volume = sdf.cpu().numpy()
    return Voxelized(mask=volume <= 0, sdf=volume if keep_sdf else None, evaluations=evaluations)


def _tile(shape: Shape3, cell: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Blocks of side ``cell`` covering the grid (edge blocks truncated): lo (B, 3), size (B, 3)."""
    starts = [torch.arange(0, n, cell, device=device) for n in shape]
    lo = torch.cartesian_prod(*starts).reshape(-1, 3)
    limits = torch.tensor(shape, device=device)
    size = torch.minimum(lo + cell, limits) - lo
    return lo, size


def _split(lo: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """Halve every block along each axis longer than one voxel (up to 8 children)."""
    first = (size + 1) // 2
    children_lo, children_size = [], []
    for bits in itertools.product((0, 1), repeat=3):
        upper = torch.tensor(bits, dtype=torch.bool, device=lo.device)
        child_size = torch.where(upper, size - first, first)
        keep = (child_size > 0).all(1)
        children_lo.append((lo + upper * first)[keep])
        children_size.append(child_size[keep])
    return torch.cat(children_lo), torch.cat(children_size)


def _fill_blocks(sdf: Tensor, lo: Tensor, size: Tensor, values: Tensor, max_voxels: int = 1 << 22) -> None:
    """sdf[block] = value for each block, vectorised over blocks of equal size."""
    if lo.shape[0] == 0:
        return
    shapes, group = torch.unique(size, dim=0, return_inverse=True)
    flat = sdf.view(-1)
    _, ny, nx = sdf.shape
    for g, block_shape in enumerate(shapes.tolist()):
        members = (group == g).nonzero().squeeze(1)
        offsets = torch.cartesian_prod(*[torch.arange(n, device=sdf.device) for n in block_shape]).reshape(-1, 3)
        offset_index = (offsets[:, 0] * ny + offsets[:, 1]) * nx + offsets[:, 2]
        per_batch = max(1, max_voxels // offsets.shape[0])
        for start in range(0, members.shape[0], per_batch):
            batch = members[start : start + per_batch]
            base = (lo[batch, 0] * ny + lo[batch, 1]) * nx + lo[batch, 2]
            index = (base[:, None] + offset_index[None, :]).reshape(-1)
            flat[index] = values[batch].repeat_interleave(offsets.shape[0])


def _evaluate_boundary(
    sdf_fn: SdfFn, sdf: Tensor, evaluated: Tensor, axes: tuple[Tensor, Tensor, Tensor], chunk_points: int
) -> int:
    """Evaluate every not-yet-exact voxel that has a face neighbour of the other sign."""
    inside = sdf <= 0
    boundary = torch.zeros_like(inside)
    for dim in range(3):
        n = inside.shape[dim]
        if n < 2:
            continue
        differs = inside.narrow(dim, 0, n - 1) != inside.narrow(dim, 1, n - 1)
        boundary.narrow(dim, 0, n - 1).logical_or_(differs)
        boundary.narrow(dim, 1, n - 1).logical_or_(differs)
    todo = (boundary & ~evaluated).nonzero()
    if todo.shape[0] == 0:
        return 0
    z_axis, y_axis, x_axis = axes
    xyz = torch.stack([x_axis[todo[:, 2]], y_axis[todo[:, 1]], z_axis[todo[:, 0]]], 1)
    sdf[todo[:, 0], todo[:, 1], todo[:, 2]] = _evaluate(sdf_fn, xyz, chunk_points)
    evaluated[todo[:, 0], todo[:, 1], todo[:, 2]] = True
    return int(todo.shape[0])


def units_per_sdf_for(data_size: Sequence[int], sdf_factor_min: float) -> float:
    """Coordinate units per SDF unit of a model trained on a ``data_size`` (Z, Y, X) grid whose
    frames have at least ``sdf_factor_min`` training voxels per SDF unit.

    One training voxel along axis a is 2 / (D_a - 1) coordinate units; the smallest over the axes
    keeps the bound valid in every direction, so it also holds for rotated coordinates.
    """
    steps = [2.0 / (n - 1) for n in data_size if n > 1]
    if not steps:
        raise ValueError(f"training grid has no axis longer than one voxel: {tuple(data_size)}")
    return float(sdf_factor_min) * min(steps)


def sphere_sdf(radius: float, centre: Sequence[float] = (0.0, 0.0, 0.0)) -> SdfFn:
    """Exact SDF of a sphere (coordinate units), for tests and benchmarks."""
    c = torch.tensor(centre, dtype=torch.float32)

    def fn(xyz: Tensor) -> Tensor:
        return torch.linalg.vector_norm(xyz - c.to(xyz.device), dim=1) - radius

    return fn


def torus_sdf(major: float, minor: float) -> SdfFn:
    """Exact SDF of a torus around the z axis (coordinate units)."""

    def fn(xyz: Tensor) -> Tensor:
        ring = torch.sqrt(xyz[:, 0] ** 2 + xyz[:, 1] ** 2) - major
        return torch.sqrt(ring**2 + xyz[:, 2] ** 2) - minor

    return fn


__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_SAFETY",
    "SdfFn",
    "Voxelized",
    "grid_axes",
    "sphere_sdf",
    "torus_sdf",
    "units_per_sdf_for",
    "voxelize_adaptive",
    "voxelize_dense",
]
