"""Shared fixtures. Ray is started once per test session (start-up costs ~5 s and ~3 GB)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # a fresh instance: never attach to another Ray on this host (e.g. a Slurm test's)
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            object_store_memory=300 * 1024 * 1024,
        )
    yield ray
    ray.shutdown()
