"""Shape descriptors against analytic shapes; overlap metrics against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellgen.evaluate import descriptors as D
from cellgen.evaluate.overlap import dice, iou, pair_metrics, surface_distances


def ellipsoid(shape, semi_axes, centre=None, voxel_size=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxels whose centres lie in an axis-aligned ellipsoid (semi-axes z, y, x, physical units)."""
    centre = [(n - 1) / 2 for n in shape] if centre is None else centre
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    terms = [((g - c) * v / a) ** 2 for g, c, v, a in zip((z, y, x), centre, voxel_size, semi_axes)]
    return terms[0] + terms[1] + terms[2] <= 1.0


def ball(n: int, r: float, offset=(0.3, -0.1, 0.2)) -> np.ndarray:
    centre = [(n - 1) / 2 + o for o in offset]
    return ellipsoid((n, n, n), (r, r, r), centre)


@pytest.mark.parametrize(
    ("radius", "volume_tol", "sphericity_tol"),
    [(4, 0.02, 0.025), (16, 0.002, 0.01)],  # the tolerance shrinks as the ball gets more voxels
)
def test_ball_volume_area_sphericity(radius, volume_tol, sphericity_tol):
    d = D.frame_descriptors(ball(2 * radius + 6, radius))
    assert d["volume"] == pytest.approx(4 / 3 * math.pi * radius**3, rel=volume_tol)
    assert d["surface_area"] == pytest.approx(4 * math.pi * radius**2, rel=0.015)
    assert d["sphericity"] == pytest.approx(1.0, abs=sphericity_tol)
    assert d["equivalent_diameter"] == pytest.approx(2 * radius, rel=volume_tol)
    assert d["elongation"] == pytest.approx(0.0, abs=0.02)
    assert d["solidity"] > 0.98
    assert (d["components"], d["euler_number"]) == (1, 1)


def test_raw_marching_cubes_overestimates_area_and_smoothing_fixes_it():
    mask = ball(40, 16)
    true_area = 4 * math.pi * 16**2
    assert D.surface_area(mask, smoothing_iterations=0) / true_area > 1.06  # the staircase
    assert D.surface_area(mask) / true_area == pytest.approx(1.0, abs=0.015)


def test_ellipsoid_axis_lengths_elongation_flatness():
    mask = ellipsoid((20, 28, 40), (6, 10, 16))
    d = D.frame_descriptors(mask)
    assert d["axis_major"] == pytest.approx(32, rel=0.03)
    assert d["axis_middle"] == pytest.approx(20, rel=0.03)
    assert d["axis_minor"] == pytest.approx(12, rel=0.03)
    assert d["elongation"] == pytest.approx(1 - 20 / 32, abs=0.03)
    assert d["flatness"] == pytest.approx(1 - 12 / 20, abs=0.03)
    assert d["sphericity"] < 0.9


def test_anisotropic_voxels_measure_the_physical_shape():
    # A ball of radius 10 um sampled with 2 um slices and 1 um pixels, and at 1 um everywhere.
    coarse = ellipsoid((14, 28, 28), (10, 10, 10), voxel_size=(2.0, 1.0, 1.0))
    fine = ellipsoid((28, 28, 28), (10, 10, 10))
    a = D.frame_descriptors(coarse, (2.0, 1.0, 1.0))
    b = D.frame_descriptors(fine, (1.0, 1.0, 1.0))
    assert a["volume"] == pytest.approx(4 / 3 * math.pi * 1000, rel=0.03)
    for key in ("volume", "surface_area", "axis_major", "axis_minor", "equivalent_diameter"):
        assert a[key] == pytest.approx(b[key], rel=0.04), key
    assert a["axis_minor"] / a["axis_major"] > 0.95  # round, not squashed to half height
    # Ignoring the voxel size would see a flattened ellipsoid.
    squashed = D.frame_descriptors(coarse)
    assert squashed["flatness"] > 0.4


def test_two_balls_are_two_components():
    mask = ellipsoid((24, 40, 24), (5, 5, 5), (11.5, 9, 11.5)) | ellipsoid((24, 40, 24), (5, 5, 5), (11.5, 30, 11.5))
    d = D.frame_descriptors(mask)
    assert d["components"] == 2
    assert d["euler_number"] == 2
    assert d["solidity"] < 0.6  # the hull spans the gap


