"""Latent codes and orientations for new cells: pure, seeded numpy functions.

Every random draw for sequence ``i`` comes from its own generator seeded with
(seed, i, stream), so a sequence's code and rotation do not depend on how many sequences are
drawn, on the number of workers, or on the order in which they run.

Strategies (METHOD.md section 4):
- ``normal``: N(0, sigma^2 I), sigma 0.001 by default (the reference's recipe for new shapes).
- ``fitted``: a Gaussian fitted to the learned codes (mean and Ledoit-Wolf-shrunk covariance,
  so it stays well-conditioned when there are fewer codes than dimensions); sigma, if given,
  scales its spread (1 = the fitted spread).
- ``noise``: a learned code (each round through the codes in a seeded shuffled order) plus
  N(0, sigma^2 I), sigma 1e-4 by default (the reference's recipe for filopodial cells).
- ``local``: a learned code (chosen as in ``noise``) plus sigma times a draw of the fitted
  Gaussian's spread (the ``fitted`` covariance, centred on that code). Over many sequences
  this samples a Gaussian kernel density estimate of the learned codes, bandwidth sigma x
  their covariance: new codes stay near where the decoder has seen cells, moved along the
  directions in which the learned codes actually vary, instead of filling the space between
  them as one Gaussian around their mean (``fitted``) does. sigma 0 gives the training cells
  themselves; sigma is the knob between copy and novelty.
- ``mix``: a mixture of two learned codes, each sequence its own seeded pair and weight
  w ~ U(1/2 - sigma, 1/2 + sigma), sigma 0.2 by default: a new cell between two training cells,
  never a near copy of either (w stays away from 0 and 1).
- ``interpolate``: ``steps`` codes on the straight line between learned codes I and J.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Strategy = Literal["normal", "fitted", "noise", "local", "mix", "interpolate"]
STRATEGIES: tuple[str, ...] = ("normal", "fitted", "noise", "local", "mix", "interpolate")
DEFAULT_SIGMA = {"normal": 1e-3, "noise": 1e-4, "local": 0.5, "mix": 0.2}

# Independent random streams per sequence.
_LATENT, _ROTATION, _SHUFFLE = 0, 1, 2


def sequence_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one sequence's draw of one kind: a function of (seed, index, stream) only."""
    return np.random.default_rng([int(seed), int(index), int(stream)])


@dataclass
class GaussianFit:
    mean: np.ndarray
    """(L,)"""
    covariance: np.ndarray
    """(L, L), shrunk."""
    shrinkage: float
    """Weight of the scaled identity in the shrunk covariance (0 = empirical covariance)."""

    def factor(self) -> np.ndarray:
        """A matrix A with A A^T = covariance (via eigh, robust to a singular covariance)."""
        values, vectors = np.linalg.eigh(self.covariance)
        return vectors * np.sqrt(np.clip(values, 0.0, None))[None, :]


def fit_gaussian(codes: np.ndarray) -> GaussianFit:
    """Mean and Ledoit-Wolf covariance (shrunk towards mu I, mu = mean variance) of codes (S, L).

    The shrinkage intensity is the Ledoit-Wolf (2004) estimate: near 0 when there are many more
    codes than dimensions, large when there are fewer codes than dimensions.
    """
    x = np.asarray(codes, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"codes must be a non-empty (S, L) array, got shape {x.shape}")
    n, p = x.shape
    mean = x.mean(0)
    centred = x - mean
    empirical = centred.T @ centred / n
    mu = np.trace(empirical) / p
    if n < 2 or mu == 0:
        return GaussianFit(mean, mu * np.eye(p), 1.0)
    squared = centred**2
    beta = (squared.T @ squared).sum() / n - (empirical**2).sum()
    beta /= n
    delta = ((empirical - mu * np.eye(p)) ** 2).sum()
    shrinkage = 0.0 if delta == 0 else float(min(max(beta, 0.0), delta) / delta)
    covariance = (1 - shrinkage) * empirical + shrinkage * mu * np.eye(p)
    return GaussianFit(mean, covariance, shrinkage)


@dataclass
class LatentDraw:
    codes: np.ndarray
    """(n, L) float32."""
    sources: list[dict[str, Any]]
    """Per code, how it was made (strategy-specific: base code index, interpolation weight)."""
    strategy: str
    sigma: float | None
    details: dict[str, Any]
    """Strategy-wide facts (e.g. the fitted shrinkage)."""


