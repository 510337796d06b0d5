"""`cellgen train --address` on a two-node Ray cluster (ray.cluster_utils.Cluster: a head and a
worker node on this machine, 1 CPU each, so the 2 DDP workers must span both nodes), with rank 1
dying hard at epoch 3 on the first attempt: the run restarts from a checkpoint and finishes.

A Cluster needs its own Ray runtime, which cannot coexist with the session's ``ray_local``, so
the scenario runs in a subprocess (this module is safe to run alongside the others)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cellgen.layout import ExperimentDir
from cellgen.train.experiment import read_metrics
from cellgen.train.synthetic import write_sphere_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import ray
    from ray.cluster_utils import Cluster
    from typer.testing import CliRunner
    from cellgen.cli import app

    config, exp, data = sys.argv[1:4]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 200 * 1024 * 1024})
    cluster.add_node(num_cpus=1, object_store_memory=200 * 1024 * 1024)
    cluster.wait_for_nodes()
    print("NODES", len(cluster.list_all_nodes()))
    try:
        result = CliRunner().invoke(app, ["train", config, "-o", exp, "--data", data, "--address", cluster.address])
        print(result.output)
        print("EXIT", result.exit_code)
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)

CONFIG = """\
name: tiny
model: {latent_dim: 8, hidden_dims: [32, 32, 32], latent_in: [2], xyz_in_all: true}
train: {epochs: 6, frames_per_batch: 2, lr_decoder: 5.0e-4, lr_codes: 2.0e-3, opt_rot_epochs: 3,
        code_reg_ramp: 4, lr_step: 100, checkpoint_every: 2, keep_checkpoints: 2, workers: 2,
        max_failures: 2}
"""


def test_two_node_cluster_survives_a_worker_death(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    write_sphere_dataset(data, n_sequences=4, frames=3, size=16, shards=2)
    exp = ExperimentDir(tmp_path / "exp")
    marker = tmp_path / "fault.marker"
    env = {**os.environ, "CELLGEN_FAULT_EPOCH": "3", "CELLGEN_FAULT_MARKER": str(marker),
           "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(config), str(exp.root), str(data)],
                          capture_output=True, text=True, env=env, timeout=420)
    assert "EXIT 0" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NODES 2" in proc.stdout
    assert marker.is_file()  # rank 1 really died once
    assert [int(r["epoch"]) for r in read_metrics(exp.metrics)] == [1, 2, 3, 4, 5, 6]
    assert exp.checkpoints()[-1][0] == 6
