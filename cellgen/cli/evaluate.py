"""``cellgen evaluate``: shape descriptors of real vs synthetic sequences, and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info, print_result
from cellgen.cli.common import ForceOpt, WorkersOpt, existing_dir, parse_voxel_size


@command("evaluate")
def evaluate_command(
    real: Annotated[
        Path, typer.Option("--real", help="Folder of real mask sequences (seq_000/mask_t000.tif ... or 4D TIFFs).")
    ],
    synthetic: Annotated[
        Path, typer.Option("--synthetic", help="Folder of synthetic (generated or reconstructed) sequences.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (created).")],
    voxel_size: Annotated[
        Optional[str], typer.Option("--voxel-size", help="Voxel size z,y,x for both sets (default: TIFF metadata).")
    ] = None,
    workers: WorkersOpt = None,
    pairs: Annotated[
        bool,
        typer.Option("--pairs", help="Also Dice, IoU, Hausdorff of same-named sequences (e.g. reconstructions)."),
    ] = False,
    compare_size: Annotated[
        int, typer.Option("--compare-size", min=4, help="Largest grid side for sequence-to-sequence Dice.")
    ] = 64,
    force: ForceOpt = False,
) -> None:
    """Compare synthetic cells with real ones: descriptors, distances, memorisation, diversity."""
    from cellgen.evaluate.report import evaluate

    existing_dir(real, "real mask folder")
    existing_dir(synthetic, "synthetic mask folder")
    summary = evaluate(
        real,
        synthetic,
        out,
        voxel_size=parse_voxel_size(voxel_size),
        workers=workers or 1,
        pairs=pairs,
        compare_size=compare_size,
        force=force,
    )
    memo = summary["memorisation"]
    info(
        f"{summary['real']['sequences']} real and {summary['synthetic']['sequences']} synthetic sequences; "
        f"{memo['near_copies']} near copies; diversity real {summary['diversity']['real']:.3f}, "
        f"synthetic {summary['diversity']['synthetic']:.3f}"
    )
    print_result(str(Path(out) / "report.md"))

