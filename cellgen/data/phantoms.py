"""Procedural time-lapse 3D cell shapes ("phantoms") imitating the papers' three cell lines.

They let the whole tool run without downloaded data, and give tests a ground truth:

- ``plat`` (Platynereis): a star-shaped cell body whose radius is modulated by low-order
  (degree 2 and 3) polynomial modes of the direction, i.e. low-order spherical harmonics, whose
  coefficients oscillate smoothly and quickly over time; the cell grows.
- ``cele`` (C. elegans): a growing cell that divides. Two ellipsoids start at one centre (one
  component), move apart along a random axis and are joined by a smooth minimum whose blending
  width falls to zero (the cleavage furrow); at the end they are separated by more than sqrt(3)
  voxels, so they are two components even with full (26-) connectivity.
- ``filo`` (A549): a slowly deforming cell body with thin filopodia (capsules) that grow outwards
  and branch part way through the sequence. Their radius scales with the grid but is never
  below 1.2 voxels, so they survive small grids.

Every shape is a function of the phase tau in [0, 1] of the sequence (frame f of T frames has
tau = f / (T - 1), 0 when T == 1), so shapes change smoothly between frames and a sequence drawn
with more frames samples the same motion more finely. Parameters are drawn from a generator
seeded with (seed, line, index): the same seed gives identical sequences, every index a new cell.

Geometry is in voxel units around the grid centre, ordered (x, y, z) like every point array of
cellgen; the x axis is the last array axis. Each cell stays inside a ball around its (slightly,
randomly offset) centre whose radius keeps it within the central 70 % of every grid axis, so the
SDF clamp region of ``prepare`` is never cut by the border.

Speed: each primitive is evaluated only inside its axis-aligned bounding box, in slabs of a few
z slices so that the temporaries stay in cache.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellgen import __version__
from cellgen.errors import ConfigError, InputDataError, OutputError
from cellgen.io import VoxelSize, ensure_writable_dir, read_json, write_json_atomic, write_mask_tiff
from cellgen.layout import SequenceDir, sequence_name

LINES = ("plat", "cele", "filo")
"""The phantom cell lines: Platynereis, C. elegans, A549 (filopodia)."""

GENERATOR_VERSION = 1
"""Bumped whenever the same settings would give different shapes (recorded in phantoms.json)."""

FILL_FRACTION = 0.7
"""Cells stay within this fraction of every grid axis (centred)."""

MIN_SIZE = {"plat": 8, "cele": 12, "filo": 8}
"""Smallest grid side per line (two daughter cells with a gap need a few more voxels)."""

RECORD_NAME = "phantoms.json"

Size3 = tuple[int, int, int]  # (Z, Y, X)
InsideFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

_SLAB_VOXELS = 1 << 17  # voxels per evaluation slab: temporaries of 0.5 MB stay in cache


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def phantom_sequence(line: str, index: int, frames: int, size: Size3, seed: int) -> Iterator[np.ndarray]:
    """Yield the ``frames`` masks of phantom sequence ``index``: bool arrays (Z, Y, X)."""
    check_settings(line, 1, frames, size, seed)
    cell = make_phantom(line, index, size, seed)
    grid = Grid(tuple(size))
    for frame in range(frames):
        yield cell.render(grid, frame_phase(frame, frames))


def write_phantoms(
    out: str | Path,
    line: str,
    n: int,
    frames: int,
    size: Size3,
    seed: int,
    voxel_size: VoxelSize = (1.0, 1.0, 1.0),
    workers: int = 1,
    force: bool = False,
    report: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``n`` phantom sequences into ``out`` in the published layout; return their folders.

    ``out/seq_000/mask_t000.tif ...`` (3D uint8 ZYX, 0 / 255) and ``out/phantoms.json`` (the
    settings). Frames that exist are kept, so a rerun finishes an interrupted one; a folder
    holding phantoms of other settings is refused unless ``force``, which redoes everything and
    removes masks the new settings do not have. ``report`` receives status lines.
    """
    size = tuple(int(s) for s in size)
    check_settings(line, n, frames, size, seed)
    voxel_size = _check_voxel_size(voxel_size)
    if workers < 1:
        raise ConfigError("workers must be at least 1", workers)
    out = ensure_writable_dir(out)
    settings = phantom_settings(line, n, frames, size, seed, voxel_size)
    _claim(out, settings, force)
    if force:
        _remove_stale(out, n, frames)
    folders = [out / sequence_name(i) for i in range(n)]
    todo = [i for i, folder in enumerate(folders) if force or not _complete(SequenceDir(folder), frames)]
    if report and len(todo) < n:
        report(f"{n - len(todo)} of {n} sequences already complete in {out}, skipped")
    job = dict(out=out, line=line, frames=frames, size=size, seed=seed, voxel_size=voxel_size, force=force)
    with _progress(len(todo) * frames, f"phantoms {line}") as advance:
        if workers == 1 or len(todo) <= 1:
            for index in todo:
                _write_sequence(index=index, on_frame=advance, **job)
        else:
            spawn = multiprocessing.get_context("spawn")  # no fork under a progress thread
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=spawn) as pool:
                futures = [pool.submit(_write_sequence, index=index, **job) for index in todo]
                try:
                    for future in as_completed(futures):
                        future.result()
                        advance(frames)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    if report and todo:
        shape = "x".join(str(s) for s in size)
        report(f"wrote {len(todo)} {line} phantom sequence(s) of {frames} frames at {shape} to {out}")
    return folders


