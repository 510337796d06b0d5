"""``cellgen render``: each piece of the optical model, whole frames against their masks, and the
stage end to end (files read back, reruns, refusals, one-line errors)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.config import RenderConfig, load_config
from cellgen.data.phantoms import phantom_sequence, write_phantoms
from cellgen.io import read_tiff
from cellgen.layout import RenderDir
from cellgen.render.frame import expected_photons, frame_streams, frame_views, render_stack
from cellgen.render.optics import (
    AIRY_HALF_MAX_V,
    FWHM_PER_SIGMA,
    airy_pattern,
    band_limited_noise,
    bleaching,
    born_wolf_psf,
    camera,
    convolve_psf,
    focal_plane,
    gaussian_psf,
    inside_distance,
    membrane_rim,
    nucleus_blobs,
    psf_kernel,
)

runner = CliRunner()
QUIET = RenderConfig(noise=False, background_variation=0.0)


def ball(shape, center, radius):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2


def dice(a, b):
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def variance_along(kernel, axis):
    """Second central moment of the kernel's marginal along ``axis``."""
    marginal = kernel.sum(axis=tuple(a for a in range(3) if a != axis))
    x = np.arange(marginal.size) - marginal.size // 2
    return float((marginal * x**2).sum() / marginal.sum())


# ------------------------------------------------------------------------------------------
# Point-spread functions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "born-wolf"])
def test_psf_integrates_to_one_and_is_wider_in_z(kind):
    kernel = psf_kernel(kind, sigma_xy=1.0, sigma_z=2.5)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-9)
    assert kernel.min() >= 0
    assert kernel.shape[0] % 2 == kernel.shape[1] % 2 == 1  # centred on a voxel
    assert np.unravel_index(kernel.argmax(), kernel.shape) == tuple(s // 2 for s in kernel.shape)
    assert variance_along(kernel, 0) > 2 * variance_along(kernel, 2)
    assert variance_along(kernel, 1) == pytest.approx(variance_along(kernel, 2))


def test_gaussian_psf_is_the_impulse_response_of_the_filter():
    kernel = gaussian_psf(1.2, 2.0)
    delta = np.zeros((31, 31, 31), dtype=np.float32)
    delta[15, 15, 15] = 1.0
    blurred = convolve_psf(delta, "gaussian", 1.2, 2.0)
    rz, ry, rx = (s // 2 for s in kernel.shape)
    np.testing.assert_allclose(blurred[15 - rz : 16 + rz, 15 - ry : 16 + ry, 15 - rx : 16 + rx], kernel, atol=1e-7)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)


def test_born_wolf_psf_shape():
    assert airy_pattern(np.array([0.0]))[0] == 1.0
    assert airy_pattern(np.array([AIRY_HALF_MAX_V]))[0] == pytest.approx(0.5, abs=1e-6)
    kernel = born_wolf_psf(1.5, 3.0)
    # Same axial energy profile as the Gaussian PSF; lateral width grows with defocus.
    np.testing.assert_allclose(kernel.sum(axis=(1, 2)), gaussian_psf(1.5, 3.0).sum(axis=(1, 2)), atol=1e-12)
    planes = kernel / kernel.sum(axis=(1, 2), keepdims=True)
    centre = kernel.shape[0] // 2
    assert variance_along(planes[centre][None], 2) < variance_along(planes[0][None], 2)
    # In focus the profile has the FWHM of a Gaussian of sigma_xy (sampled finely to check).
    fine = airy_pattern(np.linspace(0, 4, 4001))
    half_width = np.linspace(0, 4, 4001)[np.argmin(np.abs(fine - 0.5))]
    assert half_width == pytest.approx(AIRY_HALF_MAX_V, abs=1e-3)
    assert FWHM_PER_SIGMA == pytest.approx(2.3548, abs=1e-4)
    delta = np.zeros((25, 41, 41), dtype=np.float32)
    delta[12, 20, 20] = 1.0
    assert convolve_psf(delta, "born-wolf", 1.5, 3.0).sum() == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------------------------------
# Fluorophore density
# ------------------------------------------------------------------------------------------


def test_band_limited_noise_is_normalised_smooth_and_seeded():
    fine = band_limited_noise((32, 40, 36), 1.0, np.random.default_rng(0))
    coarse = band_limited_noise((32, 40, 36), 3.0, np.random.default_rng(0), octaves=2)
    for noise in (fine, coarse):
        assert noise.shape == (32, 40, 36) and noise.dtype == np.float32
        assert abs(noise.mean()) < 1e-4 and noise.std() == pytest.approx(1.0, abs=1e-4)

    def neighbour_correlation(a):
        return float(np.corrcoef(a[:, :, :-1].ravel(), a[:, :, 1:].ravel())[0, 1])

    assert 0.4 < neighbour_correlation(fine) < neighbour_correlation(coarse) < 0.99
    again = band_limited_noise((32, 40, 36), 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(fine, again)
    assert band_limited_noise((50, 60), 4.0, np.random.default_rng(1)).shape == (50, 60)


def test_membrane_rim_and_nucleus_blobs():
    shape = (40, 40, 72)
    left, right = ball(shape, (20, 20, 18), 12), ball(shape, (20, 20, 54), 9)
    thin = np.zeros(shape, dtype=bool)
    thin[2, 2, 30:40] = True  # a one-voxel line: no nucleus
    mask = left | right | thin
    distance = inside_distance(mask)
    rim = membrane_rim(distance, 1.5)
    surface = mask & ~ndimage.binary_erosion(mask)
    assert np.allclose(rim[surface & (left | right)], 1.0, atol=0.05)
    assert rim[~mask].max() == 0
    assert rim[20, 20, 18] < 1e-6  # the centre of the big ball is far from the membrane

    blobs = nucleus_blobs(mask, distance, size=0.5)
    assert blobs[~mask].max() == 0 and blobs[thin].max() == 0
    assert blobs[20, 20, 18] > 0.95 and blobs[20, 20, 54] > 0.95
    depth_left = distance[left].max()
    assert (blobs[left] > 0.5).sum() == pytest.approx(4 / 3 * np.pi * (0.5 * depth_left) ** 3, rel=0.2)
    assert blobs[20, 20, 18 + int(depth_left)] < 0.1


# ------------------------------------------------------------------------------------------
# Camera, bleaching, views
# ------------------------------------------------------------------------------------------


def test_camera_noise_is_poisson_gaussian():
    photons = np.full((64, 64, 64), 50.0, dtype=np.float32)
    gain, read_noise, offset = 2.0, 3.0, 100.0
    adu = camera(photons, gain, read_noise, offset, np.random.default_rng(0)).astype(float)
    assert adu.mean() == pytest.approx(offset + gain * 50.0, rel=0.01)
    # Variance above the offset: gain * mean (shot noise) + read_noise^2.
    assert adu.var() == pytest.approx(gain * (adu.mean() - offset) + read_noise**2, rel=0.05)
    shot_only = camera(photons, gain, 0.0, offset, np.random.default_rng(1)).astype(float)
    assert shot_only.var() == pytest.approx(gain * (shot_only.mean() - offset), rel=0.05)
    # A brighter patch is noisier in proportion.
    bright = camera(photons * 8, gain, 0.0, offset, np.random.default_rng(2)).astype(float)
    assert bright.var() / shot_only.var() == pytest.approx(8, rel=0.08)


def test_camera_without_noise_clips_and_does_not_depend_on_threads():
    photons = np.array([[0.0, 10.2, 1e6]], dtype=np.float32)
    clean = camera(photons, 2.0, 3.0, 100.0, None)
    assert clean.dtype == np.uint16
    assert clean.tolist() == [[100, 120, 65535]]
    field = np.random.default_rng(5).uniform(0, 100, (17, 23, 9)).astype(np.float32)
    one = camera(field, 2.0, 3.0, 100.0, np.random.default_rng(7), threads=1)
    two = camera(field, 2.0, 3.0, 100.0, np.random.default_rng(7), threads=2)
    np.testing.assert_array_equal(one, two)


def test_bleaching_and_focal_plane():
    assert bleaching(0, 10.0) == 1.0 and bleaching(10, 10.0) == pytest.approx(np.exp(-1))
    assert bleaching(25, None) == 1.0
    mask = ball((30, 20, 20), (21, 10, 10), 4)
    assert focal_plane(mask) == 21
    daughters = ball((30, 20, 20), (6, 10, 10), 4) | ball((30, 20, 20), (20, 10, 10), 5)
    assert focal_plane(daughters) == 20  # not the empty plane between them
    assert focal_plane(np.zeros((7, 3, 3), bool)) == 3


# ------------------------------------------------------------------------------------------
# Whole frames
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cell():
    return next(phantom_sequence("plat", 0, 1, (40, 56, 56), seed=0))


@pytest.mark.parametrize("psf", ["gaussian", "born-wolf"])
def test_noise_free_render_thresholds_back_to_the_mask(cell, psf):
    settings = QUIET.model_copy(update={"psf": psf})
    stack = render_stack(cell, settings, "seq_000", 0)
    views = frame_views(stack, cell, ("mip", "slice", "3d"))
    for view, (image, mask) in views.items():
        assert image.dtype == np.uint16 and image.shape == mask.shape
        assert dice(image > threshold_otsu(image), mask) > 0.9, view
    np.testing.assert_array_equal(views["mip"][1], cell.any(axis=0))


def test_noisy_render_is_bright_inside_the_mask(cell):
    stack = render_stack(cell, RenderConfig(), "seq_000", 0)
    image, mask = frame_views(stack, cell, ("mip",))["mip"]
    inside, outside = image[mask].astype(float), image[~ndimage.binary_dilation(mask, iterations=3)].astype(float)
    assert inside.mean() > outside.mean() + 5 * outside.std()
    assert outside.min() > 0  # the offset keeps the dark background off zero


def test_render_is_seeded_per_sequence_and_frame(cell):
    settings = RenderConfig(seed=3)
    first = render_stack(cell, settings, "seq_000", 4)
    np.testing.assert_array_equal(first, render_stack(cell, settings, "seq_000", 4))
    for other in (
        render_stack(cell, RenderConfig(seed=4), "seq_000", 4),
        render_stack(cell, settings, "seq_001", 4),
        render_stack(cell, settings, "seq_000", 5),
    ):
        assert not np.array_equal(first, other)
    # The camera has its own stream: other camera settings keep the texture.
    clean = expected_photons(cell, settings, 4, frame_streams(3, "seq_000", 4))
    again = expected_photons(cell, settings.model_copy(update={"gain": 5.0}), 4, frame_streams(3, "seq_000", 4))
    np.testing.assert_array_equal(clean, again)


def test_bleaching_lowers_the_signal_over_frames(cell):
    settings = RenderConfig(bleach_tau=5.0)
    means = [render_stack(cell, settings, "seq_000", f)[cell].mean() for f in (0, 3, 6, 9)]
    assert all(a > b for a, b in zip(means, means[1:]))
    unbleached = [render_stack(cell, RenderConfig(), "seq_000", f)[cell].mean() for f in (0, 9)]
    assert unbleached[1] == pytest.approx(unbleached[0], rel=0.1)


def test_a_frame_without_cell_is_background_only():
    empty = np.zeros((12, 20, 24), dtype=np.uint8)
    photons = expected_photons(empty, RenderConfig(), 0, frame_streams(0, "s", 0))
    assert np.all(photons == photons[0]) and photons.mean() == pytest.approx(20.0, rel=0.3)
    views = frame_views(render_stack(empty, RenderConfig(), "s", 0), empty, ("mip", "slice"))
    assert views["slice"][0].shape == (20, 24) and not views["slice"][1].any()


def test_texture_membrane_and_nucleus_show_in_the_image():
    shape = (48, 48, 48)
    mask = ball(shape, (24, 24, 24), 16)
    plain = QUIET.model_copy(update={"texture_contrast": 0.0, "membrane": 0.0, "nucleus": 0.0, "background": 0.0})
    flat = expected_photons(mask, plain, 0, frame_streams(0, "s", 0))
    centre, near_surface = flat[24, 24, 24], flat[24, 24, 24 + 12]
    assert centre == pytest.approx(plain.photons, rel=0.01) and near_surface == pytest.approx(centre, rel=0.05)
    rim = expected_photons(mask, plain.model_copy(update={"membrane": 1.0}), 0, frame_streams(0, "s", 0))
    assert rim[24, 24, 24 + 15] > 1.3 * rim[24, 24, 24 + 8]
    dim = expected_photons(mask, plain.model_copy(update={"nucleus": -0.8}), 0, frame_streams(0, "s", 0))
    assert dim[24, 24, 24] < 0.4 * dim[24, 24, 24 + 13]
    textured = expected_photons(mask, plain.model_copy(update={"texture_contrast": 0.3}), 0, frame_streams(0, "s", 0))
    interior = ball(shape, (24, 24, 24), 10)
    assert textured[interior].std() / textured[interior].mean() > 5 * flat[interior].std() / flat[interior].mean()


def test_render_config_rejects_bad_values():
    from cellgen.errors import ConfigError

    with pytest.raises(ConfigError, match="render.mode"):
        load_config(None, ["render.mode=movie"])
    with pytest.raises(ConfigError, match="born-wolf"):
        load_config(None, ["render.psf=born-wolf", "render.sigma_xy=0"])
    with pytest.raises(ConfigError, match="unknown config key 'render.colour'"):
        load_config(None, ["render.colour=green"])


# ------------------------------------------------------------------------------------------
# The stage and its CLI
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    write_phantoms(root, line="cele", n=2, frames=2, size=(32, 40, 40), seed=0, voxel_size=(2.0, 0.5, 0.5))
    return root


def render(masks, out, *args):
    return runner.invoke(app, ["render", str(masks), str(out), *map(str, args)])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cellgen: error"), result.output
    return lines[0]


def test_cli_writes_image_mask_pairs_for_every_view(masks, tmp_path):
    out = tmp_path / "out"
    result = render(masks, out, "--mode", "all", "--seed", "2", "--figure", tmp_path / "pairs.png")
    assert result.exit_code == 0, result.output
    layout = RenderDir(out)
    record = json.loads(layout.record.read_text())
    assert record["views"] == ["mip", "slice", "3d"] and record["settings"]["seed"] == 2
    for sequence in ("seq_000", "seq_001"):
        for frame in (0, 1):
            source, _ = read_tiff(masks / sequence / f"mask_t{frame:03d}.tif")
            shapes = {"mip": (40, 40), "slice": (40, 40), "3d": (32, 40, 40)}
            for view, shape in shapes.items():
                folder = layout.sequence(view, sequence)
                image, voxel_size = read_tiff(folder.image(frame))
                mask, _ = read_tiff(folder.mask(frame))
                assert image.dtype == np.uint16 and mask.dtype == np.uint8
                assert image.shape == mask.shape == shape
                assert set(np.unique(mask)) <= {0, 255}
                assert image[mask > 0].mean() > image[mask == 0].mean() + 60
                assert voxel_size[1:] == pytest.approx((0.5, 0.5))
            mip_mask, _ = read_tiff(layout.sequence("mip", sequence).mask(frame))
            np.testing.assert_array_equal(mip_mask > 0, source.max(axis=0) > 0)
            stack, _ = read_tiff(layout.sequence("3d", sequence).image(frame))
            mip, _ = read_tiff(layout.sequence("mip", sequence).image(frame))
            np.testing.assert_array_equal(mip, stack.max(axis=0))  # one acquisition, several views
    assert (tmp_path / "pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rerun_skips_refuses_other_settings_and_forces(masks, tmp_path):
    out = tmp_path / "out"
    assert render(masks, out).exit_code == 0
    image = RenderDir(out).sequence("mip", "seq_000").image(1)
    before = image.stat().st_mtime_ns
    again = render(masks, out)
    assert again.exit_code == 0 and "4 of 4 frame(s) were already complete" in again.output
    assert image.stat().st_mtime_ns == before

    # A lost frame is rendered again, identically.
    content = image.read_bytes()
    image.unlink()
    assert render(masks, out).exit_code == 0
    assert image.read_bytes() == content

    # Another view of the same settings is added; the record lists both.
    assert render(masks, out, "--mode", "3d").exit_code == 0
    assert json.loads(RenderDir(out).record.read_text())["views"] == ["mip", "3d"]

    line = one_error_line(render(masks, out, "--set", "render.photons=50"))
    assert "other settings" in line and "photons" in line and "--force" in line
    assert render(masks, out, "--set", "render.photons=50", "--force").exit_code == 0
    assert image.read_bytes() != content
    assert not RenderDir(out).view("3d").exists() or not any(RenderDir(out).view("3d").rglob("*.tif"))


def test_workers_render_the_same_images(masks, tmp_path):
    assert render(masks, tmp_path / "one").exit_code == 0
    assert render(masks, tmp_path / "two", "--workers", "2").exit_code == 0
    for sequence in ("seq_000", "seq_001"):
        for frame in (0, 1):
            a = read_tiff(RenderDir(tmp_path / "one").sequence("mip", sequence).image(frame))[0]
            b = read_tiff(RenderDir(tmp_path / "two").sequence("mip", sequence).image(frame))[0]
            np.testing.assert_array_equal(a, b)


def test_cli_bad_inputs_are_one_line(masks, tmp_path):
    assert "masks folder not found" in one_error_line(render(tmp_path / "nowhere", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    assert "no mask sequences found" in one_error_line(render(tmp_path / "empty", tmp_path / "out"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert "cannot create output folder" in one_error_line(render(masks, blocker / "out"))
    assert "render.mode" in one_error_line(render(masks, tmp_path / "out", "--mode", "movie"))
    assert "unknown config key" in one_error_line(render(masks, tmp_path / "out", "--set", "render.colour=1"))
    foreign = tmp_path / "foreign"
    (foreign / "mip" / "seq_000").mkdir(parents=True)
    (foreign / "mip" / "seq_000" / "image_t000.tif").write_bytes(b"")
    assert "no render.json" in one_error_line(render(masks, foreign))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in one_error_line(render(masks, locked))
