"""Option declarations shared by several commands (declared once, used everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ConfigOpt = Annotated[
    Optional[str],
    typer.Option("--config", "-c", help="Config YAML, or a preset name: plat, cele, filo, demo."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config value, e.g. --set model.omega=20 (repeatable)."),
]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Parallel workers.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo finished work / overwrite.")]
GpuOpt = Annotated[Optional[bool], typer.Option("--gpu/--no-gpu", help="Use GPUs.")]
AddressOpt = Annotated[
    Optional[str],
    typer.Option("--address", help="Join this Ray cluster (host:port or 'auto'); default: embedded local Ray."),
]
SizeOpt = Annotated[
    Optional[str], typer.Option("--size", help="Grid size: one number (cube) or z,y,x, e.g. 256,256,32.")
]


def existing_dir(path: Path, what: str) -> Path:
    from cellgen.errors import InputDataError

    if not path.exists():
        raise InputDataError(f"{what} not found", path, "check the path")
    if not path.is_dir():
        raise InputDataError(f"{what} is not a folder", path)
    return path


def option_overrides(section: str, values: dict[str, object]) -> list[str]:
    """``--set``-style overrides for the command-line options that were given (not None)."""
    overrides = []
    for key, value in values.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        overrides.append(f"{section}.{key}={text}")
    return overrides


def parse_voxel_size(text: str | None) -> tuple[float, float, float] | None:
    """``"2,0.5,0.5"`` -> (2.0, 0.5, 0.5) (z, y, x); one number means isotropic; None stays None."""
    from cellgen.errors import ConfigError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ConfigError(
            "--voxel-size must be one positive number or three (z,y,x)", text, "e.g. --voxel-size 2,0.5,0.5"
        )
    return (values[0], values[1], values[2])


CheckpointOpt = Annotated[
    Optional[Path], typer.Option("--checkpoint", help="Use this checkpoint instead of EXP's newest.")
]


def parse_size(text: str | None) -> tuple[int, int, int] | None:
    """``--size`` text (one number or z,y,x) -> a grid (validated like generate.size); None stays None."""
    from cellgen.config import validate_config

    return validate_config({"generate": {"size": text}}, "--size").generate.size if text is not None else None
