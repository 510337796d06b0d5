"""``cellgen prepare``: mask sequences -> SDF volumes (one HDF5 per sequence) -> point shards.

The steps, each reading what the one before wrote (the paths are cellgen.layout.DataDir's):

1. verify: ``discover_sequences`` reads every TIFF header; bad input stops here, nothing written.
2. plan: a sequence whose sdf file holds the same hash (settings + input files) is done; one
   prepared with other settings or from changed input is refused unless ``force``; the rest
   are computed.
3. compute (worker processes, one sequence each, frame by frame so memory stays bounded): read a
   frame -> ``frame_sdf`` -> one chunk of ``sdf_vid`` in a temporary HDF5, and its sampled
   points -> ``points/.samples/<sequence>.h5``; both are renamed into place at the end.
4. shards: frames spread round-robin over the shards, streamed from the samples (a sequence
   whose samples are gone is re-sampled from its sdf file: sampling is deterministic).
5. manifest: written last, atomically; it is the mark of a complete DATA folder, so it is
   removed before anything in DATA changes. The samples are deleted after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from cellgen import __version__
from cellgen.config import DataConfig
from cellgen.data.masks import MaskSequence, discover_sequences, select_frames
from cellgen.data.sdf import frame_sdf, frame_time, isotropic_zoom, points_per_frame, sample_frame, sampling_rng
from cellgen.data.shards import FramePoints, shard_writer
from cellgen.errors import CellgenError, OutputError
from cellgen.io import VoxelSize, atomic_path, ensure_writable_dir, sha256_json, write_json_atomic
from cellgen.layout import DataDir

FORMAT = 1
"""Version of the prepared data layout; part of every hash, so a new format redoes old data."""

SDF_KEYS = ("size", "clamp", "normalisation", "largest_only", "debris_fraction", "scale", "label", "max_frames")
"""Settings that change the SDF volumes."""
SAMPLING_KEYS = ("sample_fraction", "near_fraction", "near_threshold", "seed")
"""Settings that change only the sampled points."""
UNHASHED_KEYS = ("workers",)
"""Settings that change nothing in DATA."""

_GZIP_LEVEL = 1  # ~2x faster than h5py's default 4 on SDF volumes, ~20 % larger files

Advance = Callable[[int], None]
"""Called with the number of frames just finished (drives the progress bar)."""


@dataclass(frozen=True)
class SequenceJob:
    """Everything a worker process needs to prepare (or re-sample) one sequence."""

    sequence: MaskSequence
    index: int
    """Position in the manifest's sequence list (seeds the sampling)."""
    frames: tuple[int, ...]
    """Source frame indices used (all, or ``max_frames`` of them)."""
    voxel_size: VoxelSize | None
    cfg: DataConfig
    sdf_file: Path
    samples_file: Path
    sdf_hash: str
    samples_hash: str
    mode: Literal["compute", "resample"] = "compute"


@dataclass
class PrepareResult:
    manifest: dict[str, Any]
    computed: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    shards_rebuilt: bool = False


def prepare(
    masks: str | Path, data: str | Path, cfg: DataConfig, *, force: bool = False, progress: bool = True
) -> PrepareResult:
    """Prepare every mask sequence in ``masks`` into the data folder ``data`` (see module doc).

    Reruns skip sequences prepared with the same settings and input; ``force`` redoes them all.
    """
    masks, layout = Path(masks), DataDir(Path(data))
    sequences = discover_sequences(masks)
    for folder in (layout.root, layout.sdf_dir, layout.points_dir, layout.samples_dir):
        ensure_writable_dir(folder)

    jobs = [_job(masks, layout, cfg, i, seq) for i, seq in enumerate(sequences)]
    settings_hash = sha256_json({"format": FORMAT, "settings": _hashed_settings(cfg), "data": [j.samples_hash for j in jobs]})
    # Every existing file is checked (and conflicts refused) before any compute.
    to_compute = [j for j in jobs if force or not _check_existing(j)]
    manifest = _read_manifest(layout)
    if not to_compute and manifest.get("settings_hash") == settings_hash and _shards_present(layout, manifest):
        return PrepareResult(manifest, up_to_date=[j.sequence.name for j in jobs])

    # DATA is about to change: without a manifest it reads as "not prepared" until we finish.
    layout.manifest.unlink(missing_ok=True)
    computing = {j.sequence.name for j in to_compute}
    to_resample = [dataclasses.replace(j, mode="resample") for j in jobs if j.sequence.name not in computing and not _samples_valid(j)]
    work = to_compute + to_resample
    with progress_bar("preparing frames", sum(len(j.frames) for j in work), progress) as advance:
        _run_jobs(work, cfg.workers, advance)
    with progress_bar("writing shards", sum(len(j.frames) for j in jobs), progress) as advance:
        manifest = _assemble(masks, layout, jobs, cfg, settings_hash, advance)
    write_json_atomic(layout.manifest, manifest)
    for job in jobs:
        job.samples_file.unlink(missing_ok=True)
    return PrepareResult(
        manifest,
        computed=sorted(computing),
        resampled=sorted(j.sequence.name for j in to_resample),
        up_to_date=sorted(j.sequence.name for j in jobs if j.sequence.name not in computing),
        shards_rebuilt=True,
    )


