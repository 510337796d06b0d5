"""Real vs synthetic: distribution distances, a memorisation check and diversity (pure).

Distributions: per descriptor the 1-Wasserstein distance between the two samples divided by the
REAL set's standard deviation ("how many real standard deviations apart"; when the real values
are constant, the pooled standard deviation of both sets is used instead, and two identical
constant sets are 0 apart), and the two-sample Kolmogorov-Smirnov statistic (0 = same
distribution, 1 = disjoint).

Memorisation and diversity compare whole sequences by Dice. To make that affordable for 33 x 30
frames of 256^3, every frame is first resampled (nearest voxel, on the [-1, 1] coordinates every
grid shares) to a small common grid and bit-packed (``CompactSequence``); sequences with different
frame counts are compared at the smaller count, frames picked at the nearest normalised times.

The comparison is made up to a rigid motion, since a generator places its cells at random
orientations and a copy of a training cell turned by 90 degrees is still a copy: each sequence is
first moved into its principal-axes pose (``principal_pose``: the centre of its occupancy over
all frames to the grid centre, its axes of largest, middle and smallest spread along x, y, z),
and two posed sequences are compared in the four proper rotations that the axes' signs leave
open (``dice_matrix``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NEAR_COPY_DICE = 0.95
"""A synthetic sequence whose nearest real sequence reaches this mean Dice is flagged a near copy."""


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def normalised_wasserstein(real: Sequence[float], synthetic: Sequence[float]) -> tuple[float, float]:
    """(W1 distance, W1 / std of the real values); NaN when either sample is empty."""
    from scipy.stats import wasserstein_distance  # scipy.stats takes seconds to import

    real_v, synth_v = finite(real), finite(synthetic)
    if len(real_v) == 0 or len(synth_v) == 0:
        return math.nan, math.nan
    distance = float(wasserstein_distance(real_v, synth_v))
    scale = float(real_v.std())
    if scale == 0.0:
        scale = float(np.concatenate([real_v, synth_v]).std())
    if scale == 0.0:  # both constant and equal
        return distance, 0.0
    return distance, distance / scale


def ks_statistic(real: Sequence[float], synthetic: Sequence[float]) -> tuple[float, float]:
    """(KS statistic, p-value) of the two-sample test; NaN when either sample is empty."""
    from scipy.stats import ks_2samp

    real_v, synth_v = finite(real), finite(synthetic)
    if len(real_v) == 0 or len(synth_v) == 0:
        return math.nan, math.nan
    result = ks_2samp(real_v, synth_v)
    return float(result.statistic), float(result.pvalue)


def summarise(values: Sequence[float]) -> dict[str, float]:
    v = finite(values)
    if len(v) == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": int(len(v)),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def compare_distributions(
    real: Mapping[str, Sequence[float]], synthetic: Mapping[str, Sequence[float]]
) -> dict[str, dict[str, object]]:
    """Per descriptor (keys of ``real``): both sets' summaries, W1, normalised W1, KS."""
    out: dict[str, dict[str, object]] = {}
    for name, real_values in real.items():
        synth_values = synthetic[name]
        w1, w1_norm = normalised_wasserstein(real_values, synth_values)
        ks, p = ks_statistic(real_values, synth_values)
        out[name] = {
            "real": summarise(real_values),
            "synthetic": summarise(synth_values),
            "wasserstein": w1,
            "wasserstein_normalised": w1_norm,
            "ks": ks,
            "ks_pvalue": p,
        }
    return out


# --------------------------------------------------------------------------------------------
# Compact sequences for Dice between whole sequences
# --------------------------------------------------------------------------------------------


