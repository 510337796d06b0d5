"""Dense and adaptive voxelization: conventions, exact agreement on analytic SDFs, agreement on a
tiny trained SIREN, the clamp-plateau limit, and the SDF kept for meshes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from test_generate_fixtures import CLAMP, TRAIN_SIZE, tiny_model  # noqa: F401  (fixture)

from cellgen.generate.sequence import sdf_function, without_debris
from cellgen.generate.voxelize import (
    Voxelized,
    grid_axes,
    sphere_sdf,
    torus_sdf,
    units_per_sdf_for,
    voxelize_adaptive,
    voxelize_dense,
)
from cellgen.generate.writers import surface_mesh


def test_grid_axes_follow_the_coordinate_convention():
    z, y, x = grid_axes((1, 3, 5))
    assert z.tolist() == [0.0]
    assert y.tolist() == [-1.0, 0.0, 1.0]
    assert x.tolist() == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])


def test_dense_puts_voxel_kji_at_x_i_y_j_z_k():
    # An SDF negative only in the octant x > 0.5, y < 0, z > 0: the mask must sit at high i,
    # low j, high k of the (Z, Y, X) array.
    def octant(xyz):
        return torch.where((xyz[:, 0] > 0.5) & (xyz[:, 1] < 0) & (xyz[:, 2] > 0), -1.0, 1.0)

    result = voxelize_dense(octant, (4, 6, 8), chunk_points=7)
    z, y, x = (a.numpy() for a in grid_axes((4, 6, 8)))
    expected = (x[None, None, :] > 0.5) & (y[None, :, None] < 0) & (z[:, None, None] > 0)
    assert result.mask.shape == (4, 6, 8)
    assert np.array_equal(result.mask, expected)
    assert result.evaluations == 4 * 6 * 8


ANALYTIC = {
    "sphere": sphere_sdf(0.55, (0.1, -0.05, 0.02)),
    "small_sphere": sphere_sdf(0.12, (-0.4, 0.3, 0.1)),
    "torus": torus_sdf(0.5, 0.14),
}


@pytest.mark.parametrize("name", sorted(ANALYTIC))
@pytest.mark.parametrize("shape", [(64, 64, 64), (37, 50, 23), (1, 40, 40), (48, 48, 9)])
def test_adaptive_equals_dense_exactly_on_analytic_sdfs(name, shape):
    fn = ANALYTIC[name]
    dense = voxelize_dense(fn, shape)
    adaptive = voxelize_adaptive(fn, shape, units_per_sdf=1.0, coarse_cell=8)
    assert np.array_equal(adaptive.mask, dense.mask)
    assert adaptive.sdf is None
    assert dense.mask.any()


@pytest.mark.parametrize("coarse_cell", [2, 5, 16, 64])
def test_adaptive_is_exact_for_any_coarse_cell(coarse_cell):
    fn = ANALYTIC["torus"]
    dense = voxelize_dense(fn, (40, 40, 40))
    adaptive = voxelize_adaptive(fn, (40, 40, 40), units_per_sdf=1.0, coarse_cell=coarse_cell)
    assert np.array_equal(adaptive.mask, dense.mask)


def test_adaptive_evaluates_far_fewer_points_at_higher_resolution():
    shape = (128, 128, 128)
    adaptive = voxelize_adaptive(ANALYTIC["sphere"], shape, units_per_sdf=1.0)
    assert adaptive.evaluations * 10 < np.prod(shape)


def test_keep_sdf_is_exact_next_to_the_surface_so_meshes_match_dense():
    fn, shape = ANALYTIC["torus"], (40, 44, 36)
    dense = voxelize_dense(fn, shape)
    adaptive = voxelize_adaptive(fn, shape, units_per_sdf=1.0, keep_sdf=True)
    assert np.array_equal(adaptive.mask, dense.mask)
    boundary = np.zeros_like(dense.mask)  # voxels with a face neighbour of the other sign
    for axis in range(3):
        differs = np.diff(dense.mask, axis=axis) != 0
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        boundary[tuple(lower)] |= differs
        boundary[tuple(upper)] |= differs
    assert boundary.sum() > 1000
    assert np.array_equal(adaptive.sdf[boundary], dense.sdf[boundary])
    assert np.array_equal(adaptive.sdf <= 0, dense.mask)  # the filled values carry the right sign
    v_dense, f_dense = surface_mesh(dense.sdf, (1.0, 1.0, 1.0))
    v_adaptive, f_adaptive = surface_mesh(adaptive.sdf, (1.0, 1.0, 1.0))
    assert len(f_dense) > 100
    np.testing.assert_allclose(v_adaptive, v_dense, atol=1e-5)
    assert np.array_equal(f_adaptive, f_dense)


def test_clamp_plateau_limit_keeps_overstated_far_values_from_skipping_the_surface():
    """Beyond the clamp distance a learned SDF only says 'far'. A plateau value that overstates
    the distance must not let a block that contains the surface be skipped."""
    clamp = 4 * 2 / 63  # 4 voxels of a 64^3 grid, in coordinate units
    true = sphere_sdf(0.2, (0.3, 0.3, 0.3))

    def plateau(xyz):
        d = true(xyz)
        return torch.where(d < clamp, d, torch.full_like(d, 100 * clamp))

    shape = (64, 64, 64)
    dense = voxelize_dense(plateau, shape)
    unlimited = voxelize_adaptive(plateau, shape, units_per_sdf=1.0, coarse_cell=32)
    limited = voxelize_adaptive(plateau, shape, units_per_sdf=1.0, coarse_cell=32, max_trusted_sdf=clamp)
    assert not np.array_equal(unlimited.mask, dense.mask)  # the failure the limit prevents
    assert np.array_equal(limited.mask, dense.mask)


def test_margin_absorbs_a_bounded_error_on_top_of_a_distance_function():
    """A true SDF plus a ripple of amplitude A (a network's error): its zero level lies where the
    true SDF is within A, so taking 2 A off every value makes skipping exact again."""
    amplitude = 0.03
    true = sphere_sdf(0.5, (0.03, 0.01, -0.02))

    def rippled(xyz):
        ripple = torch.sin(37 * xyz[:, 0]) * torch.sin(41 * xyz[:, 1]) * torch.sin(43 * xyz[:, 2])
        return true(xyz) + amplitude * ripple

    shape = (64, 64, 64)
    dense = voxelize_dense(rippled, shape)
    bare = voxelize_adaptive(rippled, shape, units_per_sdf=1.0, safety=1.0, margin=0.0)
    with_margin = voxelize_adaptive(rippled, shape, units_per_sdf=1.0, safety=1.0, margin=2 * amplitude)
    assert not np.array_equal(bare.mask, dense.mask)
    assert np.array_equal(with_margin.mask, dense.mask)


def test_units_per_sdf_uses_the_finest_training_axis():
    assert units_per_sdf_for([256, 256, 256], 32.0) == pytest.approx(32 * 2 / 255)
    assert units_per_sdf_for([33, 129, 65], 10.0) == pytest.approx(10 * 2 / 128)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        voxelize_dense(ANALYTIC["sphere"], (0, 4, 4))
    with pytest.raises(ValueError):
        voxelize_adaptive(ANALYTIC["sphere"], (4, 4, 4), units_per_sdf=0.0)
    with pytest.raises(ValueError):
        voxelize_adaptive(ANALYTIC["sphere"], (4, 4, 4), units_per_sdf=1.0, safety=1.5)


@pytest.mark.parametrize("shape", [(48, 48, 48), (56, 40, 24)])
def test_adaptive_agrees_with_dense_on_a_trained_siren(tiny_model, shape):  # noqa: F811
    model, factor = tiny_model
    units = units_per_sdf_for([TRAIN_SIZE] * 3, factor)
    for sequence in range(model.n_sequences):
        rotation = torch.tensor(Rotation.random(random_state=sequence).as_matrix(), dtype=torch.float32)
        code = model.latent_codes()[sequence : sequence + 1]
        fn = sdf_function(model.decoder, code, rotation, t=0.3)
        dense = voxelize_dense(fn, shape)
        adaptive = voxelize_adaptive(fn, shape, units_per_sdf=units, max_trusted_sdf=CLAMP / factor)
        assert dense.mask.sum() > 500
        differing = int((dense.mask != adaptive.mask).sum())
        assert differing <= 0.001 * dense.mask.size
        assert adaptive.evaluations * 4 < dense.evaluations


def _balls(shape, balls):
    """SDF (voxel units) of a union of balls ((z, y, x), radius) on a grid."""
    grid = np.indices(shape).astype(np.float32)
    sdf = np.full(shape, np.inf, dtype=np.float32)
    for centre, radius in balls:
        distance = np.sqrt(sum((grid[i] - c) ** 2 for i, c in enumerate(centre))) - radius
        sdf = np.minimum(sdf, distance)
    return sdf


def test_debris_is_removed_from_mask_and_sdf_but_daughters_stay():
    # A body (radius 8) with a detached island (radius 2, ~1.6 % of the body's volume).
    sdf = _balls((40, 40, 40), [((20, 20, 15), 8.0), ((20, 20, 33), 2.0)])
    raw = Voxelized(sdf <= 0, sdf, evaluations=0)
    clean = without_debris(raw, 0.2)
    body = _balls((40, 40, 40), [((20, 20, 15), 8.0)]) <= 0
    np.testing.assert_array_equal(clean.mask, body)
    assert clean.debris_voxels == np.count_nonzero(raw.mask & ~body) > 0
    assert (clean.sdf[raw.mask & ~body] > 0).all()  # the island is outside in the kept SDF too
    np.testing.assert_array_equal(clean.sdf[body], sdf[body])
    np.testing.assert_array_equal(clean.mask, clean.sdf <= 0)
    # 0 keeps the raw output; two cells of similar size (a division) both stay.
    assert without_debris(raw, 0.0) is raw
    daughters = _balls((40, 40, 40), [((20, 20, 11), 7.0), ((20, 20, 29), 6.0)])
    split = Voxelized(daughters <= 0, None, evaluations=0)
    assert without_debris(split, 0.2) is split
    # A threshold above the smaller daughter's share removes it.
    assert without_debris(split, 0.7).debris_voxels == np.count_nonzero(split.mask[:, :, 20:])