def _assemble(
    masks: Path, layout: DataDir, jobs: Sequence[SequenceJob], cfg: DataConfig, settings_hash: str, advance: Advance
) -> dict[str, Any]:
    """Write the shards from the finished sequences and return the manifest describing DATA."""
    records = [_sequence_record(layout, j) for j in jobs]
    n_points = points_per_frame(cfg.size, cfg.sample_fraction)
    shards = _write_shards(layout, jobs, records, cfg.shards, settings_hash, n_points, advance)
    factors = [f for r in records for f in r["norm_factors"]]
    return {
        "format": FORMAT,
        "cellgen_version": __version__,
        "masks": str(masks.resolve()),
        "settings": cfg.model_dump(mode="json"),
        "settings_hash": settings_hash,
        "size": list(cfg.size),
        "points_per_frame": n_points,
        "n_points": sum(s["points"] for s in shards),
        "n_frames": len(factors),
        "sdf_factor_min": min(factors),
        "sdf_factor_max": max(factors),
        "sequences": records,
        "shards": shards,
    }


# --------------------------------------------------------------------------------------------
# Planning: hashes and what is already done
# --------------------------------------------------------------------------------------------


def _hashed_settings(cfg: DataConfig) -> dict[str, Any]:
    settings = cfg.model_dump(mode="json")
    for key in UNHASHED_KEYS:
        settings.pop(key)
    return settings


def _job(masks: Path, layout: DataDir, cfg: DataConfig, index: int, seq: MaskSequence) -> SequenceJob:
    settings = cfg.model_dump(mode="json")
    frames = tuple(select_frames(seq.n_frames, cfg.max_frames))
    voxel_size = cfg.voxel_size or seq.voxel_size
    sources = []
    for path in seq.sources:
        stat = path.stat()
        sources.append([str(path.relative_to(masks)), stat.st_size, stat.st_mtime_ns])
    sdf_hash = sha256_json(
        {
            "format": FORMAT,
            "settings": {k: settings[k] for k in SDF_KEYS},
            "voxel_size": voxel_size,
            "frames": frames,
            "sources": sources,
        }
    )
    samples_hash = sha256_json(
        {"sdf": sdf_hash, "settings": {k: settings[k] for k in SAMPLING_KEYS}, "index": index}
    )
    return SequenceJob(
        sequence=seq,
        index=index,
        frames=frames,
        voxel_size=voxel_size,
        cfg=cfg,
        sdf_file=layout.sdf_file(seq.name),
        samples_file=layout.samples_file(seq.name),
        sdf_hash=sdf_hash,
        samples_hash=samples_hash,
    )


def _check_existing(job: SequenceJob) -> bool:
    """True when the sequence's sdf file is complete and current; refuses a file made otherwise."""
    if not job.sdf_file.exists():
        return False
    try:
        with h5py.File(job.sdf_file, "r") as h5:
            stored_hash = str(h5.attrs["sdf_hash"])
            stored = json.loads(h5.attrs["settings"])
    except (OSError, KeyError, ValueError):
        raise OutputError(
            "cannot read an existing prepared file", job.sdf_file, "rerun with --force to redo it"
        ) from None
    if stored_hash == job.sdf_hash:
        return True
    current = job.cfg.model_dump(mode="json")
    changed = [k for k in SDF_KEYS if json.dumps(stored.get(k)) != json.dumps(current[k])]
    if not changed and stored.get("voxel_size") != _as_list(job.voxel_size):
        changed = ["voxel_size"]
    reason = f"other settings ({', '.join(changed)})" if changed else "input masks that have changed since"
    raise OutputError(
        f"{job.sequence.name} was prepared with {reason}",
        job.sdf_file,
        "rerun with --force to redo it, or choose another DATA folder",
    )


