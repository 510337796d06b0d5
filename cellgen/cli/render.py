"""``cellgen render MASKS OUT``: synthetic fluorescence microscopy images paired with masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info, print_result
from cellgen.cli.common import ConfigOpt, ForceOpt, SeedOpt, SetOpt, WorkersOpt, option_overrides

ModeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--mode",
        help="mip: max-intensity projection along Z; slice: in-focus slice through the cell; "
        "3d: the stack; all: the three. Default: render.mode (mip).",
    ),
]
FigureOpt = Annotated[
    Optional[Path], typer.Option("--figure", help="Also write a PNG of a few image/mask pairs here.")
]


@command("render")
def render(
    masks: Annotated[Path, typer.Argument(help="Folder of mask sequences: MASKS/seq_000/mask_t000.tif ...")],
    out: Annotated[
        Path, typer.Argument(help="Output: OUT/<mip|slice|3d>/seq_000/image_t000.tif + mask_t000.tif, OUT/render.json.")
    ],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    mode: ModeOpt = None,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
    figure: FigureOpt = None,
) -> None:
    """Render synthetic fluorescence images of mask sequences (texture, PSF, background,
    bleaching, camera noise), each written next to its matching mask."""
    from cellgen.config import load_config
    from cellgen.render.figure import figure_from_render
    from cellgen.render.stage import RenderRequest, render_masks

    overrides = list(set_ or []) + option_overrides("render", {"seed": seed, "mode": mode, "workers": workers})
    settings = load_config(config, overrides).render
    summary = render_masks(RenderRequest(masks=masks, out=out, settings=settings, force=force, report=info))
    if summary.skipped:
        info(f"cellgen: {summary.skipped} of {summary.frames} frame(s) were already complete")
    if figure is not None:
        info(f"cellgen: figure {figure_from_render(out, figure)}")
    print_result(
        f"{summary.rendered} frame(s) of {summary.sequences} sequence(s) rendered in {summary.seconds:.1f} s "
        f"({', '.join(summary.views)}) -> {out}"
    )
