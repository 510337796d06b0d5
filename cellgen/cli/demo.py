"""``cellgen demo [OUT]``: phantoms -> prepare -> train -> reconstruct -> generate -> evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info, print_result
from cellgen.cli.common import AddressOpt, SeedOpt, SetOpt


@command("demo")
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for everything the demo makes.")] = Path("out/demo"),
    lines: Annotated[str, typer.Option("--lines", help="Cell lines, comma-separated: plat,cele,filo.")] = "plat,cele,filo",
    sequences: Annotated[int, typer.Option("--sequences", min=1, help="Phantom sequences per line.")] = 6,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames per phantom sequence.")] = 8,
    config: Annotated[str, typer.Option("--config", "-c", help="Config preset or YAML.")] = "demo",
    seed: SeedOpt = None,
    address: AddressOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the whole chain on procedural phantoms of each cell line (no downloads, CPU is fine)."""
    from cellgen.demo import DemoRequest, run_demo

    request = DemoRequest(
        out=out, lines=[part.strip() for part in lines.split(",") if part.strip()], sequences=sequences,
        frames=frames, seed=seed or 0, config=config, overrides=list(set_ or []), address=address,
    )
    summary = run_demo(request, say=info)
    print_result("")
    for r in summary.lines:
        dice = f"{r.reconstruction_dice:.3f}" if r.reconstruction_dice is not None else "-"
        print_result(f"{r.line}: reconstruction Dice {dice}; new cells in {r.synthetic}; report {r.report}")
    print_result(f"summary: {summary.out / 'SUMMARY.md'}  ({summary.seconds / 60:.1f} min)")
