"""The ``cellgen evaluate`` stage: real vs synthetic mask sequences -> REPORT/.

REPORT/ holds::

    descriptors.csv     one row per set, sequence and frame: shape descriptors (descriptors.py)
    sequences.csv       one row per set and sequence: growth rate, divisions, change per frame
    pairs.csv           with --pairs: Dice, IoU, surface distances of same-named sequences
    summary.json        distribution distances, memorisation check, diversity, pair summary
    report.md           the tables and the figures below, for a human
    distributions.png   per-descriptor histograms, real vs synthetic
    over_time.png       per-descriptor mean +- std over normalised time
    nearest.png         nearest-real Dice of synthetic sequences vs the real set's own
    pairs.png           with --pairs: Dice and Hausdorff distance per frame
    cache/              per-sequence results; a rerun only reads sequences whose files changed

Sequences are analysed in parallel (one process per sequence, ``workers`` at a time), each
streaming its frames one at a time, so memory is a few frames per worker.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellgen import __version__
from cellgen.errors import InputDataError
from cellgen.evaluate import compare
from cellgen.evaluate.compare import NEAR_COPY_DICE, CompactSequence
from cellgen.evaluate.descriptors import (
    FRAME_DESCRIPTORS,
    SEQUENCE_DESCRIPTORS,
    frame_descriptors,
    sequence_descriptors,
)
from cellgen.evaluate.overlap import PAIR_METRICS, dice, pair_metrics
from cellgen.io import (
    VoxelSize,
    atomic_path,
    ensure_writable_dir,
    sha256_json,
    write_json_atomic,
    write_text_atomic,
)

from cellgen.data.masks import MaskSequence, discover_sequences

SETS = ("real", "synthetic")
CACHE_VERSION = 2
"""Bump when a descriptor's definition changes: cached per-sequence results become stale."""


@dataclass(frozen=True)
class SequenceTask:
    set_name: str
    sequence: MaskSequence
    voxel_size: VoxelSize
    compare_size: int
    cache_file: Path
    cache_key: str


@dataclass
class SequenceResult:
    set_name: str
    name: str
    voxel_size: VoxelSize
    frame_shape: tuple[int, int, int]
    rows: list[dict[str, Any]]  # one per frame: frame, time, FRAME_DESCRIPTORS
    temporal: dict[str, float]  # SEQUENCE_DESCRIPTORS
    compact: CompactSequence


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def evaluate(
    real: Path,
    synthetic: Path,
    out: Path,
    *,
    voxel_size: VoxelSize | None = None,
    workers: int = 1,
    pairs: bool = False,
    compare_size: int = 64,
    near_copy_dice: float = NEAR_COPY_DICE,
    force: bool = False,
) -> dict[str, Any]:
    """Compare two folders of mask sequences; write REPORT files into ``out``; return the summary.

    ``voxel_size`` (z, y, x) overrides the TIFF metadata of both sets. ``compare_size`` is the
    largest grid side used for sequence-to-sequence Dice (memorisation, diversity). ``force``
    ignores cached per-sequence results.
    """
    sets = {"real": discover_sequences(Path(real)), "synthetic": discover_sequences(Path(synthetic))}
    if pairs:
        check_pairs(sets["real"], sets["synthetic"])
    out = ensure_writable_dir(out)

    tasks = [
        _sequence_task(set_name, seq, voxel_size, compare_size, out)
        for set_name in SETS
        for seq in sets[set_name]
    ]
    results: list[SequenceResult] = run_parallel(
        functools.partial(analyse_sequence_cached, reuse=not force),
        tasks,
        workers,
        weights=[t.sequence.n_frames for t in tasks],
        label="descriptors",
    )
    by_set = {s: [r for r in results if r.set_name == s] for s in SETS}

    write_descriptor_csvs(out, by_set)
    summary: dict[str, Any] = {
        "format": 1,
        "cellgen_version": __version__,
        "real": _set_info(Path(real), by_set["real"], voxel_size),
        "synthetic": _set_info(Path(synthetic), by_set["synthetic"], voxel_size),
        "descriptors": compare.compare_distributions(
            _frame_values(by_set["real"]), _frame_values(by_set["synthetic"])
        ),
        "sequence_descriptors": compare.compare_distributions(
            _sequence_values(by_set["real"]), _sequence_values(by_set["synthetic"])
        ),
        **similarity(by_set, compare_size, near_copy_dice),
    }
    pair_rows: list[dict[str, Any]] = []
    if pairs:
        pair_rows = evaluate_pairs(sets, voxel_size, workers)
        write_csv(out / "pairs.csv", ["sequence", "frame", *PAIR_METRICS], pair_rows)
        summary["pairs"] = summarise_pairs(pair_rows)

    write_figures(out, by_set, summary, pair_rows)
    write_json_atomic(out / "summary.json", json_safe(summary))
    write_text_atomic(out / "report.md", render_report(summary, pairs=pairs))
    return summary


