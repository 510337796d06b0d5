"""``cellgen train CONFIG -o EXP``: fit the auto-decoder with Ray Train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellgen.cli.app import command, info, is_verbose, print_result
from cellgen.cli.common import AddressOpt, GpuOpt, SetOpt, WorkersOpt, option_overrides
from cellgen.config import load_config


@command("train")
def train(
    config: Annotated[str, typer.Argument(help="Config YAML, or a preset name: plat, cele, filo, demo.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Experiment folder (created).")],
    data: Annotated[
        Optional[Path], typer.Option("--data", "-d", help="Prepared data folder; default: the one EXP was trained on.")
    ] = None,
    workers: WorkersOpt = None,
    gpu: GpuOpt = None,
    address: AddressOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in EXP.")] = False,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Train to this many epochs.")] = None,
    dashboard_host: Annotated[
        str, typer.Option("--dashboard-host", help="Where an embedded Ray binds its dashboard.")
    ] = "127.0.0.1",
    set_: SetOpt = None,
) -> None:
    """Train the SIREN auto-decoder on prepared data (checkpoints, metrics.csv, loss.png in EXP)."""
    from cellgen.train.ray_job import train_experiment

    options = {"workers": workers, "use_gpu": gpu, "epochs": epochs}
    overrides = [*(set_ or []), *option_overrides("train", options)]
    cfg = load_config(config, overrides)
    if dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        info(f"cellgen: warning: the Ray dashboard will listen on {dashboard_host}, beyond this machine's loopback")
    info(f"cellgen: training {cfg.name} into {output} with {cfg.train.workers} worker(s) for {cfg.train.epochs} epochs")
    outcome = train_experiment(cfg, output, data, resume, address, dashboard_host, verbose=is_verbose())
    if outcome.exit_code:
        info(f"cellgen: stopped at epoch {outcome.epoch}; checkpoint {outcome.checkpoint}; continue with --resume")
        raise typer.Exit(outcome.exit_code)
    print_result(f"trained {outcome.epoch} epochs; checkpoint {outcome.checkpoint}")
