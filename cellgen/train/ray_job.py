"""The Ray Train glue: ``train_func`` runs on every worker, ``run_training`` is the driver.

The driver only checks the cluster, builds a ``TorchTrainer`` (DDP over ``train.workers``
workers; gloo on CPUs, NCCL on GPUs) and calls ``fit()``. Everything else, the loop, the
checkpoints and the metrics, lives in Ray-free modules (``worker``, ``loop``, ``experiment``).

Checkpoints: rank 0 writes ONE file under EXP/checkpoints/ and reports to Ray Train a tiny
checkpoint folder that only points at it, so Ray never copies model weights around. After a
worker dies Ray restarts the group, and each worker resumes from the newer of the checkpoint
Ray hands back and the newest file in EXP/checkpoints (Ray can be one behind after a hard death).

On a multi-node cluster EXP and DATA must be on a file system every node sees (as under Slurm):
workers read the shards and rank 0 writes the checkpoints and metrics.csv there directly.

Preemption: SIGTERM (or Ctrl-C) on the driver creates EXP/.stop; the workers notice it after
their current step, agree on it across ranks, rank 0 writes a checkpoint, and the driver exits
with 143 (130 for Ctrl-C). Under Slurm, send the signal to the batch shell only
(``sbatch --signal=B:TERM@120``) and let it forward to the driver.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellgen.errors import CellgenError, ClusterError
from cellgen.layout import ExperimentDir
from cellgen.config import CellgenConfig
from cellgen.train.experiment import TrainPlan, plan_training, plot_loss, write_run_files
from cellgen.train.progress import ProgressWatcher
from cellgen.train.worker import FAULT_EPOCH, FAULT_MARKER, WorkerContext, run_worker

POINTER = "cellgen_checkpoint.json"
RUN_NAME = "train"
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_S = "0.25"
"""Ray Train's controller takes one report per poll (default every 2 s), which would cap short
epochs at one per 2 s; polling every 0.25 s keeps per-epoch reports cheap. A user setting wins."""
EXIT_SIGTERM = 143
EXIT_SIGINT = 130


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


def _restored_file() -> Path | None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        pointer = Path(folder) / POINTER
        if not pointer.is_file():
            return None
        return Path(json.loads(pointer.read_text())["file"])


def _report(metrics: dict[str, Any], written: Path | None) -> None:
    import ray.train

    if written is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="cellgen-ckpt-") as folder:
        (Path(folder) / POINTER).write_text(json.dumps({"epoch": metrics["epoch"], "file": str(written)}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _quiet_per_report_logs() -> None:
    """Ray Train 2.x logs every report at INFO from a logger named after its source file (so
    LoggingConfig does not reach it): two lines per epoch and worker. Raise that logger's level."""
    for name in list(logging.root.manager.loggerDict):
        if name.endswith(os.path.join("execution", "context.py")) and "ray" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    plan = TrainPlan.from_dict(config["plan"])
    if plan.quiet:
        _quiet_per_report_logs()
    context = ray.train.get_context()
    stop_file = ExperimentDir(Path(plan.exp)).stop_request
    run_worker(
        plan,
        WorkerContext(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),
            wrap=ray.train.torch.prepare_model,
            report=_report,
            restored=_restored_file(),
            should_stop=stop_file.exists,
        ),
    )


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    epoch: int
    """Epochs completed (the newest checkpoint's epoch)."""
    checkpoint: Path | None
    exit_code: int
    """0 when finished; 143 / 130 when stopped by SIGTERM / Ctrl-C after checkpointing."""
    metrics: dict[str, Any]