def test_torus_and_hollow_ball_euler_characteristic():
    n, big, small = 40, 12.0, 4.5
    z, y, x = np.ogrid[:n, :n, :n]
    c = (n - 1) / 2
    torus = (np.sqrt((x - c) ** 2 + (y - c) ** 2) - big) ** 2 + (z - c) ** 2 <= small**2
    d = D.frame_descriptors(torus)
    assert (d["components"], d["euler_number"]) == (1, 0)
    assert d["solidity"] < 0.8
    hollow = ball(30, 12) & ~ball(30, 8)
    assert D.euler_number(hollow) == 2


def test_box_and_empty_frame():
    box = np.zeros((16, 16, 16), dtype=bool)
    box[3:12, 4:10, 5:14] = True
    d = D.frame_descriptors(box, (0.5, 1.0, 1.0))
    assert d["volume"] == pytest.approx(9 * 6 * 9 * 0.5)
    assert d["solidity"] == pytest.approx(1.0, abs=0.05)
    empty = D.frame_descriptors(np.zeros((8, 8, 8), dtype=bool))
    assert (empty["volume"], empty["components"], empty["euler_number"]) == (0.0, 0, 0)
    assert math.isnan(empty["sphericity"]) and math.isnan(empty["solidity"])
    assert set(empty) == set(D.FRAME_DESCRIPTORS) == set(d)
    with pytest.raises(ValueError):
        D.frame_descriptors(np.zeros((8, 8), dtype=bool))


def test_smoothing_never_moves_a_vertex_further_than_the_bound():
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[2, 2, 2] = True  # a lone voxel: unconstrained smoothing shrinks it to a point
    raw, faces = D.surface_mesh(mask, smoothing_iterations=0)
    smooth, _ = D.surface_mesh(mask)
    assert np.abs(smooth - raw).max() <= D.SMOOTHING_MAX_SHIFT + 1e-9
    assert D.taubin_smooth(raw, faces, 20).std(axis=0).max() < 0.05  # what the bound prevents


def test_sequence_descriptors():
    out = D.sequence_descriptors([100, 110, 121, 121], [1, 1, 2, 2], [0.9, 0.8, 1.0])
    assert out["growth_rate"] == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert out["divisions"] == 1
    assert out["change"] == pytest.approx((0.1 + 0.2 + 0.0) / 3)
    assert D.sequence_descriptors([1, 1, 1], [1, 2, 1], [1, 1])["divisions"] == 1  # a rise, then a merge
    assert D.sequence_descriptors([1, 1, 1], [1, 3, 3], [1, 1])["divisions"] == 2
    single = D.sequence_descriptors([5.0], [1], [])
    assert math.isnan(single["growth_rate"]) and math.isnan(single["change"]) and single["divisions"] == 0


def test_dice_iou_known_values():
    a = np.zeros((10, 10, 10), dtype=bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b[4:8, 2:6, 2:6] = True  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(32 / 96)
    assert dice(a, a) == iou(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_surface_distances_of_a_shifted_ball():
    a = ball(30, 8, (0, 0, 0))
    b = np.roll(a, 3, axis=2)
    d = surface_distances(a, b)
    assert d["hausdorff"] == pytest.approx(3.0)
    assert 0 < d["mean_surface_distance"] < d["hausdorff95"] <= d["hausdorff"]
    # Physical units: a shift of 3 slices of 2 um is 6 um.
    assert surface_distances(a, np.roll(a, 3, axis=0), (2.0, 1.0, 1.0))["hausdorff"] == pytest.approx(6.0)
    same = pair_metrics(a, a)
    assert same == {"dice": 1.0, "iou": 1.0, "hausdorff": 0.0, "hausdorff95": 0.0, "mean_surface_distance": 0.0}
    assert math.isinf(surface_distances(a, np.zeros_like(a))["hausdorff"])


def test_descriptors_tell_the_phantom_lines_apart():
    """The procedural cell lines differ where they should: cele divides, filo is least solid."""
    from cellgen.data.phantoms import phantom_sequence

    found = {}
    for line in ("plat", "cele", "filo"):
        frames = list(phantom_sequence(line, 0, 4, (40, 40, 40), 0))
        rows = [D.frame_descriptors(f) for f in frames]
        temporal = D.sequence_descriptors(
            [r["volume"] for r in rows],
            [r["components"] for r in rows],
            [dice(a, b) for a, b in zip(frames, frames[1:])],
        )
        found[line] = (rows, temporal)
    assert found["cele"][1]["divisions"] == 1 and found["plat"][1]["divisions"] == 0
    assert found["filo"][0][-1]["solidity"] < found["plat"][0][-1]["solidity"] - 0.2
    assert found["filo"][0][-1]["sphericity"] < found["plat"][0][-1]["sphericity"]
    assert all(0 < t["change"] < 0.5 for _, t in found.values())
