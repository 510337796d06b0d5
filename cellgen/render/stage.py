"""The ``cellgen render`` stage: synthetic fluorescence images paired with their masks.

Reads mask sequences in the published layout, renders every frame (frame.py) and writes, per
view, ``OUT/<view>/seq_000/image_t000.tif`` (uint16) next to ``mask_t000.tif`` (uint8 0/255)
(layout: cellgen.layout.RenderDir). ``OUT/render.json`` records the settings before any image is
written: a rerun with the same settings renders only missing frames (a new view only adds its
files); other settings or another masks folder are refused unless ``force``, which removes the
old images and masks first.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cellgen import __version__
from cellgen.config import RenderConfig
from cellgen.data.masks import MaskSequence, discover_sequences
from cellgen.errors import InputDataError, OutputError
from cellgen.io import ensure_writable_dir, read_json, write_image_tiff, write_json_atomic, write_mask_tiff
from cellgen.layout import RenderDir
from cellgen.render.frame import RENDERER_VERSION, VIEWS, frame_views, render_stack, view_names

_OWN_FILE = re.compile(r"^(image|mask)_t\d{3,}\.tif$")
_RUN_ONLY = ("mode", "workers")
"""Settings that choose what is written and how fast, not what an image looks like."""


@dataclass
class RenderRequest:
    """One ``cellgen render`` call, resolved."""

    masks: Path
    """A folder of mask sequences (``seq_000/mask_t000.tif ...`` or 4D TIFFs)."""
    out: Path
    settings: RenderConfig
    force: bool = False
    progress: bool = True
    report: Callable[[str], None] | None = None
    """Receives a status line once the input is verified and OUT claimed."""


@dataclass
class RenderSummary:
    out: Path
    views: tuple[str, ...]
    sequences: int
    frames: int
    rendered: int
    """Frames rendered by this call."""
    skipped: int
    """Frames that were already complete."""
    seconds: float


def render_record(settings: RenderConfig, masks: Path, views: tuple[str, ...]) -> dict[str, Any]:
    """What ``render.json`` holds: everything that decides the images, and the views written."""
    look = {k: v for k, v in settings.model_dump(mode="json").items() if k not in _RUN_ONLY}
    return {
        "renderer": RENDERER_VERSION,
        "masks": str(Path(masks).resolve()),
        "settings": look,
        "views": list(views),
        "cellgen_version": __version__,
    }


def render_masks(request: RenderRequest) -> RenderSummary:
    """Render every frame of every sequence in ``request.masks`` that OUT does not hold yet."""
    started = time.perf_counter()
    sequences = discover_sequences(request.masks)  # verifies every header before any work
    out = RenderDir(ensure_writable_dir(request.out))
    views = view_names(request.settings.mode)
    _claim(out, render_record(request.settings, request.masks, views), request.force)
    frames = [(s, f) for s in sequences for f in range(s.n_frames)]
    todo = [(s, f) for s, f in frames if request.force or not _complete(out, s.name, f, views)]
    if request.report:
        s = request.settings
        request.report(
            f"cellgen: rendering {len(todo)} of {len(frames)} frame(s) of {len(sequences)} sequence(s) "
            f"({', '.join(views)}, psf {s.psf}, seed {s.seed}) into {out.root}"
        )
    workers = min(request.settings.workers, max(len(todo), 1))
    threads = max(1, _usable_cpus() // workers)
    job = dict(out=out.root, settings=request.settings, views=views, force=request.force, threads=threads)
    from cellgen.data.prepare import progress_bar  # not at the top: spawned workers skip h5py

    with progress_bar("render", len(todo), enabled=request.progress) as advance:
        if workers == 1:
            for sequence, frame in todo:
                _render_frame(sequence, frame, **job)
                advance(1)
        else:
            _render_parallel(todo, workers, job, advance)
    return RenderSummary(
        out=out.root,
        views=views,
        sequences=len(sequences),
        frames=len(frames),
        rendered=len(todo),
        skipped=len(frames) - len(todo),
        seconds=time.perf_counter() - started,
    )


def _render_frame(
    sequence: MaskSequence,
    frame: int,
    out: Path,
    settings: RenderConfig,
    views: tuple[str, ...],
    force: bool,
    threads: int,
) -> None:
    """Render one frame and write the files of each view that are missing (all with ``force``)."""
    layout = RenderDir(out)
    mask = sequence.read_frame(frame)
    stack = render_stack(mask, settings, sequence.name, frame, threads)
    voxel_size = sequence.voxel_size or (1.0, 1.0, 1.0)
    for view, (image, view_mask) in frame_views(stack, mask, views).items():
        folder = layout.sequence(view, sequence.name)
        if force or not folder.mask(frame).exists():
            write_mask_tiff(folder.mask(frame), view_mask, voxel_size)
        if force or not folder.image(frame).exists():
            write_image_tiff(folder.image(frame), image, voxel_size)


def _render_parallel(
    todo: list[tuple[MaskSequence, int]], workers: int, job: dict[str, Any], advance: Any
) -> None:
    """Frames in ``workers`` processes, at most two queued per worker (a failure stops early)."""
    pending: set[Future[None]] = set()
    queue = iter(todo)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        try:
            while True:
                while len(pending) < 2 * workers:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending.add(pool.submit(_render_frame, *item, **job))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
                    advance(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _usable_cpus() -> int:
    """CPUs this process may run on (a Slurm allocation, not the whole node)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _complete(out: RenderDir, sequence: str, frame: int, views: tuple[str, ...]) -> bool:
    for view in views:
        folder = out.sequence(view, sequence)
        if not (folder.image(frame).exists() and folder.mask(frame).exists()):
            return False
    return True


def _claim(out: RenderDir, record: dict[str, Any], force: bool) -> None:
    """Record the settings in OUT, refusing (unless ``force``) to mix them with other ones."""
    previous = _previous_record(out) if out.record.exists() and not force else None
    if previous is not None:
        changed = [key for key in ("renderer", "masks") if previous.get(key) != record[key]]
        old = previous.get("settings") or {}
        changed += [f"{key} {old.get(key)!r} -> {value!r}" for key, value in record["settings"].items() if old.get(key) != value]
        if changed:
            raise OutputError(
                "output folder holds images rendered with other settings",
                f"{out.root} ({'; '.join(changed)})",
                "use another folder, or --force to replace them",
            )
        record = {**record, "views": [v for v in VIEWS if v in previous.get("views", []) or v in record["views"]]}
    elif not force and _own_files(out):
        raise OutputError(
            f"output folder holds rendered images but no {out.record.name}",
            out.root,
            "use another folder, or --force to replace them",
        )
    if force:
        for path in _own_files(out):
            path.unlink()
    # Written before any image, so an interrupted run is recognised (and resumed) by the next.
    write_json_atomic(out.record, record)


def _previous_record(out: RenderDir) -> dict[str, Any] | None:
    try:
        previous = read_json(out.record)
    except InputDataError:
        previous = None
    if not isinstance(previous, dict):
        raise OutputError(f"{out.record} is unreadable", None, "use another folder, or --force to replace it")
    return previous


def _own_files(out: RenderDir) -> list[Path]:
    """Images and masks in OUT's view folders (only files named like ours)."""
    found = []
    for view in VIEWS:
        folder = out.view(view)
        if not folder.is_dir():
            continue
        for sequence in folder.iterdir():
            if sequence.is_dir():
                found += [p for p in sequence.iterdir() if _OWN_FILE.match(p.name)]
    return found