def connect(address: str | None, dashboard_host: str = "127.0.0.1", quiet: bool = False) -> bool:
    """Join the cluster at ``address``, or reuse/start an embedded local Ray. True if started here.

    ``quiet`` (the generation pool on its own): no dashboard and no worker logs on the driver's
    terminal, which the progress bar owns."""
    import ray

    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_S)  # read by the driver, passed to the controller
    # Ray Train's run state in the dashboard (Train tab, /api/train/v2/runs) is off unless asked
    # for; set before ray.init so the runtime's processes inherit it.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    if ray.is_initialized():
        return False
    options: dict[str, Any] = (
        {"log_to_driver": False, "configure_logging": False, "include_dashboard": False} if quiet else {"log_to_driver": True}
    )
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # "local": always a fresh embedded instance, never some other Ray running on this host.
            ray.init(address="local", **({} if quiet else {"dashboard_host": dashboard_host}), **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError("cannot connect to the Ray cluster", address or "local",
                           f"{first[:120]}; start it with 'ray start --head' or check --address") from None
    return True


def disconnect() -> None:
    """Shut down the Ray runtime that ``connect`` started."""
    import ray

    ray.shutdown()


def check_resources(plan: TrainPlan) -> None:
    """Refuse a run the cluster cannot place (it would wait forever)."""
    import ray

    cfg = plan.cellgen_config.train
    available = ray.cluster_resources()
    cpus_needed = cfg.workers * cfg.cpus_per_worker
    if available.get("CPU", 0) < cpus_needed:
        raise ClusterError(
            f"{cfg.workers} workers x {cfg.cpus_per_worker} CPUs need {cpus_needed} CPUs, the Ray cluster has "
            f"{available.get('CPU', 0):g}", None, "use fewer --workers or set train.cpus_per_worker lower")
    if cfg.use_gpu and available.get("GPU", 0) < cfg.workers:
        raise ClusterError(f"{cfg.workers} GPU workers requested, the Ray cluster has {available.get('GPU', 0):g} GPUs",
                           None, "use --no-gpu or fewer --workers")


class _StopOnSignal:
    """SIGTERM / first Ctrl-C: ask the workers to checkpoint and stop (a second Ctrl-C aborts)."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        self.stop_file.unlink(missing_ok=True)  # a stale request from an earlier run
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        self.stop_file.touch()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.stop_file.unlink(missing_ok=True)


class TrainingFailed(CellgenError):
    """The workers failed more often than ``train.max_failures`` allows."""

    exit_code = 1

    def __init__(self, err: Exception, max_failures: int):
        cause = _root_message(err)
        super().__init__(f"training failed (after {max_failures} restarts allowed)", cause,
                         "see the worker log above; rerun with --resume to continue from the last checkpoint")


def _root_message(err: BaseException) -> str:
    """The last line of the innermost worker error (Ray wraps it several times)."""
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(err).__name__


def _trainer_class() -> type:
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        """TorchTrainer without its own SIGINT handler, which aborts the run at once (workers
        killed, no checkpoint): cellgen's handler lets the workers checkpoint first. A second
        Ctrl-C still aborts immediately."""

        def _register_sigint_handler(self, controller: Any) -> None:
            return None

    return Trainer


def run_training(plan: TrainPlan, address: str | None = None, dashboard_host: str = "127.0.0.1") -> TrainOutcome:
    """Train ``plan`` with Ray Train; blocks until finished, failed or stopped by a signal."""
    import ray
    import ray.exceptions
    import ray.train

    cfg = plan.cellgen_config.train
    exp = ExperimentDir(Path(plan.exp))
    plan.faults = {k: os.environ[k] for k in (FAULT_EPOCH, FAULT_MARKER) if k in os.environ}
    started_here = connect(address, dashboard_host)
    try:
        check_resources(plan)
        write_run_files(plan)
        trainer = _trainer_class()(
            train_func,
            train_loop_config={"plan": plan.to_dict()},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
            ),
            run_config=ray.train.RunConfig(
                name=RUN_NAME,
                storage_path=str(exp.ray_dir),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                logging_config=ray.train.LoggingConfig(log_level="WARNING" if plan.quiet else "INFO"),
            ),
        )
        with _StopOnSignal(exp.stop_request) as stop, ProgressWatcher(exp.metrics, cfg.epochs, plan.resume_epoch):
            try:
                result = trainer.fit()
            except ray.train.TrainingFailedError as err:
                raise TrainingFailed(err, cfg.max_failures) from None
            except ray.exceptions.RayError as err:  # the cluster itself went away (e.g. `ray stop`)
                raise ClusterError("lost the Ray cluster during training", _root_message(err)[:160],
                                   "rerun with --resume to continue from the last checkpoint") from None
        plot_loss(exp.metrics, exp.loss_plot)
        latest = exp.checkpoints()
        exit_code = 0
        if stop.signal is not None:
            exit_code = EXIT_SIGINT if stop.signal == signal.SIGINT else EXIT_SIGTERM
        return TrainOutcome(
            epoch=latest[-1][0] if latest else 0,
            checkpoint=latest[-1][1] if latest else None,
            exit_code=exit_code,
            metrics=dict(result.metrics or {}),
        )
    finally:
        if started_here:
            ray.shutdown()


def train_experiment(
    config: CellgenConfig,
    exp: Path,
    data: Path | None = None,
    resume: bool = False,
    address: str | None = None,
    dashboard_host: str = "127.0.0.1",
    verbose: bool = False,
) -> TrainOutcome:
    """The ``cellgen train`` stage: check everything, then train with Ray Train."""
    plan = plan_training(config, exp, data, resume)
    plan.quiet = not verbose
    return run_training(plan, address, dashboard_host)
