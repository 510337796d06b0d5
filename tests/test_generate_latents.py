"""Latent strategies and rotations: statistics, Haar uniformity, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from cellgen.generate.latents import (
    base_code_index,
    fit_gaussian,
    quaternion_to_matrix,
    rotation_angle,
    sample_latents,
    sequence_rotation,
)


def _learned(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(count, dim)) @ mixing + rng.normal(size=dim)


def test_fitted_samples_reproduce_mean_and_covariance_of_many_codes():
    learned = _learned(4000, 6)
    fit = fit_gaussian(learned)
    assert fit.shrinkage < 0.01  # many codes: essentially the empirical covariance
    np.testing.assert_allclose(fit.covariance, np.cov(learned.T, bias=True), atol=0.02)
    draw = sample_latents("fitted", learned, 20000, seed=3)
    np.testing.assert_allclose(draw.codes.mean(0), learned.mean(0), atol=0.03)
    np.testing.assert_allclose(np.cov(draw.codes.T), np.cov(learned.T), atol=0.05)


def test_fitted_covariance_is_shrunk_and_well_conditioned_with_fewer_codes_than_dims():
    learned = _learned(20, 48)
    fit = fit_gaussian(learned)
    empirical = np.cov(learned.T, bias=True)
    assert np.linalg.matrix_rank(empirical) < 48
    assert 0 < fit.shrinkage <= 1
    eigenvalues = np.linalg.eigvalsh(fit.covariance)
    assert eigenvalues.min() > 0
    assert np.trace(fit.covariance) == pytest.approx(np.trace(empirical))  # shrinking keeps total variance
    draw = sample_latents("fitted", learned, 5000, seed=1)
    np.testing.assert_allclose(np.cov(draw.codes.T), fit.covariance, atol=0.15 * np.abs(fit.covariance).max())


def test_normal_strategy_is_the_reference_gaussian():
    draw = sample_latents("normal", _learned(5, 32), 400, seed=0)
    assert draw.sigma == 1e-3
    assert draw.codes.mean() == pytest.approx(0, abs=1e-4)
    assert draw.codes.std() == pytest.approx(1e-3, rel=0.05)
    assert sample_latents("normal", _learned(5, 32), 400, seed=0, sigma=0.5).codes.std() == pytest.approx(0.5, rel=0.05)


def test_noise_strategy_cycles_through_every_learned_code_each_round():
    learned = _learned(7, 16)
    draw = sample_latents("noise", learned, 21, seed=5)
    bases = [s["base_code"] for s in draw.sources]
    for round_ in range(3):
        assert sorted(bases[7 * round_ : 7 * round_ + 7]) == list(range(7))
    assert bases[:7] != bases[7:14] or bases[7:14] != bases[14:]  # shuffled anew each round
    offsets = draw.codes - learned[bases]
    assert np.abs(offsets).max() < 1e-3
    assert offsets.std() == pytest.approx(1e-4, rel=0.2)


def test_local_moves_each_learned_code_by_sigma_times_the_codes_spread():
    learned = _learned(6, 10)
    fit = fit_gaussian(learned)
    draw = sample_latents("local", learned, 6 * 800, seed=2, sigma=0.5)
    assert draw.sigma == 0.5
    bases = np.array([s["base_code"] for s in draw.sources])
    assert sorted(bases[:6]) == list(range(6))  # every learned code is a base once per round
    offsets = draw.codes - learned[bases]
    np.testing.assert_allclose(offsets.mean(0), 0, atol=0.05 * np.sqrt(fit.covariance.diagonal()).max())
    # the offsets follow the codes' own (shrunk) covariance, scaled by sigma^2
    np.testing.assert_allclose(np.cov(offsets.T), 0.25 * fit.covariance, atol=0.1 * 0.25 * np.abs(fit.covariance).max())
    copies = sample_latents("local", learned, 6, seed=2, sigma=0.0)
    np.testing.assert_allclose(copies.codes, learned[[s["base_code"] for s in copies.sources]], rtol=1e-6)
    assert sample_latents("local", learned, 3, seed=0).sigma == 0.5  # the default


def test_interpolate_runs_from_one_learned_code_to_the_other():
    learned = _learned(4, 8)
    draw = sample_latents("interpolate", learned, 5, seed=0, between=(1, 3))
    np.testing.assert_allclose(draw.codes[0], learned[1], rtol=1e-6)
    np.testing.assert_allclose(draw.codes[-1], learned[3], rtol=1e-6)
    np.testing.assert_allclose(draw.codes[2], (learned[1] + learned[3]) / 2, rtol=1e-5)
    with pytest.raises(ValueError):
        sample_latents("interpolate", learned, 5, seed=0, between=(1, 4))


def test_mix_stays_between_two_distinct_learned_codes_away_from_both():
    learned = _learned(5, 8)
    draw = sample_latents("mix", learned, 200, seed=3)
    weights = []
    for code, source in zip(draw.codes, draw.sources):
        first, second = source["between"]
        weight = source["weight"]
        assert first != second and 0.3 <= weight <= 0.7
        np.testing.assert_allclose(code, (1 - weight) * learned[first] + weight * learned[second], rtol=1e-5, atol=1e-6)
        weights.append(weight)
    assert stats.kstest(weights, stats.uniform(0.3, 0.4).cdf).pvalue > 1e-3  # uniform weight
    pairs = {tuple(sorted(s["between"])) for s in draw.sources}
    assert len(pairs) == 10  # every pair of the 5 codes is drawn
    assert all(0.45 <= s["weight"] <= 0.55 for s in sample_latents("mix", learned, 20, seed=3, sigma=0.05).sources)
    with pytest.raises(ValueError):
        sample_latents("mix", learned[:1], 3, seed=0)
    with pytest.raises(ValueError):
        sample_latents("mix", learned, 3, seed=0, sigma=0.6)


@pytest.mark.parametrize("strategy", ["normal", "fitted", "noise", "local", "mix"])
def test_draws_depend_only_on_seed_and_index(strategy):
    learned = _learned(9, 12)
    few = sample_latents(strategy, learned, 4, seed=11)
    many = sample_latents(strategy, learned, 30, seed=11)
    again = sample_latents(strategy, learned, 30, seed=11)
    other = sample_latents(strategy, learned, 4, seed=12)
    np.testing.assert_array_equal(few.codes, many.codes[:4])
    np.testing.assert_array_equal(many.codes, again.codes)
    assert not np.allclose(few.codes, other.codes)


def test_base_code_index_is_a_permutation_per_round():
    assert sorted(base_code_index(3, i, 5) for i in range(5, 10)) == list(range(5))


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------


def _angle_cdf(theta):
    """CDF of the rotation angle of a Haar-random rotation: density (1 - cos t) / pi on [0, pi]."""
    return (theta - np.sin(theta)) / np.pi


def test_rotations_are_proper_and_uniform_over_so3():
    matrices = [sequence_rotation(seed=2, index=i)[0] for i in range(3000)]
    for m in matrices[:50]:
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(m) == pytest.approx(1.0)
    angles = np.array([rotation_angle(m) for m in matrices])
    assert stats.kstest(angles, _angle_cdf).pvalue > 0.01
    # Rotation axes uniform on the sphere: each component of the axis is uniform on [-1, 1].
    axes = Rotation.from_matrix(np.stack(matrices)).as_rotvec()
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    for k in range(3):
        assert stats.kstest(axes[:, k], stats.uniform(loc=-1, scale=2).cdf).pvalue > 0.01


def test_the_angle_test_rejects_uniform_euler_angles():
    """The reference's uniform Euler angles are not Haar-uniform: the same test must notice."""
    rng = np.random.default_rng(0)
    euler = Rotation.from_euler("xyz", rng.uniform(-np.pi, np.pi, (20000, 3))).as_matrix()
    angles = np.arccos(np.clip((np.trace(euler, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(angles, _angle_cdf).pvalue < 1e-6


def test_quaternion_matrix_matches_scipy_and_no_rotate_is_identity():
    matrix, q = sequence_rotation(seed=0, index=4)
    w, x, y, z = q
    np.testing.assert_allclose(matrix, Rotation.from_quat([x, y, z, w]).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(-q), matrix, atol=1e-12)
    identity, q_identity = sequence_rotation(seed=0, index=4, rotate=False)
    assert np.array_equal(identity, np.eye(3)) and q_identity.tolist() == [1, 0, 0, 0]
    np.testing.assert_array_equal(sequence_rotation(seed=0, index=4)[0], matrix)