def nearest_indices(n_from: int, n_to: int) -> np.ndarray:
    """Indices into ``n_from`` evenly spaced samples of [-1, 1] nearest to ``n_to`` of them."""
    if n_to == 1:
        return np.array([(n_from - 1) // 2])
    return np.rint(np.linspace(0, n_from - 1, n_to)).astype(np.int64)


def resample_nearest(mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The mask sampled at the voxels of a grid of ``shape`` spanning the same [-1, 1] cube."""
    if tuple(mask.shape) == tuple(shape):
        return np.asarray(mask, dtype=bool)
    iz, iy, ix = (nearest_indices(n, m) for n, m in zip(mask.shape, shape))
    return np.asarray(mask, dtype=bool)[np.ix_(iz, iy, ix)]


def compare_grid(shapes: Iterable[tuple[int, int, int]], max_side: int) -> tuple[int, int, int]:
    """The common grid: per axis the smallest shape over all sequences, at most ``max_side``."""
    shapes = list(shapes)
    if not shapes:
        raise ValueError("no shapes")
    z, y, x = (min(max_side, min(s[axis] for s in shapes)) for axis in range(3))
    return (z, y, x)


@dataclass(frozen=True)
class CompactSequence:
    """A sequence's frames on a small common grid, bit-packed: ``bits`` (T, ceil(voxels / 8))."""

    name: str
    shape: tuple[int, int, int]
    bits: np.ndarray
    counts: np.ndarray  # foreground voxels per frame

    @classmethod
    def from_frames(cls, name: str, frames: Iterable[np.ndarray], shape: tuple[int, int, int]) -> CompactSequence:
        packed = [np.packbits(resample_nearest(f, shape).ravel()) for f in frames]
        bits = np.stack(packed)
        z, y, x = shape
        return cls(name, (z, y, x), bits, np.bitwise_count(bits).sum(axis=1))

    @property
    def n_frames(self) -> int:
        return len(self.bits)

    def frames(self) -> np.ndarray:
        n = int(np.prod(self.shape))
        return np.unpackbits(self.bits, axis=1, count=n).astype(bool).reshape((-1, *self.shape))

    def flips(self) -> list[CompactSequence]:
        """This sequence turned by each of ``PROPER_FLIPS`` (half turns about the grid centre)."""
        frames = self.frames()
        return [self if not axes else CompactSequence.from_frames(self.name, np.flip(frames, [a + 1 for a in axes]), self.shape)
                for axes in PROPER_FLIPS]

    def resampled(self, shape: tuple[int, int, int]) -> CompactSequence:
        if tuple(shape) == self.shape:
            return self
        return CompactSequence.from_frames(self.name, self.frames(), shape)


# The proper rotations a principal-axes pose leaves open: half turns about each axis.
PROPER_FLIPS: tuple[tuple[int, ...], ...] = ((), (0, 1), (0, 2), (1, 2))


def principal_pose(occupancy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centroid in voxel indices (3,), rotation R (3, 3)) of a (Z, Y, X) occupancy (weights >= 0).

    R's columns are the principal axes in the [-1, 1] coordinates of the grid, smallest spread
    first (so the largest ends up along x), with det R = +1. An empty occupancy gives the grid
    centre and the identity.
    """
    weights = np.asarray(occupancy, dtype=np.float64)
    total = weights.sum()
    centre_index = (np.array(weights.shape, dtype=np.float64) - 1) / 2
    if total <= 0:
        return centre_index, np.eye(3)
    step = _grid_step(weights.shape)
    index = np.nonzero(weights)
    w = weights[index]
    coords = np.stack(index, axis=1).astype(np.float64)
    centroid = (w[:, None] * coords).sum(0) / total
    centred = (coords - centroid) * step
    covariance = (w[:, None] * centred).T @ centred / total
    _, vectors = np.linalg.eigh(covariance)  # ascending spread
    if np.linalg.det(vectors) < 0:
        vectors[:, 0] = -vectors[:, 0]
    return centroid, vectors


def to_pose(frames: np.ndarray) -> np.ndarray:
    """Frames (T, Z, Y, X) of one sequence moved into the pose of their summed occupancy:
    centroid to the grid centre, principal axes along z, y, x (smallest to largest spread).
    Trilinear resampling, kept where >= 0.5."""
    from scipy import ndimage

    frames = np.asarray(frames, dtype=bool)
    centroid, rotation = principal_pose(frames.sum(axis=0))
    shape = frames.shape[1:]
    step = _grid_step(shape)
    matrix = rotation * step[None, :] / step[:, None]  # diag(1/s) R diag(s): indices -> indices
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    offset = centroid - matrix @ centre
    posed = [
        ndimage.affine_transform(f.astype(np.float32), matrix, offset, order=1, mode="constant", cval=0.0) >= 0.5
        for f in frames
    ]
    return np.stack(posed) if posed else frames


def _grid_step(shape: Sequence[int]) -> np.ndarray:
    """Spacing of the [-1, 1] coordinates per axis (1 for a one-voxel axis)."""
    return np.array([2.0 / (n - 1) if n > 1 else 1.0 for n in shape], dtype=np.float64)


def sequence_dice(a: CompactSequence, b: CompactSequence) -> float:
    """Mean over frames of the Dice of two compact sequences (at the smaller frame count)."""
    if a.shape != b.shape:
        raise ValueError(f"compact sequences on different grids: {a.shape} vs {b.shape}")
    n = min(a.n_frames, b.n_frames)
    ia, ib = nearest_indices(a.n_frames, n), nearest_indices(b.n_frames, n)
    inter = np.bitwise_count(a.bits[ia] & b.bits[ib]).sum(axis=1)
    total = a.counts[ia] + b.counts[ib]
    per_frame = np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)
    return float(per_frame.mean())


def dice_matrix(rows: Sequence[CompactSequence], cols: Sequence[CompactSequence]) -> np.ndarray:
    """Sequence Dice of every (posed) row against every (posed) column, up to the pose's
    remaining half turns: the best ``sequence_dice`` over the row's ``flips``."""
    out = np.empty((len(rows), len(cols)))
    for i, a in enumerate(rows):
        flips = a.flips()
        for j, b in enumerate(cols):
            out[i, j] = max(sequence_dice(f, b) for f in flips)
    return out


def nearest_real(synthetic_vs_real: np.ndarray, threshold: float = NEAR_COPY_DICE) -> list[dict[str, object]]:
    """For each synthetic row: the index of its nearest real column, its Dice, the near-copy flag."""
    out = []
    for row in np.atleast_2d(synthetic_vs_real):
        j = int(np.argmax(row))
        out.append({"index": j, "dice": float(row[j]), "near_copy": bool(row[j] >= threshold)})
    return out


def nearest_other(within: np.ndarray) -> np.ndarray:
    """Within one set (square Dice matrix): each sequence's best Dice with ANOTHER sequence.

    The real set's values are the yardstick for the synthetic-to-real nearest Dice: a generator
    that copies nothing still lands about as close to the training set as its members are to
    each other.
    """
    m = np.array(within, dtype=np.float64)
    if len(m) < 2:
        return np.full(len(m), math.nan)
    np.fill_diagonal(m, -np.inf)
    return m.max(axis=1)


def diversity(within: np.ndarray) -> float:
    """Mean pairwise distance (1 - Dice) over the distinct pairs of one set; NaN for < 2."""
    m = np.asarray(within, dtype=np.float64)
    if len(m) < 2:
        return math.nan
    upper = np.triu_indices(len(m), k=1)
    return float((1.0 - m[upper]).mean())
