"""Seconds per rendered frame (``cellgen render``), against baselines measured in the same run.

    .venv/bin/python benchmarks/render.py [--sizes 64,128,256] [--repeat 3] [--threads N]

For a filo phantom frame (the last, the largest) of each grid size and each PSF:
- light, cropped: the noise-free image computed in the cell's padded bounding box (what cellgen
  does) and its baseline, the same light computed on the whole grid (the images must match);
- camera: Poisson + read noise on the whole stack with 1 thread and with --threads threads (the
  images must match: fixed chunks, one stream each);
- frame: the whole render (light, background, camera with --threads, all three views), and, as a
  yardstick, writing its 3D stack as a zlib TIFF (what ``--mode 3d`` adds per frame).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
from pathlib import Path

import numpy as np

from cellgen.config import RenderConfig
from cellgen.data.phantoms import phantom_sequence
from cellgen.io import write_image_tiff
from cellgen.render.frame import VIEWS, expected_photons, fluorophore_density, frame_streams, frame_views, render_stack
from cellgen.render.optics import bleaching, camera, convolve_psf, smooth_background


def seconds(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls."""
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def whole_grid_photons(mask: np.ndarray, settings: RenderConfig, frame: int) -> np.ndarray:
    """The baseline: ``expected_photons`` without the bounding-box crop."""
    streams = frame_streams(settings.seed, "seq_000", frame)
    density = fluorophore_density(mask, settings, streams.texture)
    photons = settings.photons * bleaching(frame, settings.bleach_tau) * convolve_psf(
        density, settings.psf, settings.sigma_xy, settings.sigma_z
    )
    background = smooth_background(
        mask.shape[1:], settings.background, settings.background_variation, settings.background_scale, streams.background
    )
    return photons + background[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256", help="cube sides in voxels")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (cellgen's paths)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="camera threads")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            mask = list(phantom_sequence("filo", 0, 3, (size,) * 3, seed=0))[-1]
            for psf in ("gaussian", "born-wolf"):
                settings = RenderConfig(psf=psf)
                streams = lambda: frame_streams(settings.seed, "seq_000", 2)  # noqa: E731 (fresh streams per call)
                cropped = expected_photons(mask, settings, 2, streams())
                # The crop changes which noise a voxel gets, so compare the noise-free light without texture.
                flat = settings.model_copy(update={"texture_contrast": 0.0})
                same_light = np.allclose(
                    expected_photons(mask, flat, 2, streams()), whole_grid_photons(mask, flat, 2), rtol=1e-4, atol=1e-3
                )
                t_crop = seconds(lambda: expected_photons(mask, settings, 2, streams()), args.repeat)
                t_whole = seconds(lambda: whole_grid_photons(mask, settings, 2))
                rng = lambda: np.random.default_rng(0)  # noqa: E731
                one = camera(cropped, settings.gain, settings.read_noise, settings.offset, rng(), 1)
                many = camera(cropped, settings.gain, settings.read_noise, settings.offset, rng(), args.threads)
                t_cam1 = seconds(lambda: camera(cropped, 2.0, 3.0, 100.0, rng(), 1), args.repeat)
                t_camn = seconds(lambda: camera(cropped, 2.0, 3.0, 100.0, rng(), args.threads), args.repeat)
                t_frame = seconds(
                    lambda: frame_views(render_stack(mask, settings, "seq_000", 2, args.threads), mask, VIEWS),
                    args.repeat,
                )
                t_tiff = seconds(lambda: write_image_tiff(Path(tmp) / "stack.tif", many))
                rows.append(
                    (size, psf, t_crop, t_whole, same_light, t_cam1, t_camn, bool(np.array_equal(one, many)), t_frame, t_tiff)
                )

    print(f"render of a filo frame, seconds (cellgen's paths: best of {args.repeat}; camera threads: {args.threads})")
    columns = [("size", 4), ("psf", 9), ("light crop", 10), ("whole grid", 10), ("speed-up", 8), ("same", 5),
               ("camera 1", 8), (f"camera {args.threads}", 9), ("speed-up", 8), ("same", 5),
               ("frame", 7), ("3D TIFF", 7), ("TIFF/frame", 10)]  # fmt: skip
    header = " ".join(f"{name:<{width}}" if i < 2 else f"{name:>{width}}" for i, (name, width) in enumerate(columns))
    print(header)
    print("-" * len(header))
    for size, psf, crop, whole, same, cam1, camn, same_cam, frame, tiff in rows:
        print(
            f"{size:<4} {psf:<9} {crop:>10.3f} {whole:>10.3f} {whole / crop:>7.1f}x {str(same):>5} "
            f"{cam1:>8.3f} {camn:>9.3f} {cam1 / camn:>7.1f}x {str(same_cam):>5} {frame:>7.3f} {tiff:>7.3f} "
            f"{tiff / frame:>9.2f}x"
        )


if __name__ == "__main__":
    main()
