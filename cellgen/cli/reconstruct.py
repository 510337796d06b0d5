"""``cellgen reconstruct EXP OUT``: voxelize the learned shapes; optionally Dice vs the data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info, print_result
from cellgen.cli.common import ForceOpt, GpuOpt, SizeOpt


@command("reconstruct")
def reconstruct(
    exp: Annotated[Path, typer.Argument(help="Experiment folder (newest checkpoint) or a checkpoint file.")],
    out: Annotated[Path, typer.Argument(help="Output folder: seq_XXX/mask_tYYY.tif.")],
    size: SizeOpt = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Time points per sequence.")] = None,
    sequences: Annotated[
        Optional[str], typer.Option("--sequences", help="Training sequence indices, e.g. 0,3,5 (default all).")
    ] = None,
    compare: Annotated[
        Optional[Path], typer.Option("--compare", help="Prepared DATA folder: Dice against its SDFs (sdf <= 0).")
    ] = None,
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", help="Use this checkpoint instead of EXP's newest.")
    ] = None,
    gpu: GpuOpt = None,
    force: ForceOpt = False,
) -> None:
    """Reconstruct the training sequences from their learned codes at any size and frame count."""
    from cellgen.config import validate_config
    from cellgen.train.reconstruct import default_device, parse_indices
    from cellgen.train.reconstruct import reconstruct as run

    grid = validate_config({"generate": {"size": size}}, "--size").generate.size if size is not None else None
    result = run(checkpoint or exp, out, grid, frames, parse_indices(sequences), compare,
                 device=default_device(gpu), force=force)
    info(f"cellgen: {result.frames_written} frame(s) written to {out}")
    for s, value in result.dice.items():
        print_result(f"seq_{s:03d}  dice {value:.4f}")
    if result.mean_dice is not None:
        print_result(f"mean dice {result.mean_dice:.4f}  ({out / 'dice.csv'})")