def phantom_settings(
    line: str, n: int, frames: int, size: Size3, seed: int, voxel_size: VoxelSize
) -> dict[str, Any]:
    """What ``phantoms.json`` records (everything but the cellgen version decides the shapes)."""
    return {
        "line": line,
        "n": int(n),
        "frames": int(frames),
        "size": [int(s) for s in size],
        "seed": int(seed),
        "voxel_size": [float(v) for v in voxel_size],
        "generator": GENERATOR_VERSION,
        "cellgen_version": __version__,
    }


def frame_phase(frame: int, frames: int) -> float:
    """Phase tau in [0, 1] of ``frame`` in a sequence of ``frames`` (0 when there is one frame)."""
    return frame / (frames - 1) if frames > 1 else 0.0


def make_phantom(line: str, index: int, size: Size3, seed: int) -> Phantom:
    """The parameters of one phantom cell: deterministic in (line, index, size, seed)."""
    check_settings(line, 1, 1, size, seed)
    rng = np.random.default_rng([seed, LINES.index(line), index])
    grid = Grid(tuple(size))
    # Small random offset of the centre; the cell then fits in a ball that keeps it inside
    # the central FILL_FRACTION of every axis.
    offset = rng.uniform(-0.05, 0.05, 3) * grid.half
    reach = float(np.min(FILL_FRACTION * grid.half - np.abs(offset)))
    return _BUILDERS[line](rng, offset, reach, grid)


def check_settings(line: str, n: int, frames: int, size: Size3, seed: int) -> None:
    """Raise a one-line ``ConfigError`` for settings no phantom can be made from."""
    if line not in LINES:
        raise ConfigError("unknown cell line", line, f"choose one of {', '.join(LINES)}")
    if n < 1:
        raise ConfigError("number of sequences must be at least 1", n)
    if frames < 1:
        raise ConfigError("number of frames must be at least 1", frames)
    smallest = MIN_SIZE[line]
    if len(size) != 3 or any(int(s) < smallest for s in size):
        raise ConfigError(
            f"grid size for {line} must be 3 sides of at least {smallest} voxels",
            ",".join(str(s) for s in size),
            "e.g. --size 64 or --size 48,64,64",
        )
    if seed < 0:
        raise ConfigError("seed must not be negative", seed)


# --------------------------------------------------------------------------------------------
# The grid and bounding-box evaluation
# --------------------------------------------------------------------------------------------


