"""``cellgen export EXP OUT.pt``: a trained model as one small shareable file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellgen.cli.app import command, print_result
from cellgen.cli.common import ForceOpt
from cellgen.errors import OutputError


@command("export")
def export(
    exp: Annotated[Path, typer.Argument(help="Experiment folder (its newest checkpoint) or one checkpoint file.", metavar="EXP")],
    out: Annotated[Path, typer.Argument(help="The model file to write, e.g. my-cells.pt.", metavar="OUT")],
    force: ForceOpt = False,
) -> None:
    """Export a trained model (weights, config, what generation needs; no optimiser state, no
    paths) for `cellgen generate --model OUT.pt`."""
    from cellgen.train.checkpoint import export_model

    if out.exists() and not out.is_dir() and not force:
        raise OutputError("the model file exists", out, "choose another name, or add --force to replace it")
    written = export_model(exp, out)
    print_result(f"{written} ({written.stat().st_size / 1e6:.2f} MB): cellgen generate --model {written} OUT")
