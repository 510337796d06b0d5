"""``cellgen fit EXP MASKS OUT``: codes (and rotations) of unseen cells, fitted to the frozen decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info, print_result
from cellgen.cli.common import CheckpointOpt, ForceOpt, GpuOpt, SeedOpt, SizeOpt, parse_size


@command("fit")
def fit(
    exp: Annotated[Path, typer.Argument(help="Experiment folder (newest checkpoint) or a checkpoint file.")],
    masks: Annotated[Path, typer.Argument(help="Folder of mask sequences the model never saw.")],
    out: Annotated[Path, typer.Argument(help="Output folder: seq_XXX/mask_tYYY.tif, fit.json, fit.csv.")],
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Adam steps per sequence.")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of code and angles.")] = 2e-2,
    rotations: Annotated[
        Optional[bool],
        typer.Option("--rotations/--no-rotations",
                     help="Fit a rotation per sequence (default: when the model learned rotations)."),
    ] = None,
    restarts: Annotated[int, typer.Option("--restarts", min=1, help="Starts optimised before the best goes on.")] = 4,
    seed: SeedOpt = None,
    size: SizeOpt = None,
    checkpoint: CheckpointOpt = None,
    gpu: GpuOpt = None,
    force: ForceOpt = False,
) -> None:
    """Fit latent codes (and rotations) of new mask sequences to a trained model; Dice vs the input."""
    from cellgen.train.fit import FitSettings, fit_sequences
    from cellgen.train.reconstruct import default_device

    settings = FitSettings(iterations=iterations, lr=lr, rotations=rotations, restarts=restarts, seed=seed or 0)
    summary = fit_sequences(exp, masks, out, settings, checkpoint=checkpoint, size=parse_size(size),
                            device=default_device(gpu), force=force)
    info(f"cellgen: {len(summary.fitted)} sequence(s) fitted, {len(summary.records) - len(summary.fitted)} "
         f"already done, in {out}")
    for record in summary.records:
        print_result(f"{record['sequence']}  {record['name']}  dice {record['dice']:.4f}  loss {record['loss']:.4g}")
    print_result(f"mean dice {summary.mean_dice:.4f}  ({out / 'fit.csv'})")