class Grid:
    """Voxel coordinates around the grid centre; paints primitives into boolean masks.

    ``restrict=False`` evaluates every primitive on the whole grid (the benchmark's baseline).
    """

    def __init__(self, size: Size3, restrict: bool = True):
        self.shape = tuple(int(s) for s in size)
        z, y, x = self.shape
        self.half = np.array([(x - 1) / 2, (y - 1) / 2, (z - 1) / 2])  # (x, y, z)
        self.axes = [np.arange(n, dtype=np.float32) - np.float32(h) for n, h in zip((x, y, z), self.half)]
        self.restrict = restrict

    def empty(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=bool)

    def paint(
        self, mask: np.ndarray, lo: np.ndarray, hi: np.ndarray, origin: np.ndarray, inside: InsideFn
    ) -> None:
        """``mask |= inside(dx, dy, dz)`` for the voxels of the box [lo, hi] (x, y, z).

        ``inside`` gets coordinates relative to ``origin`` as broadcastable arrays of shapes
        (1, 1, nx), (1, ny, 1) and (nz, 1, 1), and returns a boolean array; it is called once
        per slab of z slices.
        """
        ranges = []
        for axis, a, b in zip(self.axes, lo, hi):
            if self.restrict:
                start = max(int(np.searchsorted(axis, a - 1e-4)), 0)
                stop = min(int(np.searchsorted(axis, b + 1e-4, side="right")), len(axis))
            else:
                start, stop = 0, len(axis)
            if start >= stop:
                return
            ranges.append((start, stop))
        (x0, x1), (y0, y1), (z0, z1) = ranges
        o = np.asarray(origin, dtype=np.float32)
        dx = (self.axes[0][x0:x1] - o[0])[None, None, :]
        dy = (self.axes[1][y0:y1] - o[1])[None, :, None]
        dz_all = self.axes[2][z0:z1] - o[2]
        step = max(1, _SLAB_VOXELS // ((x1 - x0) * (y1 - y0)))
        for k in range(z0, z1, step):
            dz = dz_all[k - z0 : k - z0 + step, None, None]
            mask[k : k + len(dz), y0:y1, x0:x1] |= inside(dx, dy, dz)


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


def _monomials(ux, uy, uz) -> list:
    """The 16 monomials of degree 2 and 3 in the direction (ux, uy, uz)."""
    xx, yy, zz, xy, xz, yz = ux * ux, uy * uy, uz * uz, ux * uy, ux * uz, uy * uz
    return [
        xx, yy, zz, xy, xz, yz,
        ux * xx, ux * yy, ux * zz, ux * xy, ux * xz, ux * yz, uy * yy, uy * zz, uy * yz, uz * zz,
    ]  # fmt: skip


_N_MODES = 16
_RADIUS_FLOOR = 0.4  # the radius never falls below this fraction of the mean radius


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly evenly spread unit vectors (n, 3)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = math.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


_DIRECTION_MODES = np.stack(_monomials(*_fibonacci_sphere(4000).T))  # (modes, directions)
_PHASES = np.linspace(0.0, 1.0, 129)


@dataclass
class StarBody:
    """A star-shaped body: radius(u, tau) = R(tau) * max(1 + m(u, tau), floor).

    m is a combination of the degree-2 and degree-3 monomials of the direction u (spanning the
    spherical harmonics of order <= 3); each coefficient is ``static + amp * sin(2 pi f tau + ph)``.
    """

    center: np.ndarray  # (x, y, z), voxels from the grid centre
    radius0: float
    growth: float  # R(tau) = radius0 * (1 + growth * tau)
    static: np.ndarray
    amp: np.ndarray
    freq: np.ndarray
    phase: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, center: np.ndarray, static: float, wobble: float,
             freq: tuple[float, float], growth: tuple[float, float]) -> StarBody:  # fmt: skip
        """Random modes (radius0 = 1; call ``fit`` to scale it)."""
        return cls(
            center=np.asarray(center, dtype=float),
            radius0=1.0,
            growth=float(rng.uniform(*growth)),
            static=rng.normal(0, static, _N_MODES),
            amp=rng.normal(0, wobble, _N_MODES),
            freq=rng.uniform(*freq, _N_MODES),
            phase=rng.uniform(0, 2 * math.pi, _N_MODES),
        )

    def coefficients(self, tau: float) -> np.ndarray:
        return self.static + self.amp * np.sin(2 * math.pi * self.freq * tau + self.phase)

    def mean_radius(self, tau: float | np.ndarray) -> float | np.ndarray:
        return self.radius0 * (1 + self.growth * tau)

    def largest_radius(self, tau: float | np.ndarray) -> np.ndarray:
        """The largest radius over all directions (sampled finely) at each phase in ``tau``."""
        phases = np.atleast_1d(tau)
        coeffs = np.stack([self.coefficients(t) for t in phases])  # (phases, modes)
        factor = np.maximum(1 + coeffs @ _DIRECTION_MODES, _RADIUS_FLOOR).max(axis=1)
        return factor * self.mean_radius(phases)

    def extent(self) -> float:
        """The largest radius over the whole sequence."""
        return float(self.largest_radius(_PHASES).max())

    def fit(self, reach: float) -> None:
        """Scale the body so its largest radius is ``reach`` (2 % to spare for the sampling)."""
        self.radius0 *= 0.98 * reach / self.extent()

    def paint(self, grid: Grid, mask: np.ndarray, tau: float) -> None:
        radius = np.float32(self.mean_radius(tau))
        coeffs = [np.float32(c) for c in self.coefficients(tau)]
        floor = np.float32(_RADIUS_FLOOR)
        bound = 1.05 * float(self.largest_radius(tau)[0]) + 1  # box: sampling error to spare

        def inside(dx, dy, dz):
            sq = dx * dx + dy * dy + dz * dz
            inv = 1 / np.sqrt(np.maximum(sq, np.float32(1e-12)))
            modes = _monomials(dx * inv, dy * inv, dz * inv)
            shape = np.float32(1) + sum(c * m for c, m in zip(coeffs, modes))
            r = radius * np.maximum(shape, floor)
            return sq <= r * r

        grid.paint(mask, self.center - bound, self.center + bound, self.center, inside)