def _samples_valid(job: SequenceJob) -> bool:
    try:
        with h5py.File(job.samples_file, "r") as h5:
            return str(h5.attrs["samples_hash"]) == job.samples_hash
    except (OSError, KeyError):
        return False


def _read_manifest(layout: DataDir) -> dict[str, Any]:
    try:
        return json.loads(layout.manifest.read_text())
    except (OSError, ValueError):
        return {}


def _shards_present(layout: DataDir, manifest: dict[str, Any]) -> bool:
    shards = manifest.get("shards") or []
    listed = {layout.root / s["file"] for s in shards}
    return bool(shards) and all(p.exists() for p in listed) and set(layout.shard_files()) == listed


def _as_list(voxel_size: VoxelSize | None) -> list[float] | None:
    return None if voxel_size is None else [float(v) for v in voxel_size]


# --------------------------------------------------------------------------------------------
# One sequence (runs in a worker process)
# --------------------------------------------------------------------------------------------


def run_job(job: SequenceJob, advance: Advance = lambda n: None) -> None:
    """Compute (or re-sample) one sequence, frame by frame; files appear only when complete."""
    try:
        if job.mode == "compute":
            _compute(job, advance)
        else:
            _resample(job, advance)
    except CellgenError:
        raise
    except OSError as err:
        raise OutputError("cannot write prepared data", job.sdf_file.parent, f"{err}") from None


def _compute(job: SequenceJob, advance: Advance) -> None:
    cfg, seq = job.cfg, job.sequence
    n_frames = len(job.frames)
    zoom = isotropic_zoom(job.voxel_size, cfg.scale)
    factors = []
    with atomic_path(job.samples_file) as samples_tmp, atomic_path(job.sdf_file) as sdf_tmp:
        with h5py.File(samples_tmp, "w") as samples_h5, h5py.File(sdf_tmp, "w") as sdf_h5:
            samples = _SamplesWriter(samples_h5, job, n_frames)
            sdf_vid = sdf_h5.create_dataset(
                "sdf_vid",
                shape=(n_frames, *cfg.size),
                dtype="f4",
                chunks=(1, *cfg.size),
                compression="gzip",
                compression_opts=_GZIP_LEVEL,
            )
            for f, source_frame in enumerate(job.frames):
                where = f"{seq.name} frame {source_frame} ({seq.file_of(source_frame)})"
                result = frame_sdf(seq.read_frame(source_frame), cfg, zoom, where)
                sdf_vid[f] = result.sdf
                factors.append(result.factor)
                samples.add(f, result.sdf)
                advance(1)
            _write_sdf_attrs(sdf_h5, job, factors)


def _resample(job: SequenceJob, advance: Advance) -> None:
    with atomic_path(job.samples_file) as samples_tmp:
        with h5py.File(samples_tmp, "w") as samples_h5, h5py.File(job.sdf_file, "r") as sdf_h5:
            sdf_vid = sdf_h5["sdf_vid"]
            samples = _SamplesWriter(samples_h5, job, len(sdf_vid))
            for f in range(len(sdf_vid)):
                samples.add(f, sdf_vid[f])
                advance(1)


class _SamplesWriter:
    """One sequence's sampled points: frame f holds rows [f * n, (f + 1) * n)."""

    def __init__(self, h5: h5py.File, job: SequenceJob, n_frames: int):
        self.job = job
        self.n_frames = n_frames
        self.n = points_per_frame(job.cfg.size, job.cfg.sample_fraction)
        rows = min(self.n, 1 << 16)
        self.xyzt = h5.create_dataset("xyzt", shape=(n_frames * self.n, 4), dtype="f4", chunks=(rows, 4))
        self.sdf = h5.create_dataset("sdf", shape=(n_frames * self.n,), dtype="f4", chunks=(rows,))
        h5.attrs["samples_hash"] = job.samples_hash
        h5.attrs["points_per_frame"] = self.n

    def add(self, frame: int, sdf: np.ndarray) -> None:
        cfg = self.job.cfg
        rng = sampling_rng(cfg.seed, self.job.index, frame)
        xyzt, values = sample_frame(sdf, frame_time(frame, self.n_frames), cfg, rng)
        rows = slice(frame * self.n, (frame + 1) * self.n)
        self.xyzt[rows] = xyzt
        self.sdf[rows] = values


