"""The optical model of ``cellgen render``: pure functions over numpy arrays.

A fluorescence image of a cell is modelled in the order light takes (docs/render.md):

1. fluorophore density inside the cell: band-limited noise (texture), a brighter rim at the
   membrane, a dimmer or brighter nucleus-like blob (``band_limited_noise``, ``membrane_rim``,
   ``nucleus_blobs``);
2. blurred by the 3D point-spread function (``gaussian_psf``, ``born_wolf_psf``,
   ``convolve_psf``);
3. plus a smooth background, the cell's signal fading by photobleaching (``smooth_background``,
   ``bleaching``);
4. recorded by a camera with Poisson shot noise, Gaussian read noise, gain and offset
   (``camera``);
5. shown as a maximum-intensity projection or an in-focus slice (``focal_plane``).

Lengths are in voxels, arrays are (Z, Y, X). Every random draw comes from the generator passed
in, so a render is reproducible from its seed.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import fft, ndimage, special

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""Full width at half maximum of a Gaussian, in units of its sigma."""

AIRY_HALF_MAX_V = 1.616339948
"""[2 J1(v) / v]^2 = 1/2 here: the Airy pattern's half width at half maximum in optical units."""

AIRY_V_PER_SIGMA = 2.0 * AIRY_HALF_MAX_V / FWHM_PER_SIGMA
"""An Airy pattern and a Gaussian of sigma s have the same FWHM when v = this * r / s."""

AIRY_SECOND_ZERO_V = 7.015586670
"""Second zero of J1: the Born-Wolf-like kernel keeps the central disc and the first ring."""

TRUNCATE = 4.0
"""Kernels reach this many sigmas (scipy.ndimage.gaussian_filter's default)."""

NOISE_CHUNKS = 16
"""Camera noise is drawn in this many pieces, each from its own random stream."""


# --------------------------------------------------------------------------------------------
# 1. Fluorophore density
# --------------------------------------------------------------------------------------------


def band_limited_noise(
    shape: tuple[int, ...],
    sigma: float,
    rng: np.random.Generator,
    octaves: int = 1,
    persistence: float = 0.5,
) -> np.ndarray:
    """Gaussian-filtered white noise (any number of axes), zero mean and unit std, float32.

    Octave k is white noise filtered with sigma * 2**k and weighted persistence**k (each octave
    first scaled to unit variance). All octaves are filtered at once in the Fourier domain, on a
    fast FFT length; the noise is periodic over that length, which a texture does not mind.
    """
    if sigma <= 0 or octaves < 1:
        raise ValueError(f"need sigma > 0 and octaves >= 1, got {sigma}, {octaves}")
    fast = tuple(fft.next_fast_len(int(n), real=True) for n in shape)
    white = rng.standard_normal(fast, dtype=np.float32)
    spectrum = fft.rfftn(white)
    freq2 = _squared_frequencies(fast)
    transfer = np.zeros_like(freq2)
    ndim = len(shape)
    for k in range(octaves):
        s = sigma * 2.0**k
        # White noise filtered with sigma s has variance ~ s**-ndim: scale it back to one.
        weight = persistence**k * (s / sigma) ** (ndim / 2)
        transfer += weight * np.exp(-2.0 * math.pi**2 * s * s * freq2)
    noise = fft.irfftn(spectrum * transfer, s=fast)[tuple(slice(0, int(n)) for n in shape)]
    noise = noise.astype(np.float32, copy=False)
    noise -= noise.mean()
    std = float(noise.std())
    return noise / std if std > 0 else noise


def _squared_frequencies(shape: tuple[int, ...]) -> np.ndarray:
    """|f|^2 (cycles per voxel) on the grid of ``rfftn`` of an array of ``shape``, float32."""
    axes = [fft.fftfreq(n).astype(np.float32) for n in shape[:-1]]
    axes.append(fft.rfftfreq(shape[-1]).astype(np.float32))
    total = np.zeros([len(a) for a in axes], dtype=np.float32)
    for i, values in enumerate(axes):
        view = [1] * len(axes)
        view[i] = len(values)
        total += values.reshape(view) ** 2
    return total


