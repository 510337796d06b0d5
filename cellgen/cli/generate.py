"""``cellgen generate EXP OUT`` (or ``--model NAME OUT``): sample new cells from a trained model
and write their masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info, print_result
from cellgen.cli.common import AddressOpt, ForceOpt, GpuOpt, SeedOpt, SetOpt, SizeOpt, WorkersOpt
from cellgen.errors import ConfigError


@command("generate")
def generate(
    exp: Annotated[
        Optional[Path],
        typer.Argument(help="Experiment folder (config.yaml, checkpoints/); left out with --model.", metavar="EXP", show_default=False),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Argument(help="Output folder: OUT/seq_000/mask_t000.tif ... and OUT/manifest.json.", metavar="OUT", show_default=False),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", metavar="NAME", help="A shipped model (demo-plat, demo-cele, demo-filo) or an exported .pt file, instead of EXP."),
    ] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Number of sequences.")] = None,
    size: SizeOpt = None,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Time points per sequence, spread over the learned time range.")] = None,
    strategy: Annotated[
        Optional[str], typer.Option("--strategy", help="Latent codes: local, fitted, mix, normal, noise or interpolate (default: the config's; presets use local).")
    ] = None,
    sigma: Annotated[
        Optional[float],
        typer.Option("--sigma", help="Noise scale (normal: 0.001, noise: 1e-4; fitted: spread factor, 1; local: share of the codes' spread around a learned code, 0.5; mix: weight half-width around 1/2, 0.2)."),
    ] = None,
    between: Annotated[
        Optional[tuple[int, int]],
        typer.Option("--between", help="Interpolate: morph from learned sequence I to J.", metavar="I J"),
    ] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Interpolate: number of codes along the morph.")] = None,
    rotate: Annotated[
        Optional[bool], typer.Option("--rotate/--no-rotate", help="Random orientation, uniform over SO(3).")
    ] = None,
    seed: SeedOpt = None,
    workers: WorkersOpt = None,
    gpu: GpuOpt = None,
    address: AddressOpt = None,
    voxelizer: Annotated[
        Optional[str], typer.Option("--voxelizer", help="adaptive (coarse-to-fine, default) or dense (every voxel).")
    ] = None,
    sdf: Annotated[bool, typer.Option("--sdf", help="Also write each sequence's SDF video (sdf.h5).")] = False,
    mesh: Annotated[bool, typer.Option("--mesh", help="Also write a surface mesh per frame (mesh_t000.ply).")] = False,
    force: ForceOpt = False,
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", help="Use this checkpoint instead of EXP's newest.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Generate new 3D+t cells: masks, MIPs and a preview per sequence, and a manifest.

    From a trained experiment (EXP OUT) or a model file (--model NAME OUT)."""
    from cellgen.generate.stage import GenerateRequest, generate_cells, resolve_generate_config

    exp, out, checkpoint = _source(exp, out, model, checkpoint)
    overrides = list(set_ or [])
    for key, value in (
        ("n", n), ("size", size), ("frames", frames), ("strategy", strategy), ("sigma", sigma),
        ("seed", seed), ("workers", workers), ("voxelizer", voxelizer),
    ):
        if value is not None:
            overrides.append(f"generate.{key}={value}")
    if rotate is not None:
        overrides.append(f"generate.rotate={str(rotate).lower()}")
    if gpu is not None:
        overrides.append(f"generate.use_gpu={str(gpu).lower()}")
    ckpt, settings = resolve_generate_config(
        exp, checkpoint, overrides, between=between, steps=steps, n_given=n is not None
    )
    info(
        f"cellgen: generating {settings.n} sequence(s) x {settings.frames} frame(s) at "
        f"{'x'.join(map(str, settings.size))} ({settings.strategy}, {settings.voxelizer}) into {out}"
    )
    summary = generate_cells(
        GenerateRequest(
            checkpoint=ckpt, out=out, settings=settings, between=between, address=address,
            write_sdf=sdf, write_mesh=mesh, force=force,
        )
    )
    if summary.skipped:
        info(f"cellgen: {summary.skipped} sequence(s) were already complete")
    if summary.debris_frames:
        info(
            f"cellgen: removed small disconnected pieces in {summary.debris_frames} frame(s) "
            f"(below {settings.debris_fraction:g} of the cell; --set generate.debris_fraction=0 keeps them)"
        )
    print_result(
        f"{summary.rendered} sequence(s), {summary.frames_rendered} frame(s) rendered in {summary.seconds:.1f} s "
        f"({summary.evaluations} network evaluations) -> {out}"
    )


def _source(exp: Path | None, out: Path | None, model: str | None, checkpoint: Path | None) -> tuple[Path, Path, Path | None]:
    """(experiment, OUT, checkpoint) from the positionals and --model: with --model the one
    positional is OUT and the model file stands in for both experiment and checkpoint."""
    if model is None:
        if out is None:
            raise ConfigError("generate needs EXP and OUT, only one folder was given", exp, "cellgen generate EXP OUT, or --model NAME OUT")
        return exp, out, checkpoint
    if out is not None:
        raise ConfigError("give EXP or --model, not both", f"{exp} and --model {model}", f"cellgen generate --model {model} OUT")
    if exp is None:
        raise ConfigError("generate needs an output folder", None, f"cellgen generate --model {model} OUT")
    if checkpoint is not None:
        raise ConfigError("give --checkpoint or --model, not both", checkpoint, "--model names one model file already")
    from cellgen.models import resolve

    path = resolve(model)
    return path, exp, path
