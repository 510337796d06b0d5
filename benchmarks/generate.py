"""Adaptive (coarse-to-fine) vs dense voxelization with the reference network, same run.

    .venv/bin/python benchmarks/generate.py [--size 256] [--dense-size 128] [--full]
                                            [--checkpoint EXP_OR_CKPT --frames 3]

What is measured. The cost of generation is the network: every evaluated point goes through a
real ``SdfDecoder`` of the reference preset (plat: 10 x 128 SIREN, latent 192, skips; ~228 k
parameters, random SIREN init, seeded). A random-init network has no cell shape, so its output is
offset by the signed distance of a real shape, in the units the trained model uses (voxels / 32,
clamped at 32 voxels, like a model trained with the clamp as normalisation):

    sdf(x) = min(d_shape(x), 32) / 32 + 1e-3 * decoder(code, [x, t])

- ``blob``: a sphere of radius 80 voxels (METHOD.md section 6's example), analytic.
- ``filo``: a filopodial phantom cell (``cellgen phantoms --line filo``, last frame), its exact
  signed distance (EDT, ``cellgen.data.sdf.signed_distance``) interpolated trilinearly.

The shape term costs a small fraction of the network's time (printed as "shape share"). The
adaptive voxelizer runs with the defaults of ``generate`` (coarse cell 8, safety 0.8, margin
0.05 SDF units) unless --coarse-cell / --safety / --margin say otherwise.
Dense at ``--size`` is timed directly with ``--full``; otherwise it is timed at ``--dense-size``
and extrapolated by its points per second (the dense cost is linear in the points: equal chunks)
and the agreement is measured at ``--dense-size``. With ``--checkpoint``, a trained model's
generated cells (fitted codes, Haar rotations) are compared the same way: differing voxels, Dice.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from cellgen.config import load_config
from cellgen.generate.voxelize import DEFAULT_MARGIN, DEFAULT_SAFETY, SdfFn, voxelize_adaptive, voxelize_dense
from cellgen.model.decoder import SdfDecoder, count_parameters

CLAMP_VOXELS = 32.0
NETWORK_WEIGHT = 1e-3


def blob_shape(size: int) -> SdfFn:
    half = (size - 1) / 2
    radius = 80 * 2 / 255  # 80 voxels of a 256 grid, in coordinate units

    def fn(xyz: torch.Tensor) -> torch.Tensor:
        return (torch.linalg.vector_norm(xyz, dim=1) - radius) * half

    return fn


def filo_shape(size: int) -> tuple[SdfFn, float]:
    """Trilinear interpolation of the exact SDF (voxels) of a filopodial phantom at ``size``^3."""
    from cellgen.data.phantoms import phantom_sequence
    from cellgen.data.sdf import signed_distance

    *_, mask = phantom_sequence("filo", 0, 2, (size, size, size), seed=0)
    volume = torch.from_numpy(signed_distance(mask, CLAMP_VOXELS))[None, None]
    surface_fraction = float(mask.mean())

    def fn(xyz: torch.Tensor) -> torch.Tensor:
        grid = xyz.reshape(1, -1, 1, 1, 3)
        return torch.nn.functional.grid_sample(volume, grid, mode="bilinear", align_corners=True).reshape(-1)

    return fn, surface_fraction


def with_network(shape_voxels: SdfFn, decoder: SdfDecoder, code: torch.Tensor) -> SdfFn:
    def fn(xyz: torch.Tensor) -> torch.Tensor:
        n = xyz.shape[0]
        xyzt = torch.cat([xyz, torch.zeros(n, 1)], 1)
        shape = torch.clamp(shape_voxels(xyz), max=CLAMP_VOXELS) / CLAMP_VOXELS
        return shape + NETWORK_WEIGHT * decoder(code.expand(n, -1), xyzt)

    return fn


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def compare(name: str, fn: SdfFn, size: int, dense_size: int, full: bool, adaptive_kwargs: dict) -> dict:
    shape = (size,) * 3
    t_adaptive, adaptive = timed(lambda: voxelize_adaptive(fn, shape, **adaptive_kwargs))
    if full:
        t_dense, dense = timed(lambda: voxelize_dense(fn, shape))
        agree_at, reference, candidate = size, dense, adaptive
    else:
        small = (dense_size,) * 3
        t_small, dense_small = timed(lambda: voxelize_dense(fn, small))
        t_dense = t_small * math.prod(shape) / math.prod(small)
        candidate = voxelize_adaptive(fn, small, **adaptive_kwargs)
        agree_at, reference = dense_size, dense_small
    differing = int((reference.mask != candidate.mask).sum())
    return {
        "case": name,
        "dense_evals": math.prod(shape),
        "adaptive_evals": adaptive.evaluations,
        "dense_s": t_dense,
        "adaptive_s": t_adaptive,
        "dense_measured": full,
        "agree_at": agree_at,
        "differing": differing,
        "agreement": 1 - differing / reference.mask.size,
        "dice": dice(reference.mask, candidate.mask),
        "inside": float(adaptive.mask.mean()),
    }


def print_table(rows: list[dict], size: int) -> None:
    print(f"\nvoxelization of one {size}^3 frame, CPU, {torch.get_num_threads()} threads")
    header = (
        f"{'case':<12} {'dense evals':>12} {'adaptive':>10} {'evals x':>8} {'dense s':>9} {'adaptive s':>10} "
        f"{'time x':>7} {'agree @':>7} {'differing':>9} {'agreement':>10} {'Dice':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        dense_s = f"{r['dense_s']:.1f}" + ("" if r["dense_measured"] else "*")
        print(
            f"{r['case']:<12} {r['dense_evals']:>12,} {r['adaptive_evals']:>10,} "
            f"{r['dense_evals'] / r['adaptive_evals']:>8.1f} {dense_s:>9} {r['adaptive_s']:>10.1f} "
            f"{r['dense_s'] / r['adaptive_s']:>7.1f} {r['agree_at']:>6}^3 {r['differing']:>9,} "
            f"{100 * r['agreement']:>9.4f}% {r['dice']:>8.5f}"
        )
    if any(not r["dense_measured"] for r in rows):
        print("* dense time extrapolated from a dense run at the 'agree @' size (points/s); see --full")


def reference_cases(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    config = load_config("plat").model
    decoder = SdfDecoder(config).eval()
    code = torch.randn(1, config.latent_dim) / math.sqrt(config.latent_dim)
    print(f"reference decoder: {count_parameters(decoder):,} parameters ({config.activation}, "
          f"{len(config.hidden_dims)} x {config.hidden_dims[0]})")
    units = CLAMP_VOXELS * 2 / (args.size - 1)
    kwargs = {"units_per_sdf": units, "max_trusted_sdf": 1.0, "coarse_cell": args.coarse_cell, "safety": args.safety,
              "margin": args.margin}
    rows = []
    for name, make in (("blob", blob_shape), ("filo", lambda size: filo_shape(size)[0])):
        shape_voxels = make(args.size)
        fn = with_network(shape_voxels, decoder, code)
        # Coordinate units per SDF unit do not depend on the output grid, so the same function
        # and settings serve the smaller dense check.
        rows.append(compare(name, fn, args.size, args.dense_size, args.full, kwargs))
        probe = torch.rand(200_000, 3) * 2 - 1
        t_shape, _ = timed(lambda: shape_voxels(probe))
        t_total, _ = timed(lambda: fn(probe))
        rows[-1]["shape_share"] = t_shape / t_total
    return rows


def trained_cases(args: argparse.Namespace) -> list[dict]:
    from cellgen.generate.latents import sample_latents, sequence_rotation
    from cellgen.generate.sequence import sdf_function
    from cellgen.generate.voxelize import units_per_sdf_for
    from cellgen.train.checkpoint import load_trained_model

    trained = load_trained_model(args.checkpoint)
    state = trained.checkpoint
    factor = float(state["sdf_factor_min"])
    kwargs = {
        "units_per_sdf": units_per_sdf_for(state["data_size"], factor),
        "max_trusted_sdf": trained.config.data.clamp / factor,
        "coarse_cell": args.coarse_cell,
        "safety": args.safety,
        "margin": args.margin,
    }
    codes = sample_latents("fitted", trained.model.latent_codes().numpy(), args.frames, seed=0).codes
    size = args.size if args.full else args.dense_size
    rows = []
    for i in range(args.frames):
        rotation = torch.tensor(sequence_rotation(0, i)[0], dtype=torch.float32)
        t = -1 + 2 * i / max(args.frames - 1, 1)
        fn = sdf_function(trained.model.decoder, torch.from_numpy(codes[i : i + 1]), rotation, t)
        rows.append(compare(f"trained {i}", fn, size, size, True, kwargs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="output cube side")
    parser.add_argument("--dense-size", type=int, default=128, help="cube side of the timed dense run without --full")
    parser.add_argument("--full", action="store_true", help="time dense at --size too (~4 min per case on 2 cores)")
    parser.add_argument("--coarse-cell", type=int, default=8)
    parser.add_argument("--safety", type=float, default=DEFAULT_SAFETY)
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="SDF units")
    parser.add_argument("--checkpoint", help="also compare on a trained model (experiment folder or checkpoint)")
    parser.add_argument("--frames", type=int, default=3, help="generated cells of the trained model")
    parser.add_argument("--skip-reference", action="store_true", help="only the trained-model comparison")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        if not args.skip_reference:
            rows = reference_cases(args)
            print_table(rows, args.size)
            for r in rows:
                print(f"  {r['case']}: shape term {100 * r['shape_share']:.0f} % of an evaluation's time, "
                      f"{100 * r['inside']:.2f} % of voxels inside")
        if args.checkpoint:
            trained = trained_cases(args)
            print_table(trained, args.size if args.full else args.dense_size)


if __name__ == "__main__":
    main()