def inside_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels) from each inside voxel to the nearest outside voxel; 0 outside.

    The surface layer of the cell is at distance 1.
    """
    import edt

    return edt.edt(np.ascontiguousarray(mask, dtype=np.uint8), black_border=True, parallel=1).astype(
        np.float32, copy=False
    )


def membrane_rim(distance: np.ndarray, width: float) -> np.ndarray:
    """1 at the surface layer of the cell, falling inwards like a Gaussian of sigma ``width``;
    0 outside. ``distance`` comes from ``inside_distance``."""
    rim = np.exp(-0.5 * ((distance - 1.0) / width) ** 2).astype(np.float32)
    rim[distance <= 0] = 0.0
    return rim


def nucleus_blobs(mask: np.ndarray, distance: np.ndarray, size: float, edge: float = 1.0) -> np.ndarray:
    """A soft ball (1 inside, 0 outside, logistic edge of ``edge`` voxels) at the deepest point of
    each connected component of ``mask``, of radius ``size`` times that component's depth.

    Components less than 2 voxels deep (debris, thin filopodia on their own) get no blob; a blob
    never reaches into another component.
    """
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    blobs = np.zeros(mask.shape, dtype=np.float32)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        member = labels[box] == label
        depth_map = np.where(member, distance[box], 0.0)
        peak = np.unravel_index(int(np.argmax(depth_map)), depth_map.shape)
        depth = float(depth_map[peak])
        if depth < 2.0:
            continue
        grid = np.ogrid[tuple(slice(0, n) for n in depth_map.shape)]
        dist2 = sum((axis - p).astype(np.float32) ** 2 for axis, p in zip(grid, peak))
        blob = special.expit((size * depth - np.sqrt(dist2)) / edge)
        np.maximum(blobs[box], np.where(member, blob, 0.0).astype(np.float32), out=blobs[box])
    return blobs
    index = np.arange(1, count + 1)
    depths = ndimage.maximum(distance, labels, index)
    peaks = ndimage.maximum_position(distance, labels, index)
    for label, box, depth, peak in zip(index, ndimage.find_objects(labels), depths, peaks):
        if depth < 2.0:
            continue
        radius = size * float(depth)
        grid = np.ogrid[box]
        dist2 = sum((axis - p).astype(np.float32) ** 2 for axis, p in zip(grid, peak))
        blob = 1.0 / (1.0 + np.exp((np.sqrt(dist2) - radius) / edge))
        blob = np.where(labels[box] == label, blob, 0.0).astype(np.float32)
        np.maximum(blobs[box], blob, out=blobs[box])
    return blobs


# --------------------------------------------------------------------------------------------
# 2. Point-spread function
# --------------------------------------------------------------------------------------------


def _gaussian_1d(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """A sampled, normalised 1D Gaussian as scipy.ndimage.gaussian_filter builds it."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return np.ones(1)
    x = np.arange(-radius, radius + 1, dtype=float)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_psf(sigma_xy: float, sigma_z: float, truncate: float = TRUNCATE) -> np.ndarray:
    """A separable 3D Gaussian kernel (Z, Y, X) summing to 1: exactly what ``convolve_psf``
    applies for the Gaussian PSF (the impulse response of scipy's gaussian_filter)."""
    gz, gy, gx = _gaussian_1d(sigma_z, truncate), _gaussian_1d(sigma_xy, truncate), _gaussian_1d(sigma_xy, truncate)
    return gz[:, None, None] * gy[None, :, None] * gx[None, None, :]


