"""``cellgen phantoms``: procedural time-lapse cells, so the tool runs without downloaded data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellgen.cli.app import command, info, print_result
from cellgen.cli.common import ForceOpt, SeedOpt, WorkersOpt
from cellgen.errors import ConfigError

LineOpt = Annotated[
    str,
    typer.Option(
        "--line",
        help="Cell line to imitate: plat (fast, smooth deformation), cele (growth and division), "
        "filo (growing, branching filopodia).",
    ),
]
GridOpt = Annotated[str, typer.Option("--size", help="Grid size: one number (cube) or z,y,x, e.g. 48,64,64.")]
VoxelOpt = Annotated[
    str, typer.Option("--voxel-size", help="Voxel size z,y,x in micrometres (or one number), stored in the TIFFs.")
]


@command("phantoms")
def phantoms(
    out: Annotated[Path, typer.Argument(help="Output folder: OUT/seq_000/mask_t000.tif ..., OUT/phantoms.json.")],
    line: LineOpt,
    n: Annotated[int, typer.Option("--n", help="Number of sequences.")] = 33,
    frames: Annotated[int, typer.Option("--frames", help="Time points per sequence.")] = 30,
    size: GridOpt = "256",
    seed: SeedOpt = None,
    voxel_size: VoxelOpt = "1",
    workers: WorkersOpt = None,
    force: ForceOpt = False,
) -> None:
    """Write procedural 3D+t cell masks in the published layout (default 33 x 30 frames x 256^3)."""
    from cellgen.data.phantoms import write_phantoms

    write_phantoms(
        out,
        line=line,
        n=n,
        frames=frames,
        size=_triple(size, "--size", int),
        seed=0 if seed is None else seed,
        voxel_size=_triple(voxel_size, "--voxel-size", float),
        workers=workers or 1,
        force=force,
        report=info,
    )
    print_result(str(out))


def _triple(text: str, option: str, kind: type) -> tuple:
    """``"64"`` -> (64, 64, 64); ``"32,64,64"`` -> (32, 64, 64)."""
    try:
        values = tuple(kind(part.strip()) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ConfigError(f"{option} must be one number or three separated by commas", text, "e.g. 64 or 32,64,64")
    return values
