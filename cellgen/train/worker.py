"""What one training worker does, without Ray: build the model, restore the newest checkpoint,
run epochs, write checkpoints (rank 0) and report. ``ray_job.train_func`` supplies the Ray parts
through ``WorkerContext``; tests and benchmarks can run it in-process with the defaults.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellgen.data.shards import ShardReader
from cellgen.errors import CellgenError
from cellgen.layout import ExperimentDir
from cellgen.model.autodecoder import AutoDecoder
from cellgen.train.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from cellgen.train.experiment import (
    TrainPlan,
    append_metrics,
    checkpoint_state,
    prune_checkpoints,
    truncate_metrics,
)
from cellgen.train.loop import build_optimizer, configure_torch, train_epoch, unwrap

log = logging.getLogger(__name__)

FAULT_EPOCH = "CELLGEN_FAULT_EPOCH"
FAULT_MARKER = "CELLGEN_FAULT_MARKER"
"""Test-only fault injection: the worker of rank 1 (rank 0 when alone) dies with ``os._exit(1)``
at the start of epoch CELLGEN_FAULT_EPOCH, once: the marker file records that it fired."""


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap: Callable[[nn.Module], nn.Module] = lambda model: model
    """Wraps the model for data parallelism (DDP)."""
    report: Callable[[dict[str, Any], Path | None], None] = lambda metrics, checkpoint: None
    """Called by every rank after every epoch, with the checkpoint rank 0 wrote (else None)."""
    restored: Path | None = None
    """The checkpoint the cluster handed back after a restart, if any."""
    should_stop: Callable[[], bool] | None = None
    """Polled after every step: a preemption or Ctrl-C asks the run to checkpoint and stop."""


def newest_checkpoint(candidates: list[Path | None]) -> dict | None:
    """The loadable checkpoint with the highest epoch. After a hard worker death Ray may hand
    back one checkpoint older than the newest one rank 0 wrote, so both are considered."""
    best = None
    for path in {Path(p) for p in candidates if p is not None}:
        try:
            state = load_checkpoint(path)
        except CellgenError as err:
            log.warning("ignoring checkpoint %s: %s", path, err.message)
            continue
        if best is None or state["epoch"] > best["epoch"]:
            best = state
    return best


def _maybe_fail(plan: TrainPlan, epoch: int, rank: int, world_size: int) -> None:
    target = plan.faults.get(FAULT_EPOCH)
    marker = plan.faults.get(FAULT_MARKER)
    if target is None or marker is None or int(target) != epoch or rank != min(1, world_size - 1):
        return
    if not os.path.exists(marker):
        Path(marker).write_text(f"rank {rank} died at epoch {epoch}\n")
        os._exit(1)


def run_worker(plan: TrainPlan, ctx: WorkerContext) -> dict[str, Any] | None:
    """Train from the newest checkpoint to ``train.epochs``; returns the last epoch's metrics."""
    config = plan.cellgen_config
    cfg = config.train
    exp = ExperimentDir(Path(plan.exp))
    configure_torch(cfg, ctx.device, cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    model = AutoDecoder(config.model, len(plan.data.sequences)).to(ctx.device)
    optimizer = build_optimizer(model, cfg)

    start_epoch = 0
    state = newest_checkpoint([ctx.restored, exp.latest_checkpoint()])
    if state is not None:
        check_compatible(state, config, plan.data.settings_hash, exp.checkpoints_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        if ctx.rank == 0:
            print(f"cellgen: continuing from epoch {start_epoch}", file=sys.stderr, flush=True)
        del state
    if cfg.compile:
        model.decoder.compile()
    trained = ctx.wrap(model)

    reader = ShardReader(plan.data.shards, ctx.rank, ctx.world_size)
    if ctx.rank == 0:
        exp.root.mkdir(parents=True, exist_ok=True)
        truncate_metrics(exp.metrics, start_epoch)
    metrics = None
    for epoch in range(start_epoch, cfg.epochs):
        _maybe_fail(plan, epoch, ctx.rank, ctx.world_size)
        batches = reader.iter_batches(cfg.frames_per_batch, epoch, cfg.seed)
        metrics = train_epoch(trained, optimizer, batches, epoch, cfg, ctx.device, ctx.should_stop)
        stopped = metrics["stopped"]
        # A stop ends the epoch early: its checkpoint counts only the epochs completed so far.
        done = epoch if stopped else epoch + 1
        metrics["epoch"] = done
        written = None
        if ctx.rank == 0 and (stopped or done % cfg.checkpoint_every == 0 or done == cfg.epochs):
            written = exp.checkpoint(done)
            save_checkpoint(written, checkpoint_state(plan, done, unwrap(trained).state_dict(), optimizer.state_dict()))
            prune_checkpoints(exp, cfg.keep_checkpoints)
        if ctx.rank == 0 and not stopped:
            append_metrics(exp.metrics, metrics)
        ctx.report(metrics, written)
        if stopped:
            break
    return metrics
