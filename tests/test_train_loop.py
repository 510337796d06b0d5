"""Training without Ray: schedule and loss math, the epoch loop, checkpoints written by the
worker loop, resume, stop requests, and every check done before Ray starts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cellgen.config import TrainConfig, load_config
from cellgen.data.shards import Batch, ShardReader
from cellgen.errors import CheckpointError, InputDataError, OutputError
from cellgen.layout import ExperimentDir
from cellgen.model.autodecoder import AutoDecoder
from cellgen.train.checkpoint import load_checkpoint, load_trained_model
from cellgen.train.experiment import append_metrics, plan_training, read_metrics, truncate_metrics, write_run_files
from cellgen.train.loop import (
    build_optimizer,
    code_norm_loss,
    code_reg_weight,
    learning_rates,
    sdf_l1_loss,
    step_lr,
    train_epoch,
)
from cellgen.train.synthetic import write_sphere_dataset
from cellgen.train.worker import WorkerContext, newest_checkpoint, run_worker

TINY = [
    "model.latent_dim=8", "model.hidden_dims=[32,32,32]", "model.latent_in=[2]", "model.xyz_in_all=true",
    "train.workers=1", "train.frames_per_batch=2", "train.lr_decoder=5e-4", "train.lr_codes=2e-3",
    "train.opt_rot_epochs=3", "train.code_reg_ramp=4", "train.lr_step=100", "train.checkpoint_every=4",
    "train.keep_checkpoints=2",
]


def tiny_config(*extra: str):
    return load_config("demo", [*TINY, *extra])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spheres")
    write_sphere_dataset(root, n_sequences=4, frames=3, size=16, shards=2)
    return root


# ---------------------------------------------------------------- schedule and loss


def test_step_schedule():
    assert step_lr(1e-3, 0, 350, 0.5) == 1e-3
    assert step_lr(1e-3, 349, 350, 0.5) == 1e-3
    assert step_lr(1e-3, 350, 350, 0.5) == 5e-4
    assert step_lr(1e-3, 1050, 350, 0.5) == pytest.approx(1.25e-4)


def test_rotation_phase_rates_and_regularisation():
    cfg = TrainConfig(lr_decoder=1e-4, lr_codes=1e-3, lr_rotations=2e-3, lr_step=10, lr_gamma=0.5,
                      opt_rot_epochs=15, rot_code_lr_factor=10, rot_code_reg_factor=4, code_reg=1e-4,
                      code_reg_ramp=20)
    during = learning_rates(cfg, 12, rotations=True)
    assert during == pytest.approx({"decoder": 5e-5, "codes": 5e-3, "rotations": 1e-3})
    after = learning_rates(cfg, 15, rotations=True)
    assert after == pytest.approx({"decoder": 5e-5, "codes": 5e-4, "rotations": 0.0})
    without = learning_rates(cfg, 0, rotations=False)
    assert without["codes"] == pytest.approx(1e-3) and without["rotations"] == 0.0
    assert code_reg_weight(cfg, 0, True) == 0.0
    assert code_reg_weight(cfg, 10, True) == pytest.approx(1e-4 * 0.5 * 4)
    assert code_reg_weight(cfg, 10, False) == pytest.approx(1e-4 * 0.5)
    assert code_reg_weight(cfg, 40, True) == pytest.approx(1e-4)  # ramp saturates; phase over


def test_l1_loss_and_clamp():
    pred = torch.tensor([0.0, 0.5, -2.0])
    target = torch.tensor([0.1, 0.5, -0.5])
    assert sdf_l1_loss(pred, target).item() == pytest.approx((0.1 + 0 + 1.5) / 3)
    assert sdf_l1_loss(pred, target, clamp_delta=1.0).item() == pytest.approx((0.1 + 0 + 0.5) / 3)


def test_code_loss_is_mean_norm_over_points():
    codes = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
    sequence = torch.tensor([0, 0, 1, 0])
    assert code_norm_loss(codes, sequence).item() == pytest.approx((5 + 5 + 1 + 5) / 4)
    per_point = codes[sequence].norm(dim=1).mean()
    assert code_norm_loss(codes, sequence).item() == pytest.approx(per_point.item())


def test_rotation_group_gets_lr_zero_but_keeps_gradients_after_phase():
    cfg = tiny_config().train
    model = AutoDecoder(tiny_config().model, 2)
    optimizer = build_optimizer(model, cfg)
    rng = np.random.default_rng(0)
    batch = Batch(rng.uniform(-1, 1, (64, 4)).astype(np.float32), rng.normal(size=64).astype(np.float32),
                  np.repeat([0, 1], 32))
    before = model.rotations.angles.detach().clone()
    metrics = train_epoch(model, optimizer, [batch], cfg.opt_rot_epochs, cfg)
    assert metrics["lr_rotations"] == 0.0
    assert model.rotations.angles.requires_grad
    assert torch.equal(model.rotations.angles.detach(), before)
    train_epoch(model, optimizer, [batch], 0, cfg)
    assert not torch.equal(model.rotations.angles.detach(), before)


def test_train_epoch_reduces_loss_on_real_shards(data_dir):
    config = tiny_config()
    torch.manual_seed(0)
    model = AutoDecoder(config.model, 4)
    optimizer = build_optimizer(model, config.train)
    reader = ShardReader(sorted((data_dir / "points").glob("shard_*.h5")))
    losses = [train_epoch(model, optimizer, reader.iter_batches(2, e), e, config.train)["sdf_loss"] for e in range(12)]
    assert losses[-1] < 0.7 * losses[0]
    metrics = train_epoch(model, optimizer, reader.iter_batches(2, 12), 12, config.train)
    assert metrics["points"] == 12 * round(0.25 * 16**3)
    assert metrics["points_per_s"] > 0 and math.isfinite(metrics["code_loss"])


def test_stop_request_ends_epoch_after_current_step(data_dir):
    config = tiny_config()
    model = AutoDecoder(config.model, 4)
    optimizer = build_optimizer(model, config.train)
    reader = ShardReader(sorted((data_dir / "points").glob("shard_*.h5")))
    polls = []
    metrics = train_epoch(model, optimizer, reader.iter_batches(2, 0), 0, config.train,
                          should_stop=lambda: polls.append(1) or True)
    assert metrics["stopped"] and len(polls) == 1
    assert metrics["points"] == 2 * round(0.25 * 16**3)  # exactly one step of 2 frames


# ---------------------------------------------------------------- the worker loop (in-process)


def test_worker_trains_checkpoints_and_resumes(tmp_path, data_dir):
    exp = ExperimentDir(tmp_path / "exp")
    plan = plan_training(tiny_config("train.epochs=10"), exp.root, data_dir, resume=False)
    run_worker(plan, WorkerContext())
    assert [e for e, _ in exp.checkpoints()] == [8, 10]  # every 4, the end, keep 2
    rows = read_metrics(exp.metrics)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    state = load_checkpoint(exp.checkpoint(10))
    assert state["sequences"] == [f"seq_{i:03d}" for i in range(4)] and state["frames"] == [3] * 4
    assert state["data_size"] == [16, 16, 16] and state["normalisation"] == "frame"
    assert state["sdf_factor_min"] <= state["sdf_factor_max"]

    with pytest.raises(OutputError, match="--resume"):
        plan_training(tiny_config("train.epochs=10"), exp.root, data_dir, resume=False)
    with pytest.raises(CheckpointError, match="nothing to do"):
        plan_training(tiny_config("train.epochs=10"), exp.root, data_dir, resume=True)
    # Resume without --data: the data folder recorded in EXP/data.json (by the driver) is used.
    write_run_files(plan)
    resumed = plan_training(tiny_config("train.epochs=13"), exp.root, None, resume=True)
    assert resumed.resume_epoch == 10
    run_worker(resumed, WorkerContext())
    assert [e for e, _ in exp.checkpoints()] == [12, 13]
    assert [int(r["epoch"]) for r in read_metrics(exp.metrics)] == list(range(1, 14))
    assert read_metrics(exp.metrics)[:10] == rows  # the first 10 epochs untouched
    trained = load_trained_model(exp.root)
    assert trained.checkpoint["epoch"] == 13 and trained.model.latent_codes().shape == (4, 8)


def test_worker_stop_writes_checkpoint_of_completed_epochs(tmp_path, data_dir):
    exp = ExperimentDir(tmp_path / "exp")
    plan = plan_training(tiny_config("train.epochs=50", "train.checkpoint_every=100"), exp.root, data_dir, False)
    steps = iter(range(10_000))
    # Stop in the middle of epoch 3 (6 steps per epoch here: 12 frames / 2 per batch).
    metrics = run_worker(plan, WorkerContext(should_stop=lambda: next(steps) == 14))
    assert metrics["stopped"] and metrics["epoch"] == 2
    assert [e for e, _ in exp.checkpoints()] == [2]
    assert len(read_metrics(exp.metrics)) == 2


def test_newest_checkpoint_prefers_higher_epoch_and_skips_broken(tmp_path, data_dir):
    exp = ExperimentDir(tmp_path / "exp")
    plan = plan_training(tiny_config("train.epochs=8"), exp.root, data_dir, False)
    run_worker(plan, WorkerContext())
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    best = newest_checkpoint([exp.checkpoint(4), broken, None, exp.checkpoint(8)])
    assert best["epoch"] == 8


def test_metrics_truncation(tmp_path):
    path = tmp_path / "metrics.csv"
    for epoch in range(1, 6):
        append_metrics(path, {"epoch": epoch, "sdf_loss": 1.0 / epoch, "code_loss": 0.1})
    truncate_metrics(path, 3)
    assert [int(r["epoch"]) for r in read_metrics(path)] == [1, 2, 3]
    append_metrics(path, {"epoch": 4, "sdf_loss": 0.2, "code_loss": 0.1})
    assert [int(r["epoch"]) for r in read_metrics(path)] == [1, 2, 3, 4]


# ---------------------------------------------------------------- refused before Ray starts


def test_refusals_before_any_compute(tmp_path, data_dir):
    exp = ExperimentDir(tmp_path / "exp")
    with pytest.raises(InputDataError, match="--data"):
        plan_training(tiny_config(), exp.root, None, resume=False)
    with pytest.raises(InputDataError, match="manifest.json missing"):
        plan_training(tiny_config(), exp.root, tmp_path, resume=False)
    with pytest.raises(InputDataError, match="3 workers but only 2 point shards"):
        plan_training(tiny_config("train.workers=3"), exp.root, data_dir, resume=False)

    plan = plan_training(tiny_config("train.epochs=4"), exp.root, data_dir, resume=False)
    run_worker(plan, WorkerContext())
    with pytest.raises(CheckpointError, match="model config differs.*hidden_dims"):
        plan_training(tiny_config("train.epochs=8", "model.hidden_dims=[16,16,16]"), exp.root, data_dir, True)
    other = tmp_path / "other"
    write_sphere_dataset(other, n_sequences=4, frames=3, size=16, shards=2, seed=5, sample_fraction=0.2)
    with pytest.raises(CheckpointError, match="another data set"):
        plan_training(tiny_config("train.epochs=8"), exp.root, other, True)


def test_cli_refusals_are_one_line_before_ray_starts(tmp_path, data_dir):
    from typer.testing import CliRunner

    from cellgen.cli import app

    exp = tmp_path / "exp"
    plan = plan_training(tiny_config("train.epochs=2"), exp, data_dir, resume=False)
    run_worker(plan, WorkerContext())
    write_run_files(plan)
    cases = [
        (["train", "demo", "-o", str(tmp_path / "new"), "--data", str(data_dir), "--workers", "3"], "point shards"),
        (["train", "demo", "-o", str(tmp_path / "new")], "--data"),
        (["train", "demo", "-o", str(exp), "--data", str(data_dir)], "--resume"),
        (["train", "demo", "-o", str(exp), "--resume", "--set", "model.omega=20"], "model config differs"),
        (["train", "nope.yaml", "-o", str(exp)], "config file not found"),
    ]
    runner = CliRunner()
    for args, expected in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("cellgen: training")]
        assert len(lines) == 1 and expected in lines[0], result.output