def _write_sdf_attrs(h5: h5py.File, job: SequenceJob, factors: Sequence[float]) -> None:
    seq = job.sequence
    h5.attrs["format"] = FORMAT
    h5.attrs["sequence"] = seq.name
    h5.attrs["sources"] = json.dumps([str(p) for p in seq.sources])
    h5.attrs["source_frames"] = np.array(job.frames, dtype=np.int64)
    h5.attrs["source_shape"] = np.array(seq.frame_shape, dtype=np.int64)
    h5.attrs["voxel_size"] = json.dumps(_as_list(job.voxel_size))
    h5.attrs["clamp"] = job.cfg.clamp
    h5.attrs["normalisation"] = job.cfg.normalisation
    h5.attrs["norm_factors"] = np.array(factors, dtype=np.float64)
    h5.attrs["settings"] = json.dumps({**job.cfg.model_dump(mode="json"), "voxel_size": _as_list(job.voxel_size)})
    h5.attrs["sdf_hash"] = job.sdf_hash
    h5.attrs["cellgen_version"] = __version__


def _sequence_record(layout: DataDir, job: SequenceJob) -> dict[str, Any]:
    """The manifest entry of one sequence, from its finished sdf file."""
    with h5py.File(job.sdf_file, "r") as h5:
        return {
            "name": job.sequence.name,
            "frames": int(h5["sdf_vid"].shape[0]),
            "sources": json.loads(h5.attrs["sources"]),
            "source_frames": h5.attrs["source_frames"].tolist(),
            "sdf_file": str(job.sdf_file.relative_to(layout.root)),
            "norm_factors": h5.attrs["norm_factors"].tolist(),
            "voxel_size": json.loads(h5.attrs["voxel_size"]),
            "source_shape": h5.attrs["source_shape"].tolist(),
        }


# --------------------------------------------------------------------------------------------
# Running the jobs: in this process, or one worker process per sequence
# --------------------------------------------------------------------------------------------

_progress_queue: Any = None


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _run_in_worker(job: SequenceJob) -> None:
    run_job(job, _progress_queue.put)


def _run_jobs(jobs: Sequence[SequenceJob], workers: int, advance: Advance) -> None:
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            run_job(job, advance)
        return
    # spawn, not fork: the parent may hold threads (Ray, progress bars) that fork would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(progress_queue,))
    try:
        pending = {pool.submit(_run_in_worker, job) for job in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress_queue, advance)
            for future in done:
                future.result()  # re-raises a worker's error here
        _drain(progress_queue, advance)
    except BrokenProcessPool:
        raise CellgenError(
            "a worker process died while preparing", None, f"out of memory? try fewer --workers than {workers}"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(progress_queue: Any, advance: Advance) -> None:
    while True:
        try:
            advance(progress_queue.get_nowait())
        except queue.Empty:
            return


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Advance]:
    """A rich progress bar on stderr (shown only on a terminal); yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def shard_assignment(frame_counts: Sequence[int], n_shards: int) -> list[list[tuple[int, int]]]:
    """(sequence, frame) pairs per shard: a global sequence-major frame order dealt round-robin,
    so every shard holds frames of many sequences and shard sizes differ by at most one frame."""
    order = [(s, f) for s, count in enumerate(frame_counts) for f in range(count)]
    return [order[k::n_shards] for k in range(n_shards)]


def _write_shards(
    layout: DataDir,
    jobs: Sequence[SequenceJob],
    records: Sequence[dict[str, Any]],
    n_shards: int,
    settings_hash: str,
    n_points: int,
    advance: Advance,
) -> list[dict[str, Any]]:
    n_shards = min(n_shards, sum(r["frames"] for r in records))
    assignment = shard_assignment([r["frames"] for r in records], n_shards)
    for stale in layout.shard_files():
        stale.unlink()
    shards = []
    with contextlib.ExitStack() as stack:
        samples = [stack.enter_context(h5py.File(job.samples_file, "r")) for job in jobs]
        for k, frames in enumerate(assignment):
            with shard_writer(layout.shard_file(k), k, settings_hash, len(frames) * n_points) as writer:
                for s, f in frames:
                    rows = slice(f * n_points, (f + 1) * n_points)
                    writer.add(FramePoints(s, f, samples[s]["xyzt"][rows], samples[s]["sdf"][rows]))
                    advance(1)
            shards.append(
                {"file": str(layout.shard_file(k).relative_to(layout.root)), "frames": len(frames), "points": writer.written}
            )
    return shards