def check_pairs(real: Sequence[MaskSequence], synthetic: Sequence[MaskSequence]) -> None:
    """Pairs need the same sequence names in both sets, with the same frame counts and shapes."""
    real_names = {s.name: s for s in real}
    synth_names = {s.name: s for s in synthetic}
    missing = sorted(set(real_names) ^ set(synth_names))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputDataError(
            "--pairs needs the same sequence names in both sets; unmatched",
            f"{shown} ({len(missing)} in all)",
            "compare e.g. real masks with their reconstructions",
        )
    for name, seq in real_names.items():
        other = synth_names[name]
        if seq.n_frames != other.n_frames:
            raise InputDataError(
                "--pairs needs the same number of frames in both sets",
                f"{name}: {seq.n_frames} real vs {other.n_frames} synthetic",
            )
        if seq.frame_shape != other.frame_shape:
            raise InputDataError(
                "--pairs needs masks on the same grid in both sets",
                f"{name}: real {seq.frame_shape} vs synthetic {other.frame_shape}",
            )


# --------------------------------------------------------------------------------------------
# One sequence (runs in a worker process)
# --------------------------------------------------------------------------------------------


def analyse_sequence(task: SequenceTask) -> SequenceResult:
    """Descriptors of every frame, temporal descriptors and the compact copy of one sequence."""
    seq = task.sequence
    n = seq.n_frames
    rows: list[dict[str, Any]] = []
    consecutive: list[float] = []
    small: list[np.ndarray] = []
    previous: np.ndarray | None = None
    shape = seq.frame_shape
    grid = compare.compare_grid([shape], task.compare_size)
    for t in range(n):
        frame = seq.read_frame(t) != 0  # read_frame checks the shape
        rows.append({"frame": t, "time": frame_time(t, n), **frame_descriptors(frame, task.voxel_size)})
        if previous is not None:
            consecutive.append(dice(previous, frame))
        small.append(compare.resample_nearest(frame, grid))
        previous = frame
    temporal = sequence_descriptors([r["volume"] for r in rows], [r["components"] for r in rows], consecutive)
    compact = CompactSequence.from_frames(seq.name, compare.to_pose(np.stack(small)), grid)
    return SequenceResult(task.set_name, seq.name, task.voxel_size, shape, rows, temporal, compact)


def analyse_sequence_cached(task: SequenceTask, reuse: bool = True) -> SequenceResult:
    """``analyse_sequence``, reusing the cached result when the sequence's files are unchanged
    (unless ``reuse`` is False); a fresh result replaces the cached one."""
    cached = _load_cached(task) if reuse else None
    if cached is not None:
        return cached
    result = analyse_sequence(task)
    _save_cached(task, result)
    return result


def frame_time(frame: int, n_frames: int) -> float:
    """Normalised time of a frame: -1 first, +1 last, 0 for a single frame."""
    return -1.0 + 2.0 * frame / (n_frames - 1) if n_frames > 1 else 0.0


def _sequence_task(
    set_name: str, seq: MaskSequence, voxel_size: VoxelSize | None, compare_size: int, out: Path
) -> SequenceTask:
    size = _voxel_size(seq, voxel_size)
    files = []
    for source in seq.sources:
        stat = Path(source).stat()
        files.append([str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns])
    key = sha256_json(
        {"version": CACHE_VERSION, "files": files, "voxel_size": size, "compare_size": compare_size}
    )
    cache_file = out / "cache" / set_name / f"{seq.name}.npz"
    return SequenceTask(set_name, seq, size, compare_size, cache_file, key)


def _voxel_size(seq: MaskSequence, override: VoxelSize | None) -> VoxelSize:
    """The override, else the files' metadata, else isotropic unit voxels."""
    z, y, x = (float(v) for v in (override or seq.voxel_size or (1.0, 1.0, 1.0)))
    return (z, y, x)


