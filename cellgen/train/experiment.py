"""Everything about a training run that is not Ray: what data and which experiment folder, the
checks done before any compute is spent, checkpoint bookkeeping, metrics.csv and the loss plot.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cellgen import __version__
from cellgen.config import CellgenConfig, config_from_dict, dump_config
from cellgen.data.shards import ShardReader
from cellgen.errors import CheckpointError, InputDataError, OutputError
from cellgen.io import ensure_writable_dir, read_json, write_json_atomic, write_text_atomic
from cellgen.layout import DataDir, ExperimentDir
from cellgen.train.checkpoint import check_compatible, load_checkpoint

METRIC_COLUMNS = ("epoch", "sdf_loss", "code_loss", "lr_decoder", "lr_codes", "lr_rotations",
                  "points", "seconds", "points_per_s")


@dataclass
class TrainingData:
    """What training needs from a prepared data folder (its manifest.json)."""

    root: str
    settings_hash: str
    sequences: list[str]
    frames: list[int]
    size: list[int]
    sdf_factor_min: float
    sdf_factor_max: float
    normalisation: str
    shards: list[str]


def read_training_data(root: Path) -> TrainingData:
    data = DataDir(Path(root).resolve())
    if not data.manifest.is_file():
        raise InputDataError("no prepared data here (manifest.json missing)", data.root,
                             "run cellgen prepare MASKS DATA first and pass --data DATA")
    manifest = read_json(data.manifest)
    try:
        shards = [str(data.root / row["file"]) for row in manifest["shards"]]
        training = TrainingData(
            root=str(data.root),
            settings_hash=str(manifest["settings_hash"]),
            sequences=[str(s["name"]) for s in manifest["sequences"]],
            frames=[int(s["frames"]) for s in manifest["sequences"]],
            size=[int(v) for v in manifest["size"]],
            sdf_factor_min=float(manifest["sdf_factor_min"]),
            sdf_factor_max=float(manifest["sdf_factor_max"]),
            normalisation=str(manifest.get("settings", {}).get("normalisation", "frame")),
            shards=shards,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputDataError("manifest.json is incomplete", data.manifest,
                             f"missing or bad {err}; rerun cellgen prepare --force") from None
    missing = [p for p in training.shards if not Path(p).is_file()]
    if missing or not training.shards:
        raise InputDataError("point shard missing", missing[0] if missing else data.points_dir,
                             "rerun cellgen prepare")
    return training


@dataclass
class TrainPlan:
    """A checked training run, handed (as a dict) to every worker."""

    config: dict
    exp: str
    data: TrainingData
    resume_epoch: int = 0
    faults: dict[str, str] = field(default_factory=dict)
    """Test-only fault injection settings (see ``worker.FAULT_EPOCH``)."""
    quiet: bool = True
    """Keep Ray Train's per-report INFO lines out of the console."""

    @property
    def cellgen_config(self) -> CellgenConfig:
        return config_from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainPlan:
        return cls(**{**raw, "data": TrainingData(**raw["data"])})


def plan_training(config: CellgenConfig, exp_root: Path, data_root: Path | None, resume: bool) -> TrainPlan:
    """Check the run before Ray starts: data present and consistent, enough shards for the
    workers, the experiment folder free (or, with resume, holding a compatible checkpoint)."""
    exp = ExperimentDir(Path(exp_root).resolve())
    ensure_writable_dir(exp.root)
    latest = exp.latest_checkpoint()
    if latest is not None and not resume:
        raise OutputError("experiment folder already holds checkpoints", exp.root,
                          "add --resume to continue it, or choose a new experiment folder")
    if data_root is None:
        if not exp.data_ref.is_file():
            raise InputDataError("no data folder given", None, "pass --data DATA (required on a first run)")
        data_root = Path(read_json(exp.data_ref)["data"])
    data = read_training_data(data_root)
    ShardReader(data.shards, 0, config.train.workers)  # fewer shards than workers -> one clear line
    resume_epoch = 0
    if resume and latest is not None:
        state = load_checkpoint(latest)
        check_compatible(state, config, data.settings_hash, latest)
        resume_epoch = int(state["epoch"])
        if resume_epoch >= config.train.epochs:
            raise CheckpointError(f"nothing to do: the checkpoint is at epoch {resume_epoch}", latest,
                                  f"pass --epochs larger than {resume_epoch} to train further")
    return TrainPlan(config=config.to_dict(), exp=str(exp.root), data=data, resume_epoch=resume_epoch)


def write_run_files(plan: TrainPlan) -> None:
    """EXP/config.yaml and EXP/data.json, written by the driver before training starts."""
    exp = ExperimentDir(Path(plan.exp))
    dump_config(plan.cellgen_config, exp.config)
    write_json_atomic(exp.data_ref, {"data": plan.data.root, "settings_hash": plan.data.settings_hash})


def checkpoint_state(plan: TrainPlan, epoch: int, model_state: dict, optimizer_state: dict) -> dict:
    data = plan.data
    return {
        "format": 1,
        "epoch": epoch,
        "model": model_state,
        "optimizer": optimizer_state,
        "config": plan.config,
        "data_hash": data.settings_hash,
        "sequences": list(data.sequences),
        "frames": list(data.frames),
        "data_size": list(data.size),
        "sdf_factor_min": data.sdf_factor_min,
        "sdf_factor_max": data.sdf_factor_max,
        "normalisation": data.normalisation,
        "cellgen_version": __version__,
    }


def prune_checkpoints(exp: ExperimentDir, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _epoch, path in exp.checkpoints()[:-keep]:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# metrics.csv (rank 0 appends whole lines) and the loss plot
# --------------------------------------------------------------------------------------------


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop rows beyond ``last_epoch`` (epochs redone after a resume or a restart)."""
    if not path.is_file():
        return
    rows = [row for row in read_metrics(path) if int(row["epoch"]) <= last_epoch]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def append_metrics(path: Path, metrics: dict[str, Any]) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    if new:
        writer.writeheader()
    writer.writerow(metrics)
    with open(path, "a") as fh:  # one write of whole lines
        fh.write(buffer.getvalue())


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get("epoch") and row["epoch"].isdigit()]


def plot_loss(metrics_path: Path, out: Path) -> bool:
    """Loss curve (log scale) from metrics.csv; False when there is nothing to plot."""
    rows = read_metrics(metrics_path)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, [float(r["sdf_loss"]) for r in rows], label="SDF L1")
    codes = [float(r["code_loss"]) for r in rows]
    if any(math.isfinite(c) and c > 0 for c in codes):
        ax.plot(epochs, codes, label="mean ||z||", alpha=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    from cellgen.io import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True
