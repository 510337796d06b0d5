"""``cellgen prepare MASKS DATA``: mask sequences -> SDF volumes -> point shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info
from cellgen.cli.common import ConfigOpt, ForceOpt, SetOpt, SizeOpt, WorkersOpt, option_overrides, parse_voxel_size
from cellgen.config import load_config


@command("prepare")
def prepare_command(
    masks: Annotated[
        Path, typer.Argument(help="Folder of mask sequences: sub-folders of *_t000.tif files, or 4D TIFFs.")
    ],
    data: Annotated[Path, typer.Argument(help="Output data folder (SDF volumes, point shards, manifest).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    size: SizeOpt = None,
    clamp: Annotated[Optional[float], typer.Option(help="Clamp outside distances at this many voxels.")] = None,
    label: Annotated[Optional[int], typer.Option(help="Use only this label value as the cell.")] = None,
    largest_only: Annotated[
        bool, typer.Option("--largest-only", help="Keep only the largest connected component (reference).")
    ] = False,
    voxel_size: Annotated[
        Optional[str], typer.Option("--voxel-size", help="Input voxel size z,y,x (default: TIFF metadata).")
    ] = None,
    scale: Annotated[Optional[float], typer.Option(help="Rescale the cells by this factor, e.g. 0.5.")] = None,
    shards: Annotated[Optional[int], typer.Option(min=1, help="Number of point shard files.")] = None,
    workers: WorkersOpt = None,
    force: ForceOpt = False,
) -> None:
    """Turn time-lapse masks into signed distance volumes and sampled training points.

    Options given here override the config's data section, which overrides the defaults
    (the reference numbers). Rerunning skips finished sequences.
    """
    from cellgen.data.prepare import prepare

    voxels = parse_voxel_size(voxel_size)
    options = {
        "size": size,
        "clamp": clamp,
        "label": label,
        "voxel_size": None if voxels is None else list(voxels),
        "scale": scale,
        "shards": shards,
        "workers": workers,
        "largest_only": True if largest_only else None,
    }
    overrides = list(set_ or []) + option_overrides("data", options)
    cfg = load_config(config, overrides)
    result = prepare(masks, data, cfg.data, force=force)
    manifest = result.manifest
    done = f"{len(result.computed)} computed, {len(result.up_to_date)} up to date"
    if not result.shards_rebuilt:
        done = "all up to date"
    info(
        f"prepared {len(manifest['sequences'])} sequences, {manifest['n_frames']} frames ({done}) -> {data}: "
        f"{len(manifest['shards'])} shards, {manifest['n_points']} points"
    )


