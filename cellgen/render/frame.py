"""One rendered frame: a 3D mask in, a synthetic fluorescence stack out (optics.py, composed).

The light is computed only in the cell's bounding box padded by the PSF's reach (outside it the
cell contributes nothing), then the background is added and the camera records the whole stack.
The projections ('mip', 'slice') are views of that one noisy stack, as a microscopist would take
them, so every view of a frame shows the same acquisition.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from cellgen.config import RenderConfig
from cellgen.render.optics import (
    band_limited_noise,
    bleaching,
    camera,
    convolve_psf,
    focal_plane,
    inside_distance,
    membrane_rim,
    nucleus_blobs,
    psf_radius,
    smooth_background,
)

VIEWS = ("mip", "slice", "3d")
"""What can be written per frame: maximum-intensity projection, in-focus slice, 3D stack."""

RENDERER_VERSION = 1
"""Bumped whenever the same settings would give different images (recorded in render.json)."""


@dataclass(frozen=True)
class FrameStreams:
    """Independent random streams of one frame, so that changing e.g. the camera settings leaves
    the texture as it was."""

    texture: np.random.Generator
    background: np.random.Generator
    camera: np.random.Generator


def frame_streams(seed: int, sequence: str, frame: int) -> FrameStreams:
    """The random streams of frame ``frame`` of the sequence named ``sequence``.

    Keyed by the sequence's name (not its position), so adding sequences to the masks folder
    changes no image already rendered.
    """
    root = np.random.SeedSequence([int(seed), zlib.crc32(sequence.encode()), int(frame)])
    texture, background, noise = (np.random.default_rng(s) for s in root.spawn(3))
    return FrameStreams(texture, background, noise)


def view_names(mode: str) -> tuple[str, ...]:
    """The views written for a ``render.mode``: one of VIEWS, or all of them for 'all'."""
    if mode == "all":
        return VIEWS
    if mode not in VIEWS:
        raise ValueError(f"unknown render mode {mode!r}")
    return (mode,)


def fluorophore_density(inside: np.ndarray, settings: RenderConfig, rng: np.random.Generator) -> np.ndarray:
    """Relative fluorophore density (mean ~1 in the cell, 0 outside), float32: texture times a
    bright membrane rim times a nucleus-like blob, as far as the settings turn them on."""
    density = np.ones(inside.shape, dtype=np.float32)
    if settings.texture_contrast > 0:
        texture = band_limited_noise(
            inside.shape, settings.texture_sigma, rng, settings.texture_octaves, settings.texture_persistence
        )
        density += settings.texture_contrast * texture
    if settings.membrane > 0 or settings.nucleus != 0:
        distance = inside_distance(inside)
        if settings.membrane > 0:
            density *= 1.0 + settings.membrane * membrane_rim(distance, settings.membrane_width)
        if settings.nucleus != 0:
            density *= 1.0 + settings.nucleus * nucleus_blobs(inside, distance, settings.nucleus_size)
    density[~inside] = 0.0
    return np.maximum(density, 0.0, out=density)


def expected_photons(mask: np.ndarray, settings: RenderConfig, frame: int, streams: FrameStreams) -> np.ndarray:
    """The noise-free image (Z, Y, X) in photo-electrons per voxel, float32."""
    inside = np.asarray(mask) > 0
    if inside.ndim != 3:
        raise ValueError(f"a mask frame must be 3D (Z, Y, X), got shape {inside.shape}")
    photons = np.zeros(inside.shape, dtype=np.float32)
    box = _padded_box(inside, psf_radius(settings.psf, settings.sigma_xy, settings.sigma_z))
    if box is not None:
        density = fluorophore_density(inside[box], settings, streams.texture)
        brightness = settings.photons * bleaching(frame, settings.bleach_tau)
        photons[box] = brightness * convolve_psf(density, settings.psf, settings.sigma_xy, settings.sigma_z)
    background = smooth_background(
        inside.shape[1:],
        settings.background,
        settings.background_variation,
        settings.background_scale,
        streams.background,
    )
    photons += background[None]
    return photons


def render_stack(
    mask: np.ndarray, settings: RenderConfig, sequence: str, frame: int, threads: int = 1
) -> np.ndarray:
    """The uint16 stack (Z, Y, X) a camera records of ``mask`` (frame ``frame`` of ``sequence``).

    ``threads`` only speeds up the camera noise; the image does not depend on it.
    """
    streams = frame_streams(settings.seed, sequence, frame)
    photons = expected_photons(mask, settings, frame, streams)
    rng = streams.camera if settings.noise else None
    return camera(photons, settings.gain, settings.read_noise, settings.offset, rng, threads)


def frame_views(
    stack: np.ndarray, mask: np.ndarray, views: tuple[str, ...]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(image, binary mask) for each view: the MIPs of both along Z, the slice through the
    middle of the cell of both, or both 3D."""
    inside = np.asarray(mask) > 0
    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for view in views:
        if view == "mip":
            result[view] = (stack.max(axis=0), inside.any(axis=0))
        elif view == "slice":
            z = focal_plane(inside)
            result[view] = (stack[z], inside[z])
        elif view == "3d":
            result[view] = (stack, inside)
        else:
            raise ValueError(f"unknown view {view!r}")
    return result


def _padded_box(inside: np.ndarray, pad: tuple[int, int, int]) -> tuple[slice, ...] | None:
    """The bounding box of ``inside`` grown by ``pad`` voxels per axis (within the array)."""
    box = []
    for axis, size in enumerate(inside.shape):
        others = tuple(a for a in range(inside.ndim) if a != axis)
        hits = np.flatnonzero(inside.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - pad[axis], 0), min(int(hits[-1]) + 1 + pad[axis], size)))
    return tuple(box)
