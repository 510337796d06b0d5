"""The pure math of prepare: masks -> SDF -> sampled points (cellgen.data.sdf)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellgen.config import DataConfig
from cellgen.data.sdf import (
    axis_coordinates,
    centroid,
    frame_sdf,
    frame_time,
    isotropic_zoom,
    normalise_sdf,
    place_in_grid,
    points_per_frame,
    remove_debris,
    resample_mask,
    sample_frame,
    sample_points,
    sampling_rng,
    signed_distance,
)
from cellgen.errors import InputDataError


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` (physical units) of ``centre`` (voxel indices)."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist2 = sum(((g - c) * d) ** 2 for g, c, d in zip(grids, centre, spacing))
    return dist2 <= radius**2


def blobs(shape, seed) -> np.ndarray:
    """An irregular mask (several lumps, holes, border contact) from smoothed noise."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return field > np.quantile(field, 0.7)


def scipy_reference(mask: np.ndarray, clamp: float) -> np.ndarray:
    """The documented convention computed independently with scipy (outside the grid = background)."""
    d_in = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    d_out = ndimage.distance_transform_edt(~mask)
    return np.where(mask, -(d_in - 0.5), np.minimum(d_out - 0.5, clamp))


# --------------------------------------------------------------------------------------------
# Signed distance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_crossing_lies_between_inside_and_outside_voxels(seed):
    mask = blobs((20, 23, 26), seed)
    sdf = signed_distance(mask, clamp=5.0)
    assert sdf.dtype == np.float32
    np.testing.assert_array_equal(mask, sdf <= 0)
    # Boundary voxels sit half a voxel from the surface, on either side.
    inner_rim = mask & ~ndimage.binary_erosion(mask, border_value=0)
    assert np.all(sdf[inner_rim] == -0.5)
    outer_rim = ndimage.binary_dilation(mask) & ~mask
    assert np.all(sdf[outer_rim] == 0.5)


@pytest.mark.parametrize("seed", [3, 4])
def test_signed_distance_equals_scipy_edt_with_documented_shift(seed):
    mask = blobs((18, 21, 25), seed)
    np.testing.assert_allclose(signed_distance(mask, 3.5), scipy_reference(mask, 3.5), atol=1e-5)


def test_sphere_sdf_matches_the_analytic_distance():
    shape, centre, radius = (41, 41, 41), (20.0, 20.0, 20.0), 12.0
    mask = ball(shape, centre, radius)
    sdf = signed_distance(mask, clamp=30.0)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    analytic = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre))) - radius
    error = np.abs(sdf - analytic)
    # A voxelised sphere's surface is off by at most ~one voxel; on average much less.
    assert error.max() < 1.0
    assert error.mean() < 0.4


def test_outside_distance_is_clamped():
    mask = ball((40, 40, 40), (20, 20, 20), 5)
    sdf = signed_distance(mask, clamp=6.0)
    assert sdf.max() == pytest.approx(6.0)
    far = ndimage.distance_transform_edt(~mask) >= 6.5
    assert np.all(sdf[far] == 6.0)
    # The inside is never clamped: a deep cell keeps its depth.
    deep = signed_distance(ball((40, 40, 40), (20, 20, 20), 15), clamp=2.0)
    assert deep.min() < -14


def test_cell_touching_the_grid_border_ends_there():
    mask = np.zeros((10, 10, 10), bool)
    mask[0:4, 3:7, 3:7] = True
    sdf = signed_distance(mask, clamp=3.0)
    np.testing.assert_array_equal(mask, sdf <= 0)
    assert sdf[0, 4, 4] == -0.5  # the grid face is the cell's surface


def test_frame_normalisation_scales_to_unit_max_and_returns_the_factor():
    mask = ball((30, 30, 30), (15, 15, 15), 9)
    raw = signed_distance(mask, clamp=4.0)
    sdf, factor = normalise_sdf(raw.copy(), "frame", mask.shape)
    assert factor == pytest.approx(np.abs(raw).max())
    assert np.abs(sdf).max() == pytest.approx(1.0)
    np.testing.assert_allclose(sdf * factor, raw, atol=1e-5)