def _save_cached(task: SequenceTask, result: SequenceResult) -> None:
    meta = {
        "key": task.cache_key,
        "frame_shape": result.frame_shape,
        "compact_shape": result.compact.shape,
        "rows": result.rows,
        "temporal": result.temporal,
    }
    with atomic_path(task.cache_file) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), bits=result.compact.bits)


def _load_cached(task: SequenceTask) -> SequenceResult | None:
    if not task.cache_file.is_file():
        return None
    try:
        with np.load(task.cache_file, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            bits = data["bits"]
    except (OSError, ValueError, KeyError):  # unreadable cache: recompute
        return None
    if meta.get("key") != task.cache_key:
        return None
    z, y, x = meta["compact_shape"]
    compact = CompactSequence(task.sequence.name, (z, y, x), bits, np.bitwise_count(bits).sum(axis=1))
    fz, fy, fx = meta["frame_shape"]
    return SequenceResult(
        task.set_name,
        task.sequence.name,
        task.voxel_size,
        (fz, fy, fx),
        meta["rows"],
        meta["temporal"],
        compact,
    )


# --------------------------------------------------------------------------------------------
# Set-level comparisons
# --------------------------------------------------------------------------------------------


def similarity(
    by_set: dict[str, list[SequenceResult]], compare_size: int, near_copy_dice: float
) -> dict[str, Any]:
    """Memorisation (nearest real per synthetic sequence) and diversity of both sets, by Dice."""
    everything = [r.compact for rs in by_set.values() for r in rs]
    grid = compare.compare_grid([c.shape for c in everything], compare_size)
    real = [r.compact.resampled(grid) for r in by_set["real"]]
    synth = [r.compact.resampled(grid) for r in by_set["synthetic"]]
    synth_vs_real = compare.dice_matrix(synth, real)
    real_vs_real = compare.dice_matrix(real, real)
    synth_vs_synth = compare.dice_matrix(synth, synth)
    nearest = compare.nearest_real(synth_vs_real, near_copy_dice)
    for item, seq in zip(nearest, synth):
        item["synthetic"] = seq.name
        item["real"] = real[item.pop("index")].name
    real_nearest = compare.nearest_other(real_vs_real)
    synth_nearest_dice = [n["dice"] for n in nearest]
    return {
        "memorisation": {
            "grid": list(grid),
            "near_copy_dice": near_copy_dice,
            "near_copies": sum(n["near_copy"] for n in nearest),
            "nearest_dice": compare.summarise(synth_nearest_dice),
            "real_nearest_other_dice": compare.summarise(real_nearest),
            "nearest": nearest,
            "real_nearest_other": [
                {"real": seq.name, "dice": float(d)} for seq, d in zip(real, real_nearest)
            ],
        },
        "diversity": {
            "grid": list(grid),
            "real": compare.diversity(real_vs_real),
            "synthetic": compare.diversity(synth_vs_synth),
        },
    }


def _frame_values(results: Sequence[SequenceResult]) -> dict[str, list[float]]:
    return {name: [row[name] for r in results for row in r.rows] for name in FRAME_DESCRIPTORS}


def _sequence_values(results: Sequence[SequenceResult]) -> dict[str, list[float]]:
    return {name: [r.temporal[name] for r in results] for name in SEQUENCE_DESCRIPTORS}


def _set_info(path: Path, results: Sequence[SequenceResult], override: VoxelSize | None) -> dict[str, Any]:
    sizes = sorted({tuple(r.voxel_size) for r in results})
    shapes = sorted({tuple(r.frame_shape) for r in results})
    return {
        "path": str(path),
        "sequences": len(results),
        "frames": sum(len(r.rows) for r in results),
        "frame_shapes": [list(s) for s in shapes],
        "voxel_sizes": [list(s) for s in sizes],
        "voxel_size_source": "--voxel-size" if override else "TIFF metadata (1,1,1 where absent)",
    }


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairTask:
    real: MaskSequence
    synthetic: MaskSequence
    voxel_size: VoxelSize


def analyse_pair(task: PairTask) -> list[dict[str, Any]]:
    """Dice, IoU and surface distances of every frame of two same-named sequences.

    Distances use ``task.voxel_size``: --voxel-size, else the REAL sequence's metadata.
    """
    rows = []
    for t in range(task.real.n_frames):
        a = task.real.read_frame(t) != 0
        b = task.synthetic.read_frame(t) != 0  # same shape: check_pairs compared the headers
        rows.append({"sequence": task.real.name, "frame": t, **pair_metrics(a, b, task.voxel_size)})
    return rows


def evaluate_pairs(
    sets: dict[str, list[MaskSequence]], voxel_size: VoxelSize | None, workers: int
) -> list[dict[str, Any]]:
    synth = {s.name: s for s in sets["synthetic"]}
    tasks = [PairTask(seq, synth[seq.name], _voxel_size(seq, voxel_size)) for seq in sets["real"]]
    per_pair = run_parallel(analyse_pair, tasks, workers, [t.real.n_frames for t in tasks], "pairs")
    return [row for rows in per_pair for row in rows]


def summarise_pairs(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: summary over all frames, and the mean of per-sequence means."""
    out: dict[str, Any] = {"sequences": len({r["sequence"] for r in rows}), "frames": len(rows)}
    for metric in PAIR_METRICS:
        values = [r[metric] for r in rows]
        per_seq: dict[str, list[float]] = {}
        for r in rows:
            per_seq.setdefault(r["sequence"], []).append(r[metric])
        out[metric] = {
            **compare.summarise(values),
            "non_finite": int(sum(not math.isfinite(v) for v in values)),
            "per_sequence_mean": {k: float(np.mean(v)) for k, v in per_seq.items()},
        }
    return out


# --------------------------------------------------------------------------------------------
# Parallel execution with a progress bar
# --------------------------------------------------------------------------------------------


def run_parallel(
    fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int, weights: Sequence[int], label: str
) -> list[Any]:
    """``[fn(t) for t in tasks]`` over ``workers`` processes, in order, with a progress bar.

    The first failing task's error is raised (a CellgenError stays one clean line) and the
    tasks not yet started are cancelled.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )
    results: list[Any] = [None] * len(tasks)
    with progress:
        bar = progress.add_task(label, total=sum(weights))
        if workers <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = fn(task)
                progress.advance(bar, weights[i])
            return results
        # spawn, not fork: the parent may hold threads (Ray, progress bars) that fork would copy mid-lock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
            pending = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    i = pending.pop(future)
                    error = future.exception()
                    if error is not None:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise error
                    results[i] = future.result()
                    progress.advance(bar, weights[i])
    return results


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns])
    write_text_atomic(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_descriptor_csvs(out: Path, by_set: dict[str, list[SequenceResult]]) -> None:
    frame_rows = [
        {"set": r.set_name, "sequence": r.name, **row} for s in SETS for r in by_set[s] for row in r.rows
    ]
    write_csv(out / "descriptors.csv", ["set", "sequence", "frame", "time", *FRAME_DESCRIPTORS], frame_rows)
    seq_rows = [
        {"set": r.set_name, "sequence": r.name, "frames": len(r.rows), **r.temporal}
        for s in SETS
        for r in by_set[s]
    ]
    write_csv(out / "sequences.csv", ["set", "sequence", "frames", *SEQUENCE_DESCRIPTORS], seq_rows)


def write_figures(
    out: Path,
    by_set: dict[str, list[SequenceResult]],
    summary: dict[str, Any],
    pair_rows: Sequence[dict[str, Any]],
) -> None:
    from cellgen.evaluate import plots

    values = {s: _frame_values(by_set[s]) for s in SETS}
    plots.plot_distributions(values, FRAME_DESCRIPTORS, out / "distributions.png")
    series = {
        s: {
            name: (
                np.array([row["time"] for r in by_set[s] for row in r.rows], dtype=np.float64),
                np.array([row[name] for r in by_set[s] for row in r.rows], dtype=np.float64),
            )
            for name in FRAME_DESCRIPTORS
        }
        for s in SETS
    }
    plots.plot_over_time(series, FRAME_DESCRIPTORS, out / "over_time.png")
    memo = summary["memorisation"]
    plots.plot_nearest(
        [n["dice"] for n in memo["nearest"]],
        [n["dice"] for n in memo["real_nearest_other"]],
        memo["near_copy_dice"],
        out / "nearest.png",
    )
    if pair_rows:
        plots.plot_pairs(
            np.array([r["frame"] for r in pair_rows]),
            np.array([r["dice"] for r in pair_rows], dtype=np.float64),
            np.array([r["hausdorff"] for r in pair_rows], dtype=np.float64),
            out / "pairs.png",
        )


def json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _mean_std(stats: dict[str, Any]) -> str:
    return f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}"