def sample_latents(
    strategy: str,
    learned: np.ndarray,
    n: int,
    seed: int,
    sigma: float | None = None,
    between: tuple[int, int] | None = None,
) -> LatentDraw:
    """``n`` new latent codes from the learned codes (S, L) by ``strategy`` (see module doc)."""
    learned = np.asarray(learned, dtype=np.float64)
    count, dim = learned.shape
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if sigma is None:
        sigma = DEFAULT_SIGMA.get(strategy)
    if sigma is not None and sigma < 0:
        raise ValueError(f"sigma must not be negative, got {sigma}")
    codes = np.empty((n, dim))
    sources: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    if strategy == "normal":
        for i in range(n):
            codes[i] = sigma * sequence_rng(seed, i, _LATENT).standard_normal(dim)
            sources.append({})
    elif strategy == "fitted":
        fit = fit_gaussian(learned)
        factor = fit.factor()
        scale = 1.0 if sigma is None else sigma
        for i in range(n):
            codes[i] = fit.mean + scale * factor @ sequence_rng(seed, i, _LATENT).standard_normal(dim)
            sources.append({})
        details = {"shrinkage": fit.shrinkage, "scale": scale}
    elif strategy == "noise":
        for i in range(n):
            base = base_code_index(seed, i, count)
            codes[i] = learned[base] + sigma * sequence_rng(seed, i, _LATENT).standard_normal(dim)
            sources.append({"base_code": base})
    elif strategy == "local":
        fit = fit_gaussian(learned)
        factor = fit.factor()
        for i in range(n):
            base = base_code_index(seed, i, count)
            codes[i] = learned[base] + sigma * factor @ sequence_rng(seed, i, _LATENT).standard_normal(dim)
            sources.append({"base_code": base})
        details = {"shrinkage": fit.shrinkage}
    elif strategy == "mix":
        if count < 2:
            raise ValueError("mix needs at least two learned codes")
        if sigma > 0.5:
            raise ValueError(f"mix: sigma is the half-width of the weight around 1/2, at most 0.5, got {sigma}")
        for i in range(n):
            rng = sequence_rng(seed, i, _LATENT)
            first, second = (int(j) for j in rng.choice(count, 2, replace=False))
            weight = float(rng.uniform(0.5 - sigma, 0.5 + sigma))
            codes[i] = (1 - weight) * learned[first] + weight * learned[second]
            sources.append({"between": [first, second], "weight": weight})
    else:
        if between is None:
            raise ValueError("interpolate needs the two learned codes to morph between")
        first, last = between
        for index in (first, last):
            if not 0 <= index < count:
                raise ValueError(f"learned code {index} does not exist (0..{count - 1})")
        for i in range(n):
            weight = 0.0 if n == 1 else i / (n - 1)
            codes[i] = (1 - weight) * learned[first] + weight * learned[last]
            sources.append({"between": [first, last], "weight": weight})
    return LatentDraw(codes.astype(np.float32), sources, strategy, sigma, details)


def base_code_index(seed: int, index: int, count: int) -> int:
    """The learned code that sequence ``index`` starts from: round r = index // count goes
    through all codes in a shuffled order seeded by (seed, r)."""
    round_, position = divmod(index, count)
    order = sequence_rng(seed, round_, _SHUFFLE).permutation(count)
    return int(order[position])


# --------------------------------------------------------------------------------------------
# Rotations, uniform over SO(3)
# --------------------------------------------------------------------------------------------


def random_quaternion(seed: int, index: int) -> np.ndarray:
    """A unit quaternion (w, x, y, z) uniform over SO(3): a normalised 4D Gaussian, w >= 0."""
    rng = sequence_rng(seed, index, _ROTATION)
    while True:
        q = rng.standard_normal(4)
        norm = np.linalg.norm(q)
        if norm > 1e-12:
            q = q / norm
            return q if q[0] >= 0 else -q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix R (3, 3) acting on column vectors."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def sequence_rotation(seed: int, index: int, rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(matrix (3, 3), quaternion (w, x, y, z)) of sequence ``index``; identity when not ``rotate``."""
    if not rotate:
        return np.eye(3), np.array([1.0, 0.0, 0.0, 0.0])
    q = random_quaternion(seed, index)
    return quaternion_to_matrix(q), q


def rotation_angle(matrix: np.ndarray) -> float:
    """The rotation angle theta in [0, pi] of a rotation matrix."""
    return float(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0)))