def born_wolf_psf(sigma_xy: float, sigma_z: float, truncate: float = TRUNCATE) -> np.ndarray:
    """A Born-Wolf-like widefield PSF (Z, Y, X) summing to 1 (a documented approximation).

    Plane z holds an Airy pattern [2 J1(v) / v]^2 whose width grows with defocus like a Gaussian
    beam, w(z) = sqrt(1 + (z / sigma_z)^2), with v = AIRY_V_PER_SIGMA * r / (sigma_xy * w(z)):
    in focus it has the FWHM of a Gaussian of sigma ``sigma_xy``. Each plane holds the energy
    exp(-z^2 / (2 sigma_z^2)), so the axial profile integrated over a plane equals that of
    ``gaussian_psf``. Out to the second zero of the Airy pattern (central disc + first ring)
    at the widest plane, and ``truncate`` sigma_z axially.
    """
    if sigma_xy <= 0 or sigma_z <= 0:
        raise ValueError(f"the Born-Wolf-like PSF needs sigma_xy > 0 and sigma_z > 0, got {sigma_xy}, {sigma_z}")
    rz = int(truncate * sigma_z + 0.5)
    z = np.arange(-rz, rz + 1, dtype=float)
    widening = np.sqrt(1.0 + (z / sigma_z) ** 2)
    rxy = int(AIRY_SECOND_ZERO_V / AIRY_V_PER_SIGMA * sigma_xy * widening.max() + 0.5)
    y = np.arange(-rxy, rxy + 1, dtype=float)
    r = np.hypot(y[:, None], y[None, :])
    kernel = np.empty((z.size, y.size, y.size))
    for k, w in enumerate(widening):
        v = AIRY_V_PER_SIGMA * r / (sigma_xy * w)
        plane = airy_pattern(v)
        plane[v > AIRY_SECOND_ZERO_V] = 0.0
        kernel[k] = plane / plane.sum()
    energy = _gaussian_1d(sigma_z, truncate)
    return kernel * energy[:, None, None]


def airy_pattern(v: np.ndarray) -> np.ndarray:
    """The Airy intensity [2 J1(v) / v]^2 (1 at v = 0)."""
    v = np.asarray(v, dtype=float)
    out = np.ones_like(v)
    nonzero = v != 0
    out[nonzero] = (2.0 * special.j1(v[nonzero]) / v[nonzero]) ** 2
    return out


def psf_kernel(kind: str, sigma_xy: float, sigma_z: float) -> np.ndarray:
    """The PSF ``kind`` ('gaussian' or 'born-wolf') as a (Z, Y, X) kernel summing to 1."""
    if kind == "gaussian":
        return gaussian_psf(sigma_xy, sigma_z)
    if kind == "born-wolf":
        return born_wolf_psf(sigma_xy, sigma_z)
    raise ValueError(f"unknown PSF {kind!r}")


def psf_radius(kind: str, sigma_xy: float, sigma_z: float) -> tuple[int, int, int]:
    """How far (Z, Y, X voxels) the PSF spreads light: the half size of its kernel."""
    if kind == "gaussian":
        lateral = int(TRUNCATE * sigma_xy + 0.5)
        return int(TRUNCATE * sigma_z + 0.5), lateral, lateral
    shape = psf_kernel(kind, sigma_xy, sigma_z).shape
    return shape[0] // 2, shape[1] // 2, shape[2] // 2