def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _ellipsoid_distance(rotation: np.ndarray, axes: np.ndarray):
    """A 1-Lipschitz field of an ellipsoid (zero on its surface, negative inside)."""
    r = [[np.float32(v) for v in row] for row in rotation]
    inv = [np.float32(1 / a) for a in axes]
    scale = np.float32(axes.min())

    def distance(dx, dy, dz):
        lx = (r[0][0] * dx + r[1][0] * dy + r[2][0] * dz) * inv[0]
        ly = (r[0][1] * dx + r[1][1] * dy + r[2][1] * dz) * inv[1]
        lz = (r[0][2] * dx + r[1][2] * dy + r[2][2] * dz) * inv[2]
        return (np.sqrt(lx * lx + ly * ly + lz * lz) - 1) * scale

    return distance


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of blending width ``k`` (k = 0: plain minimum)."""
    if k <= 0:
        return np.minimum(a, b)
    k = np.float32(k)
    h = np.maximum(k - np.abs(a - b), 0) / k
    return np.minimum(a, b) - h * h * (k / 4)


def _segment_inside(a: np.ndarray, b: np.ndarray, radius: float):
    """Inside test of the capsule of ``radius`` around segment a-b (coordinates relative to a)."""
    ab = (b - a).astype(np.float32)
    length2 = np.float32(max(float(ab @ ab), 1e-12))
    r2 = np.float32(radius * radius)

    def inside(dx, dy, dz):
        t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / length2, 0, 1)
        ex, ey, ez = dx - t * ab[0], dy - t * ab[1], dz - t * ab[2]
        return ex * ex + ey * ey + ez * ez <= r2

    return inside


# --------------------------------------------------------------------------------------------
# The three cell lines
# --------------------------------------------------------------------------------------------


class Phantom:
    """One phantom cell: ``render(grid, tau)`` gives its mask at phase tau."""

    def render(self, grid: Grid, tau: float) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class PlatPhantom(Phantom):
    """Platynereis: a growing body with fast, smooth, low-frequency deformations."""

    body: StarBody

    def render(self, grid: Grid, tau: float) -> np.ndarray:
        mask = grid.empty()
        self.body.paint(grid, mask, tau)
        return mask


def _build_plat(rng: np.random.Generator, offset: np.ndarray, reach: float, grid: Grid) -> Phantom:
    body = StarBody.draw(rng, offset, static=0.08, wobble=0.12, freq=(0.3, 1.0), growth=(0.1, 0.3))
    body.fit(reach * rng.uniform(0.85, 1.0))
    return PlatPhantom(body)


@dataclass
class CelePhantom(Phantom):
    """C. elegans: one cell that grows, then divides into two daughters that move apart."""

    center: np.ndarray
    axis: np.ndarray  # unit vector of the division
    rotations: tuple[np.ndarray, np.ndarray]
    shapes: tuple[np.ndarray, np.ndarray]  # semi-axis factors of the daughters
    radius0: float  # mother's radius at tau = 0
    growth: float
    start: float  # phase at which the division starts ...
    end: float  # ... and at which the daughters are apart
    supports: tuple[float, float]  # half-widths of the daughters along the axis, in radii
    gap: float  # voxels between the daughters at the end
    blend: float  # smooth-min width (in units of the radius) before the division

    def state(self, tau: float) -> tuple[float, float, float]:
        """Daughter radius, distance between the daughter centres and blending width at tau."""
        progress = _smoothstep((tau - self.start) / (self.end - self.start))
        mother = self.radius0 * (1 + self.growth * tau)
        radius = mother * (1 - (1 - 2 ** (-1 / 3)) * progress)  # volume halves when apart
        distance = progress * (radius * sum(self.supports) + self.gap)
        return radius, distance, self.blend * radius * (1 - progress)

    def render(self, grid: Grid, tau: float) -> np.ndarray:
        mask = grid.empty()
        radius, distance, blend = self.state(tau)
        centers = [self.center + s * distance / 2 * self.axis for s in (1, -1)]
        fields = [_ellipsoid_distance(r, radius * s) for r, s in zip(self.rotations, self.shapes)]
        widest = radius * max(float(s.max()) for s in self.shapes)
        if blend == 0:  # apart: each daughter alone, in its own small box
            for c, f in zip(centers, fields):
                inside = lambda dx, dy, dz, f=f: f(dx, dy, dz) <= 0  # noqa: E731
                grid.paint(mask, c - widest - 1, c + widest + 1, c, inside)
            return mask
        half = self.axis * distance / 2
        h = [np.float32(v) for v in half]
        reach = np.abs(half) + widest + blend + 1

        def inside(dx, dy, dz):
            a = fields[0](dx - h[0], dy - h[1], dz - h[2])
            b = fields[1](dx + h[0], dy + h[1], dz + h[2])
            return _smooth_min(a, b, blend) <= 0

        grid.paint(mask, self.center - reach, self.center + reach, self.center, inside)
        return mask


def _build_cele(rng: np.random.Generator, offset: np.ndarray, reach: float, grid: Grid) -> Phantom:
    shapes = (rng.uniform(0.85, 1.15, 3), rng.uniform(0.85, 1.15, 3))
    rotations = (_rotation(rng), _rotation(rng))
    axis = _unit(rng)
    # Half-width of each (unit-radius) daughter along the axis: its support function there.
    # Projections onto the axis that are `gap` apart keep the convex daughters `gap` apart.
    supports = tuple(float(np.linalg.norm(s * (r.T @ axis))) for r, s in zip(rotations, shapes))
    widest = max(float(s.max()) for s in shapes)
    # More than sqrt(3) voxels between the daughters: no 26-neighbours across the gap.
    gap = max(2.0, 0.04 * reach)
    growth = rng.uniform(0.1, 0.25)
    # At the end each daughter lies in a ball of radius r * widest around a centre that is
    # (r * sum(supports) + gap) / 2 from the cell centre; the mother (whom the blend inflates
    # by at most a quarter of its width) is smaller. Fit the end state, with some random size.
    radius_end = (reach * rng.uniform(0.9, 1.0) - gap / 2) / (sum(supports) / 2 + widest)
    radius0 = radius_end / (2 ** (-1 / 3) * (1 + growth))
    return CelePhantom(
        center=offset,
        axis=axis,
        rotations=rotations,
        shapes=shapes,
        radius0=radius0,
        growth=growth,
        start=rng.uniform(0.15, 0.35),
        end=rng.uniform(0.75, 0.9),
        supports=supports,
        gap=gap,
        blend=0.4,
    )


@dataclass
class Filopodium:
    """A capsule from ``base`` along ``direction`` whose length grows linearly after ``birth``."""

    base: np.ndarray
    direction: np.ndarray
    length0: float  # length at birth (hidden inside the body or the parent)
    length1: float  # final length
    birth: float
    duration: float

    def length(self, tau: float) -> float:
        grown = min(max((tau - self.birth) / self.duration, 0.0), 1.0)
        return self.length0 + (self.length1 - self.length0) * grown

    def point(self, length: float) -> np.ndarray:
        return self.base + self.direction * length


@dataclass
class FiloPhantom(Phantom):
    """A549: a slowly deforming body with thin filopodia that grow and branch."""

    body: StarBody
    filopodia: list[Filopodium] = field(default_factory=list)
    thickness: float = 1.2  # capsule radius in voxels

    def render(self, grid: Grid, tau: float) -> np.ndarray:
        mask = grid.empty()
        self.body.paint(grid, mask, tau)
        for f in self.filopodia:
            if tau < f.birth:
                continue
            tip = f.point(f.length(tau))
            lo = np.minimum(f.base, tip) - self.thickness
            hi = np.maximum(f.base, tip) + self.thickness
            grid.paint(mask, lo, hi, f.base, _segment_inside(f.base, tip, self.thickness))
        return mask


def _ray_to_ball(start: np.ndarray, direction: np.ndarray, center: np.ndarray, radius: float) -> float:
    """How far one can go from ``start`` (inside the ball) along ``direction`` inside the ball."""
    p = start - center
    b = float(p @ direction)
    return -b + math.sqrt(max(b * b - float(p @ p) + radius * radius, 0.0))


def _rotate_away(rng: np.random.Generator, direction: np.ndarray, angle: float) -> np.ndarray:
    """``direction`` turned by ``angle`` about a random perpendicular axis."""
    side = np.cross(direction, _unit(rng))
    side /= np.linalg.norm(side)
    return math.cos(angle) * direction + math.sin(angle) * side


def _build_filo(rng: np.random.Generator, offset: np.ndarray, reach: float, grid: Grid) -> Phantom:
    # A few voxels thick at 256^3 (radius ~2.3), never thinner than 1.2 voxels.
    thickness = max(1.2, 0.009 * float(min(grid.shape)))
    room = reach - thickness  # capsule axes stay inside this ball
    body = StarBody.draw(rng, offset, static=0.04, wobble=0.03, freq=(0.2, 0.6), growth=(0.0, 0.1))
    body.fit(reach * rng.uniform(0.38, 0.48))
    body_reach = body.extent()
    filopodia = []
    for _ in range(rng.integers(5, 10)):
        direction = _unit(rng)
        start = 0.5 * body.radius0
        length1 = (room - start) * rng.uniform(0.55, 1.0)
        primary = Filopodium(
            base=offset + direction * start,
            direction=direction,
            length0=body.radius0 * 0.4,
            length1=max(length1, body_reach - start + thickness),
            birth=rng.uniform(-0.6, 0.45),
            duration=rng.uniform(0.35, 0.8),
        )
        filopodia.append(primary)
        # Branches sprout from the part of the primary outside the body, once its tip is past.
        outside = primary.length1 - (body_reach - start)
        for _ in range(rng.choice(3, p=[0.35, 0.45, 0.2])):
            if outside < 4 * thickness:
                break
            at = body_reach - start + outside * rng.uniform(0.25, 0.75)
            grown = (at - primary.length0) / (primary.length1 - primary.length0)
            branch_dir = _rotate_away(rng, direction, rng.uniform(0.45, 0.95))
            base = primary.point(at)
            limit = _ray_to_ball(base, branch_dir, offset, room)
            filopodia.append(
                Filopodium(
                    base=base,
                    direction=branch_dir,
                    length0=0.0,
                    length1=limit * rng.uniform(0.35, 0.9),
                    birth=primary.birth + primary.duration * grown + rng.uniform(0.02, 0.2),
                    duration=rng.uniform(0.25, 0.6),
                )
            )
    return FiloPhantom(body, filopodia, thickness)


_BUILDERS: dict[str, Callable[[np.random.Generator, np.ndarray, float, Grid], Phantom]] = {
    "plat": _build_plat,
    "cele": _build_cele,
    "filo": _build_filo,
}


# --------------------------------------------------------------------------------------------
# Writing sequences
# --------------------------------------------------------------------------------------------


def _write_sequence(
    out: Path,
    line: str,
    index: int,
    frames: int,
    size: Size3,
    seed: int,
    voxel_size: VoxelSize,
    force: bool,
    on_frame: Callable[[], None] | None = None,
) -> None:
    """Write the missing frames of one sequence (every frame with ``force``)."""
    sequence = SequenceDir(out / sequence_name(index))
    cell = make_phantom(line, index, size, seed)
    grid = Grid(size)
    for frame in range(frames):
        path = sequence.mask(frame)
        if force or not path.exists():
            write_mask_tiff(path, cell.render(grid, frame_phase(frame, frames)), voxel_size)
        if on_frame:
            on_frame()


def _complete(sequence: SequenceDir, frames: int) -> bool:
    return all(sequence.mask(f).exists() for f in range(frames))


_SEQUENCE_DIR = re.compile(r"^seq_(\d{3,})$")
_MASK_FILE = re.compile(r"^mask_t(\d{3,})\.tif$")


def _sequence_dirs(out: Path) -> list[tuple[int, Path]]:
    found = []
    for path in out.iterdir():
        match = _SEQUENCE_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _mask_files(folder: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _MASK_FILE.match(p.name)))


def _claim(out: Path, settings: dict[str, Any], force: bool) -> None:
    """Record ``settings`` in ``out``, refusing (unless ``force``) to mix them with other ones."""
    record = out / RECORD_NAME
    if not force:
        if record.exists():
            try:
                previous = read_json(record)
            except InputDataError:
                previous = None
            if not isinstance(previous, dict):
                raise OutputError(
                    f"{record} is unreadable", None, "use another folder, or --force to replace its phantoms"
                )
            changed = [
                f"{key} {previous.get(key)!r} -> {value!r}"
                for key, value in settings.items()
                if key != "cellgen_version" and previous.get(key) != value
            ]
            if changed:
                raise OutputError(
                    "folder holds phantoms made with other settings",
                    f"{out} ({'; '.join(changed)})",
                    "use another folder, or --force to replace them",
                )
        elif any(_mask_files(path) for _, path in _sequence_dirs(out)):
            raise OutputError(
                f"folder holds mask sequences but no {RECORD_NAME}",
                out,
                "use another folder, or --force to replace them with phantoms",
            )
    # Written before any mask, so an interrupted run is recognised (and resumed) by the next.
    write_json_atomic(record, settings)


def _remove_stale(out: Path, n: int, frames: int) -> None:
    """Remove masks that the new settings do not have (only files named like ours)."""
    for index, folder in _sequence_dirs(out):
        for frame, path in _mask_files(folder):
            if index >= n or frame >= frames:
                path.unlink()
        if index >= n:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if nothing else is in it


def _check_voxel_size(voxel_size: Sequence[float]) -> VoxelSize:
    values = tuple(float(v) for v in voxel_size)
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        shown = ",".join(str(v) for v in voxel_size)
        raise ConfigError(
            "voxel size must be 3 positive numbers (z, y, x)", shown, "e.g. --voxel-size 1,0.5,0.5"
        )
    return values  # type: ignore[return-value]


@contextlib.contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr (hidden when stderr is not a terminal); yields ``advance(k=1)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k=1: bar.advance(task, k)