def render_report(summary: dict[str, Any], pairs: bool) -> str:
    """report.md: the numbers of summary.json as tables, and the figures (relative links)."""
    real, synth = summary["real"], summary["synthetic"]
    memo, div = summary["memorisation"], summary["diversity"]
    lines = [
        "# cellgen evaluation",
        "",
        f"- real: `{real['path']}`: {real['sequences']} sequences, {real['frames']} frames, "
        f"voxel size(s) (z, y, x) {real['voxel_sizes']}",
        f"- synthetic: `{synth['path']}`: {synth['sequences']} sequences, {synth['frames']} frames, "
        f"voxel size(s) (z, y, x) {synth['voxel_sizes']}",
        f"- voxel sizes from {real['voxel_size_source']}; lengths in those units, volumes cubed.",
        "",
        "## Shape descriptors per frame",
        "",
        "W1/σ: Wasserstein-1 distance divided by the real set's standard deviation (pooled when "
        "the real values are constant). KS: two-sample Kolmogorov-Smirnov statistic "
        "(0 same distribution, 1 disjoint). Definitions: `cellgen/evaluate/descriptors.py`.",
        "",
    ]
    lines += _distribution_table(summary["descriptors"])
    lines += [
        "",
        "![descriptor distributions, real vs synthetic](distributions.png)",
        "",
        "## Over time",
        "",
        "Mean ± standard deviation over the sequences at each normalised time (-1 first frame, +1 last).",
        "",
        "![descriptors over time](over_time.png)",
        "",
        "## Per sequence",
        "",
        "growth_rate: mean relative volume change per frame; divisions: rises of the component "
        "count; change: mean 1 - Dice of consecutive frames.",
        "",
    ]
    lines += _distribution_table(summary["sequence_descriptors"])
    lines += [
        "",
        "## Memorisation",
        "",
        f"Each synthetic sequence's nearest real sequence by mean Dice over frames (frames on a "
        f"common {'x'.join(map(str, memo['grid']))} grid), up to a rigid motion: every sequence is "
        f"compared in its principal-axes pose, so a turned or shifted copy is caught. **{memo['near_copies']} of "
        f"{synth['sequences']}** synthetic sequences are near copies (Dice >= {memo['near_copy_dice']:g}). "
        f"Nearest-real Dice: mean {_fmt(memo['nearest_dice']['mean'])}, max "
        f"{_fmt(memo['nearest_dice']['max'])}; for comparison, real sequences' nearest OTHER real "
        f"sequence: mean {_fmt(memo['real_nearest_other_dice']['mean'])}, max "
        f"{_fmt(memo['real_nearest_other_dice']['max'])}.",
        "",
        "![nearest-real Dice](nearest.png)",
        "",
        "| synthetic | nearest real | Dice | near copy |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {n['synthetic']} | {n['real']} | {_fmt(n['dice'])} | {'**yes**' if n['near_copy'] else 'no'} |"
        for n in memo["nearest"]
    ]
    lines += [
        "",
        "## Diversity",
        "",
        "Mean pairwise distance (1 - Dice) between the sequences of one set.",
        "",
        "| real | synthetic |",
        "|---|---|",
        f"| {_fmt(div['real'])} | {_fmt(div['synthetic'])} |",
    ]
    if pairs and "pairs" in summary:
        p = summary["pairs"]
        lines += [
            "",
            "## Matched pairs",
            "",
            f"{p['sequences']} same-named sequences, {p['frames']} frames; distances between "
            "surface voxels in the voxel size's units. Per frame in `pairs.csv`.",
            "",
            "| metric | mean ± std | median | min | max |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {_mean_std(p[m])} | {_fmt(p[m]['median'])} | {_fmt(p[m]['min'])} | {_fmt(p[m]['max'])} |"
            for m in PAIR_METRICS
        ]
        lines += ["", "![pairs](pairs.png)"]
    return "\n".join(lines) + "\n"


def _distribution_table(comparison: dict[str, Any]) -> list[str]:
    rows = ["| descriptor | real mean ± std | synthetic mean ± std | W1/σ | KS |", "|---|---|---|---|---|"]
    for name, c in comparison.items():
        rows.append(
            f"| {name} | {_mean_std(c['real'])} | {_mean_std(c['synthetic'])} | "
            f"{_fmt(c['wasserstein_normalised'], 3)} | {_fmt(c['ks'], 3)} |"
        )
    return rows