def convolve_psf(volume: np.ndarray, kind: str, sigma_xy: float, sigma_z: float) -> np.ndarray:
    """``volume`` (Z, Y, X) blurred by the PSF, zero outside the array, float32.

    The Gaussian PSF is applied as a separable filter (fast); the Born-Wolf-like one by FFT.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if kind == "gaussian":
        return ndimage.gaussian_filter(volume, (sigma_z, sigma_xy, sigma_xy), mode="constant", truncate=TRUNCATE)
    kernel = psf_kernel(kind, sigma_xy, sigma_z)
    # Linear (not circular) convolution: pad both to a fast length >= volume + kernel - 1.
    fast = [fft.next_fast_len(v + k - 1, real=True) for v, k in zip(volume.shape, kernel.shape)]
    product = fft.rfftn(volume, fast) * fft.rfftn(kernel.astype(np.float32), fast)
    full = fft.irfftn(product, fast)
    same = tuple(slice(k // 2, k // 2 + v) for v, k in zip(volume.shape, kernel.shape))
    blurred = np.ascontiguousarray(full[same], dtype=np.float32)
    return np.maximum(blurred, 0.0, out=blurred)  # FFT round-off can dip below zero


# --------------------------------------------------------------------------------------------
# 3. Background and photobleaching
# --------------------------------------------------------------------------------------------


def smooth_background(
    shape_yx: tuple[int, int], level: float, variation: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """A lateral (Y, X) background in photo-electrons: ``level`` times 1 + ``variation`` times
    smooth unit-std noise of correlation length ``scale``, never negative, float32."""
    field = np.full(shape_yx, level, dtype=np.float32)
    if level > 0 and variation > 0:
        field *= 1.0 + variation * band_limited_noise(shape_yx, scale, rng)
        np.maximum(field, 0.0, out=field)
    return field


def bleaching(frame: int, tau: float | None) -> float:
    """The share of the fluorophores still bright in ``frame``: exp(-frame / tau), 1 without tau."""
    return 1.0 if tau is None else math.exp(-frame / tau)


# --------------------------------------------------------------------------------------------
# 4. Camera
# --------------------------------------------------------------------------------------------


def camera(
    photons: np.ndarray,
    gain: float,
    read_noise: float,
    offset: float,
    rng: np.random.Generator | None,
    threads: int = 1,
) -> np.ndarray:
    """Grey values (uint16) a camera records for the expected photo-electron counts ``photons``.

    ADU = offset + gain * Poisson(photons) + Normal(0, read_noise), rounded and clipped to
    [0, 65535]; so the variance above the offset is gain * mean + read_noise^2. Without a
    generator the expected image offset + gain * photons is returned (no noise).

    Poisson sampling dominates the cost of a render (~0.2 us a voxel), so the array is cut into
    NOISE_CHUNKS fixed pieces, each with its own stream spawned from ``rng``, and ``threads``
    threads draw them (numpy releases the GIL): the result does not depend on ``threads``.
    """
    photons = np.asarray(photons, dtype=np.float32)
    flat = photons.ravel()
    adu = np.empty(flat.size, dtype=np.float32)
    bounds = np.linspace(0, flat.size, NOISE_CHUNKS + 1).astype(int)
    streams = rng.spawn(NOISE_CHUNKS) if rng is not None else None

    def record(chunk: int) -> None:
        part = adu[bounds[chunk] : bounds[chunk + 1]]
        expected = flat[bounds[chunk] : bounds[chunk + 1]]
        if streams is None:
            part[:] = expected
        else:
            part[:] = streams[chunk].poisson(expected)
        part *= gain
        part += offset
        if streams is not None and read_noise > 0:
            part += read_noise * streams[chunk].standard_normal(part.size, dtype=np.float32)
        np.rint(part, out=part)
        np.clip(part, 0, 65535, out=part)

    if threads > 1:
        with ThreadPoolExecutor(min(threads, NOISE_CHUNKS)) as pool:
            list(pool.map(record, range(NOISE_CHUNKS)))
    else:
        for chunk in range(NOISE_CHUNKS):
            record(chunk)
    return adu.astype(np.uint16).reshape(photons.shape)


# --------------------------------------------------------------------------------------------
# 5. Views
# --------------------------------------------------------------------------------------------


def focal_plane(mask: np.ndarray) -> int:
    """The Z index of the in-focus slice: the plane where the cell's cross-section is largest
    (the middle of a roundish cell; never the gap between two daughter cells), the one nearest
    the centroid among equals; the middle of an empty stack."""
    areas = np.count_nonzero(mask, axis=(1, 2))
    total = areas.sum()
    if total == 0:
        return mask.shape[0] // 2
    centroid = float(np.dot(np.arange(areas.size), areas)) / float(total)
    largest = np.flatnonzero(areas == areas.max())
    return int(largest[np.argmin(np.abs(largest - centroid))])
