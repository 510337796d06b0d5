"""Monitoring: during a local training run the Ray dashboard answers on loopback, shows the
Ray Train run, and nothing listens for it on any other address."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

DASHBOARD_PORT = 8265


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as fh:
            next(fh)
            for row in fh:
                cols = row.split()
                address, hex_port = cols[1].rsplit(":", 1)
                if int(hex_port, 16) == port and cols[3] == "0A":  # 0A = LISTEN
                    found.append(address)
    return found


def _is_loopback(hex_address: str) -> bool:
    if len(hex_address) == 8:  # IPv4, little-endian
        return hex_address.endswith("7F")
    return hex_address in {"00000000000000000000000001000000"}  # ::1


def _get(path: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{DASHBOARD_PORT}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@pytest.mark.ray
@pytest.mark.skipif(bool(_listeners(DASHBOARD_PORT)), reason="another Ray dashboard already uses port 8265")
def test_dashboard_on_loopback_shows_the_training_run(tmp_path):
    from cellgen.config import load_config
    from cellgen.data.phantoms import write_phantoms
    from cellgen.data.prepare import prepare

    write_phantoms(tmp_path / "masks", "plat", n=2, frames=3, size=(24, 24, 24), seed=3)
    cfg = load_config("demo", ["data.size=24", "data.clamp=4", "data.shards=2"])
    prepare(tmp_path / "masks", tmp_path / "data", cfg.data, progress=False)

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-c", "from cellgen.cli import main; main()", "train", "demo",
           "-o", str(tmp_path / "exp"), "--data", str(tmp_path / "data"), "--epochs", "100000",
           "--set", "data.size=24", "--set", "data.clamp=4", "--set", "data.shards=2",
           "--set", "model.hidden_dims=[16,16]", "--set", "model.latent_in=[1]",
           "--set", "train.checkpoint_every=1000"]
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        token_file = Path.home() / ".ray" / "auth_token"
        deadline = time.monotonic() + 180
        runs = None
        while time.monotonic() < deadline and proc.poll() is None:
            token = token_file.read_text().strip() if token_file.exists() else None
            status, body = _get("/api/train/v2/runs/v1", token)
            if status == 200:
                runs = json.loads(body)["train_runs"]
                if any(r["status"] == "RUNNING" for r in runs):
                    break
            time.sleep(2)
        assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        assert runs and any(r["status"] == "RUNNING" for r in runs), runs
        run = next(r for r in runs if r["status"] == "RUNNING")
        assert run["run_settings"]["train_loop_config"]["plan"]["exp"] == str(tmp_path / "exp")

        listening = _listeners(DASHBOARD_PORT)
        assert listening, "the dashboard should be listening"
        assert all(_is_loopback(a) for a in listening), f"dashboard bound beyond loopback: {listening}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
