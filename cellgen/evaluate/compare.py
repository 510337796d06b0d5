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

    def resampled(self, shape: tuple[int, int, int]) -> CompactSequence:
        if tuple(shape) == self.shape:
            return self
        return CompactSequence.from_frames(self.name, self.frames(), shape)


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
    """Sequence Dice of every row against every column."""
    out = np.empty((len(rows), len(cols)))
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            out[i, j] = sequence_dice(a, b)
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
