"""A real Slurm cluster of two nodes on this machine (brought up by .ci/slurm-up.sh in CI).

sbatch -N2 slurm/train.sh -> a Ray cluster spanning both Slurm nodes, Ray Train with one worker
on each; sbatch -N2 slurm/generate.sh; and a preemption: SIGTERM to the running training job,
which checkpoints, requeues itself and finishes from the checkpoint.

Skipped where no Slurm is running (SLURM_CONF unset), e.g. on a laptop.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None,
        reason="needs a running Slurm: source <(.ci/slurm-up.sh 2) (CI does this)",
    ),
]

JOB_TIMEOUT = 420


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["CELLGEN_LOG_DIR"] = str(tmp / "ray-logs")
    env["CELLGEN_JOIN_TIMEOUT"] = "120"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _sbatch(args: list[str], env: dict[str, str], log: Path) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--output={log}", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"sbatch refused the job: {proc.stderr.strip()}"
    return proc.stdout.strip().split(";")[0]


def _job(jobid: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def _wait(jobid: str, log: Path, timeout: float = JOB_TIMEOUT, until=None) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(jobid)
        if until is not None:
            if until(info):
                return info
        elif info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            return info
        time.sleep(2)
    subprocess.run(["scancel", jobid])
    pytest.fail(f"job {jobid} did not finish in {timeout}s; log:\n{_tail(log)}")


def _tail(log: Path, n: int = 80) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else "(no log)"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    from cellgen.config import load_config
    from cellgen.data.phantoms import write_phantoms
    from cellgen.data.prepare import prepare

    root = tmp_path_factory.mktemp("slurm")
    masks = root / "masks"
    write_phantoms(masks, "cele", n=2, frames=3, size=(24, 24, 24), seed=1)
    config = load_config("demo", ["data.size=24", "data.shards=2", "data.clamp=4"])
    data = root / "data"
    prepare(masks, data, config.data)
    return data


TRAIN_SETTINGS = [
    "--set", "data.size=24", "--set", "data.shards=2", "--set", "data.clamp=4",
    "--set", "model.hidden_dims=[32,32,32]", "--set", "model.latent_in=[2]",
    "--set", "train.checkpoint_every=1",
]


def test_train_preempt_requeue_resume_then_generate_on_two_nodes(demo_data, tmp_path):
    """One scenario, so the suite pays the Ray-cluster start-up only three times:
    sbatch -N2 train.sh (a Ray cluster over both Slurm nodes, one Ray Train worker each) ->
    SIGTERM to the batch shell mid-run (as --signal=B:TERM@... or preemption) -> checkpoint,
    exit 143, requeue -> the requeued job resumes from the checkpoint and finishes ->
    sbatch -N2 generate.sh from the trained experiment."""
    exp, log = tmp_path / "exp", tmp_path / "train.log"
    epochs = 80
    job = _sbatch(["-N2", "--cpus-per-task=1", "slurm/train.sh", "demo", str(exp), str(demo_data),
                   "--epochs", str(epochs), *TRAIN_SETTINGS], _env(tmp_path), log)
    ckpts = exp / "checkpoints"
    deadline = time.monotonic() + JOB_TIMEOUT
    while not [p for p in ckpts.glob("epoch_*.pt") if int(p.stem[6:]) >= 3]:
        assert time.monotonic() < deadline, _tail(log)
        assert _job(job).get("JobState") in {"PENDING", "RUNNING", "CONFIGURING"}, _tail(log)
        time.sleep(1)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True)
    info = _wait(job, log, until=lambda i: i.get("Restarts", "0") != "0" or i.get("JobState") in {"FAILED", "COMPLETED"})
    assert info.get("Restarts") == "1", _tail(log)
    # Slurm holds a requeued job back (BeginTime ~2 min later); a real cluster waits, the test need not.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    info = _wait(job, log, until=lambda i: i.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED"})
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _tail(log)
    assert text.count("Ray cluster up: 2 nodes") == 2, _tail(log)
    assert "2 workers x 1 CPUs over 2 nodes" in text, _tail(log)
    assert "requeueing job" in text and "resuming (restart 1)" in text, _tail(log)
    stopped = int(re.search(r"stopped at epoch (\d+)", text).group(1))
    assert 3 <= stopped < epochs
    assert (ckpts / f"epoch_{epochs:06d}.pt").exists()
    import csv

    with open(exp / "metrics.csv") as fh:
        logged = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert logged == sorted(set(logged)), "resume must not duplicate or reorder epochs"
    assert len(logged) == epochs

    out, glog = tmp_path / "gen", tmp_path / "generate.log"
    job = _sbatch(["-N2", "--cpus-per-task=1", "slurm/generate.sh", str(exp), str(out),
                   "--n", "2", "--size", "24", "--frames", "2"], _env(tmp_path), glog)
    info = _wait(job, glog)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _tail(glog)
    assert "2 actors over 2 nodes" in glog.read_text()
    import tifffile

    for seq in ("seq_000", "seq_001"):
        for t in range(2):
            mask = tifffile.imread(out / seq / f"mask_t{t:03d}.tif")
            assert mask.shape == (24, 24, 24) and mask.dtype.name == "uint8"