def test_fixed_normalisation_uses_half_the_largest_grid_side():
    mask = ball((20, 30, 40), (10, 15, 20), 6)
    raw = signed_distance(mask, clamp=4.0)
    sdf, factor = normalise_sdf(raw.copy(), "fixed", mask.shape)
    assert factor == pytest.approx((40 - 1) / 2)
    np.testing.assert_allclose(sdf * factor, raw, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Clean-up, placement, resampling
# --------------------------------------------------------------------------------------------


def test_debris_is_removed_but_both_daughters_are_kept():
    mask = ball((30, 30, 40), (15, 15, 10), 6) | ball((30, 30, 40), (15, 15, 28), 5)
    mask[2, 2, 2] = True  # debris: one voxel
    kept = remove_debris(mask, debris_fraction=0.05)
    assert ndimage.label(kept, np.ones((3, 3, 3)))[1] == 2
    assert not kept[2, 2, 2]
    largest = remove_debris(mask, debris_fraction=0.05, largest_only=True)
    assert ndimage.label(largest, np.ones((3, 3, 3)))[1] == 1
    assert largest[15, 15, 10] and not largest[15, 15, 28]


def test_components_touching_diagonally_are_one_cell():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True
    np.testing.assert_array_equal(remove_debris(mask, 0.9, largest_only=True), mask)


@pytest.mark.parametrize("centre", [(8, 20, 9), (12.5, 12, 30)])
def test_centroid_lands_at_the_grid_centre(centre):
    mask = ball((26, 34, 40), centre, 5)
    grid = place_in_grid(mask, (32, 32, 32))
    assert grid.sum() == mask.sum()
    np.testing.assert_allclose(centroid(grid), [15.5, 15.5, 15.5], atol=0.5)


def test_cell_larger_than_the_grid_is_refused_with_a_scale_suggestion():
    mask = np.zeros((50, 20, 20), bool)
    mask[2:42, 5:15, 5:15] = True
    with pytest.raises(InputDataError) as err:
        place_in_grid(mask, (32, 32, 32), where="seq_007 frame 3")
    message = err.value.message
    assert "seq_007 frame 3" in message and "40 x 10 x 10" in message and "32 x 32 x 32" in message
    assert "--scale 0.8" in message


def test_cell_that_fits_but_would_be_cut_by_centring_is_shifted_inside():
    mask = np.zeros((40, 40, 40), bool)
    mask[5:35, 18:22, 18:22] = True
    mask[5:8, 10:30, 10:30] = True  # heavy end: the centroid is far from the bbox centre
    grid = place_in_grid(mask, (32, 32, 32))
    assert grid.sum() == mask.sum()


def test_anisotropic_voxels_are_resampled_to_isotropic():
    spacing = (2.0, 0.5, 0.5)
    mask = ball((16, 64, 64), (8, 32, 32), 6.0, spacing)  # a sphere in physical units
    zoom = isotropic_zoom(spacing)
    assert zoom == (4.0, 1.0, 1.0)
    iso = resample_mask(mask, zoom)
    assert iso.shape == (64, 64, 64)
    box = ndimage.find_objects(iso.astype(np.uint8))[0]
    extents = [b.stop - b.start for b in box]
    # A sphere again, 24 voxels across, up to one coarse z slice (4 voxels) of aliasing.
    assert all(abs(e - 24) <= 4 for e in extents) and abs(extents[1] - extents[2]) <= 1
    assert iso.sum() == pytest.approx(4 / 3 * np.pi * 12**3, rel=0.1)


def test_integer_zoom_repeats_voxels_exactly():
    mask = blobs((6, 7, 8), 5)
    np.testing.assert_array_equal(resample_mask(mask, (2, 1, 1)), np.repeat(mask, 2, axis=0))
    assert isotropic_zoom(None, 0.5) == (0.5, 0.5, 0.5)


def test_frame_sdf_pipeline_on_a_label_image():
    frame = np.zeros((20, 24, 28), np.uint16)
    frame[ball(frame.shape, (10, 12, 8), 4)] = 3
    frame[ball(frame.shape, (10, 12, 20), 2)] = 7  # shallow: max |sdf| is the clamp, outside
    cfg = DataConfig(size=(16, 16, 16), clamp=3, label=7)
    result = frame_sdf(frame, cfg, where="x")
    assert result.sdf.shape == (16, 16, 16) and result.sdf.dtype == np.float32
    assert (result.sdf <= 0).sum() == (frame == 7).sum()
    assert np.abs(result.sdf).max() == pytest.approx(1.0)
    assert result.factor == pytest.approx(3.0)


def test_empty_frame_is_a_user_error_naming_the_frame():
    with pytest.raises(InputDataError, match="no foreground.*seq_001 frame 4"):
        frame_sdf(np.zeros((8, 8, 8), np.uint8), DataConfig(size=8), where="seq_001 frame 4")
    with pytest.raises(InputDataError, match="no voxel with label 2"):
        frame_sdf(np.ones((8, 8, 8), np.uint8), DataConfig(size=8, label=2))


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def test_seventy_thirty_split_between_near_and_far():
    sdf = np.linspace(-1, 1, 10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    xyz, values = sample_points(sdf, 1000, 0.7, 0.3, np.random.default_rng(0))
    assert xyz.shape == (1000, 3) and xyz.dtype == np.float32 and values.dtype == np.float32
    assert np.count_nonzero(values <= 0.3) == 700
    assert np.all(values[:700] <= 0.3) and np.all(values[700:] > 0.3)


def test_sampling_is_with_replacement():
    sdf = np.ones((10, 10, 10), np.float32)
    sdf[2, 3, 4] = sdf[5, 5, 5] = -0.5
    xyz, values = sample_points(sdf, 200, 0.7, 0.3, np.random.default_rng(1))
    near = xyz[values <= 0.3]
    assert len(near) == 140
    assert len(np.unique(near, axis=0)) == 2  # two voxels, drawn again and again


@pytest.mark.parametrize("value", [-0.5, 0.9])
def test_empty_set_takes_all_points_from_the_other(value):
    sdf = np.full((6, 6, 6), value, np.float32)
    _, values = sample_points(sdf, 50, 0.7, 0.3, np.random.default_rng(2))
    assert len(values) == 50 and np.all(values == value)


def test_points_are_voxel_centres_in_xyz_order():
    shape = (5, 7, 9)  # non-cubic: catches swapped axes
    sdf = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 1000 - 0.1
    xyz, values = sample_points(sdf, 300, 0.5, 0.0, np.random.default_rng(3))
    index = [np.rint((xyz[:, a] + 1) / 2 * (n - 1)).astype(int) for a, n in zip(range(3), shape[::-1])]
    i, j, k = index
    np.testing.assert_allclose(xyz[:, 0], axis_coordinates(9)[i])
    np.testing.assert_array_equal(values, sdf[k, j, i])
    assert axis_coordinates(1).tolist() == [0.0]


def test_frame_samples_carry_time_and_are_seeded():
    cfg = DataConfig(size=(12, 12, 12), sample_fraction=0.1)
    sdf = signed_distance(ball((12, 12, 12), (6, 6, 6), 3), 3.0) / 3.0
    a = sample_frame(sdf, frame_time(2, 5), cfg, sampling_rng(0, 1, 2))
    b = sample_frame(sdf, frame_time(2, 5), cfg, sampling_rng(0, 1, 2))
    c = sample_frame(sdf, frame_time(2, 5), cfg, sampling_rng(0, 1, 3))
    assert a[0].shape == (points_per_frame((12, 12, 12), 0.1), 4) == (173, 4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert np.all(a[0][:, 3] == 0.0)
    assert frame_time(0, 5) == -1 and frame_time(4, 5) == 1 and frame_time(0, 1) == 0
