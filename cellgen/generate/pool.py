"""The Ray actor pool of ``cellgen generate`` (the only Ray import of the generation stage).

One actor per GPU (or per group of CPU cores) loads the checkpoint once and renders sequences.
The driver hands out one sequence per call and waits with ``ray.wait``; when an actor dies, its
sequence goes back to the front of the queue and a new actor takes its place. Files are written
atomically and a sequence's renderer skips frames already in place, so a retried sequence ends
with exactly the files of an undisturbed one.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from cellgen.errors import CellgenError, ClusterError
from cellgen.generate.sequence import TEST_KILL_MARKER_ENV, RenderSettings, SequenceRenderer, SequenceStats, SequenceTask

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""A sequence whose actor died this many times stops the run (something is systematically wrong)."""

POLL_SECONDS = 0.5


def run_pool(
    tasks: list[SequenceTask],
    settings: RenderSettings,
    checkpoint: str,
    *,
    workers: int,
    use_gpu: bool,
    address: str | None,
    on_progress: Callable[[list[SequenceTask]], None] | None = None,
    on_done: Callable[[SequenceStats], None] | None = None,
) -> list[SequenceStats]:
    """Render ``tasks`` on ``workers`` Ray actors; returns the stats in completion order.

    ``on_progress(running_tasks)`` is called while waiting (to count frames on disk);
    ``on_done(stats)`` once per finished sequence.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from cellgen.train.ray_job import connect  # the one place cellgen calls ray.init

    started_here = connect(address, quiet=True)
    actors: list[Any] = []
    try:
        workers, options, threads = _actor_options(ray, workers, use_gpu)
        env = {TEST_KILL_MARKER_ENV: os.environ[TEST_KILL_MARKER_ENV]} if os.environ.get(TEST_KILL_MARKER_ENV) else {}
        if env:
            options["runtime_env"] = {"env_vars": env}
        actor_class = ray.remote(SequenceRenderer)
        device = "cuda" if use_gpu else "cpu"

        def new_actor() -> Any:
            actor = actor_class.options(**options).remote(None, settings, device, checkpoint, threads)
            actors.append(actor)
            return actor

        queue = deque(tasks)
        idle = [new_actor() for _ in range(min(workers, len(tasks)))]
        running: dict[Any, tuple[Any, SequenceTask]] = {}
        attempts: dict[int, int] = {}
        finished: list[SequenceStats] = []
        while queue or running:
            while idle and queue:
                actor, task = idle.pop(), queue.popleft()
                running[actor.render.remote(task)] = (actor, task)
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                actor, task = running.pop(ref)
                try:
                    stats = ray.get(ref)
                except RayActorError as err:
                    attempts[task.index] = attempts.get(task.index, 0) + 1
                    if attempts[task.index] >= MAX_ATTEMPTS:
                        raise ClusterError(
                            f"sequence {task.index} lost its actor {attempts[task.index]} times",
                            _first_line(err),
                            "check memory and the Ray logs (e.g. /tmp/ray/session_latest/logs)",
                        ) from None
                    log.warning("actor died on sequence %d; retrying it on a new actor", task.index)
                    ray.kill(actor)
                    queue.appendleft(task)
                    idle.append(new_actor())
                    continue
                except RayTaskError as err:
                    if isinstance(err.cause, CellgenError):  # a user error inside the actor
                        raise err.cause from None
                    raise
                finished.append(stats)
                idle.append(actor)
                if on_done is not None:
                    on_done(stats)
            if on_progress is not None:
                on_progress([task for _, task in running.values()])
        return finished
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _actor_options(ray: Any, workers: int, use_gpu: bool) -> tuple[int, dict[str, Any], int]:
    """(actors to start, their resource options, torch threads each), within what the cluster has.

    More actors than the cluster can place would each hold a sequence while never starting.
    """
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    if use_gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ClusterError("--gpu was asked for but the Ray cluster has no GPU", address_hint(ray), "use --no-gpu")
        workers = min(workers, gpus)
        threads = max(1, cpus // workers)
        return workers, {"num_gpus": 1, "num_cpus": 1}, threads
    workers = min(workers, cpus)
    threads = max(1, cpus // workers)
    return workers, {"num_cpus": threads}, threads


def address_hint(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - only decorates an error message
        return "ray"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__
