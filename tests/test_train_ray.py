"""`cellgen train` on a real local Ray runtime (the session's ``ray_local``): two DDP workers on
tiny synthetic shards, a SIGTERM that checkpoints and exits 143, a resume in which rank 1 dies
hard (os._exit) and the run still finishes from a checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.layout import ExperimentDir
from cellgen.train.checkpoint import load_trained_model
from cellgen.train.experiment import read_metrics
from cellgen.train.synthetic import write_sphere_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY_CONFIG = """\
name: tiny
model: {latent_dim: 8, hidden_dims: [32, 32, 32], latent_in: [2], xyz_in_all: true}
train: {frames_per_batch: 2, lr_decoder: 5.0e-4, lr_codes: 2.0e-3, opt_rot_epochs: 3,
        code_reg_ramp: 4, lr_step: 100, checkpoint_every: 2, keep_checkpoints: 2, workers: 2,
        max_failures: 2}
"""


def write_tiny(root: Path) -> tuple[Path, Path]:
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    data = root / "data"
    write_sphere_dataset(data, n_sequences=4, frames=3, size=16, shards=2)
    return config, data


def signal_when(path: Path, rows: int, signum: int, timeout: float = 180) -> threading.Thread:
    """Send ``signum`` to this process once ``path`` (metrics.csv) has ``rows`` epochs."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(read_metrics(path)) >= rows:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sigterm_checkpoints_then_resume_survives_a_worker_death(ray_local, tmp_path, monkeypatch):
    config, data = write_tiny(tmp_path)
    exp = ExperimentDir(tmp_path / "exp")
    runner = CliRunner()

    # 1. A run meant for 400 epochs, preempted with SIGTERM after 3: checkpoint, exit 143.
    watcher = signal_when(exp.metrics, 3, signal.SIGTERM)
    first = runner.invoke(app, ["train", str(config), "-o", str(exp.root), "--data", str(data), "--epochs", "400"])
    watcher.join()
    assert first.exit_code == 143, first.output
    stopped_at = exp.checkpoints()[-1][0]
    assert 3 <= stopped_at < 100
    assert not exp.stop_request.exists()
    assert exp.config.is_file() and exp.data_ref.is_file()

    # 2. Without --resume the folder is refused (one line, no traceback).
    refused = runner.invoke(app, ["train", str(config), "-o", str(exp.root), "--data", str(data)])
    assert refused.exit_code == 2 and "--resume" in refused.output and "Traceback" not in refused.output

    # 3. Resume (data folder taken from EXP/data.json); rank 1 dies hard two epochs in.
    total = stopped_at + 8
    monkeypatch.setenv("CELLGEN_FAULT_EPOCH", str(stopped_at + 2))
    monkeypatch.setenv("CELLGEN_FAULT_MARKER", str(tmp_path / "fault.marker"))
    second = runner.invoke(app, ["train", str(config), "-o", str(exp.root), "--resume", "--epochs", str(total)])
    assert second.exit_code == 0, second.output
    assert (tmp_path / "fault.marker").is_file()  # the worker really died
    epochs = [int(r["epoch"]) for r in read_metrics(exp.metrics)]
    assert epochs == list(range(1, total + 1))  # every epoch exactly once across stop, resume and restart
    rows = read_metrics(exp.metrics)
    assert float(rows[-1]["sdf_loss"]) < 0.8 * float(rows[0]["sdf_loss"])
    assert exp.checkpoints()[-1][0] == total and len(exp.checkpoints()) <= 2
    assert exp.loss_plot.is_file() and exp.loss_plot.stat().st_size > 1000
    trained = load_trained_model(exp.root)
    assert trained.checkpoint["epoch"] == total
