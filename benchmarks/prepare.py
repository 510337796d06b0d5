"""Seconds per prepared frame and peak memory of ``cellgen prepare``, against reference-style baselines.

    .venv/bin/python benchmarks/prepare.py [--size 256] [--frames 30] [--repeat 3]

1. One frame (a Platynereis-like phantom cell), on one core:
   - cellgen: ``frame_sdf`` (edt, only a box around the cell) + ``sample_frame``;
   - reference-style: largest component, scipy distance_transform_edt of the whole grid for the
     outside and the inside, max-abs normalisation, the same sampling. Both must agree.
2. Peak RSS while preparing one size^3 x frames sequence, each in a fresh subprocess:
   - cellgen: ``prepare()`` (streams frame by frame into the sdf file and the samples);
   - whole-sequence baseline: the same per-frame SDF, but every frame's volume and points are
     kept in RAM and written at the end (what the reference does when it loads its data).
Targets: <= 2 s per 256^3 frame on one core; peak RSS <= 1.5 GB for 256^3 x 30.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from cellgen.config import DataConfig  # noqa: E402
from cellgen.data.sdf import (  # noqa: E402
    frame_sdf,
    frame_time,
    place_in_grid,
    remove_debris,
    sample_frame,
    sampling_rng,
)


def reference_frame_sdf(mask: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The reference's recipe: largest component, whole-grid scipy EDTs, d_out - d_in, / max|sdf|."""
    grid = place_in_grid(remove_debris(mask, 0.0, largest_only=True), cfg.size)
    d_out = np.minimum(ndimage.distance_transform_edt(~grid) - 0.5, cfg.clamp)
    d_in = ndimage.distance_transform_edt(np.pad(grid, 1))[1:-1, 1:-1, 1:-1] - 0.5
    sdf = np.where(grid, -d_in, d_out).astype(np.float32)
    return sdf / np.abs(sdf).max()


def best_time(fn, repeat: int):
    """Best (wall, CPU) seconds of ``repeat`` runs. CPU time is the fair figure on a shared
    machine: with other work running, wall time counts the waits for a core."""
    best, result = (float("inf"), float("inf")), None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best, result


def per_frame(mask: np.ndarray, cfg: DataConfig, repeat: int) -> list[tuple[str, float]]:
    def ours():
        result = frame_sdf(mask, cfg, where="benchmark")
        sample_frame(result.sdf, 0.0, cfg, sampling_rng(0, 0, 0))
        return result.sdf

    def reference():
        sdf = reference_frame_sdf(mask, cfg)
        sample_frame(sdf, 0.0, cfg, sampling_rng(0, 0, 0))
        return sdf

    fast, sdf_ours = best_time(ours, repeat)
    slow, sdf_ref = best_time(reference, 1)
    agree = float(np.abs(sdf_ours - sdf_ref).max())
    if agree > 1e-5:
        raise SystemExit(f"cellgen and reference SDFs differ by {agree}")
    return [("cellgen (edt, box around the cell)", fast), ("reference-style (scipy EDT, whole grid)", slow)]


# --------------------------------------------------------------------------------------------
# Peak RSS, measured in child processes
# --------------------------------------------------------------------------------------------


def child(kind: str, masks: Path, data: Path, size: int) -> None:
    """Run one approach and print its wall time and peak RSS as JSON (the parent reads it)."""
    cfg = DataConfig(size=size, workers=1, shards=4)
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "cellgen":
        from cellgen.data.prepare import prepare

        prepare(masks, data, cfg, progress=False)
    else:
        from cellgen.data.masks import discover_sequences

        (sequence,) = discover_sequences(masks)
        volumes, points = [], []
        for f in range(sequence.n_frames):
            result = frame_sdf(sequence.read_frame(f), cfg)
            volumes.append(result.sdf)
            points.append(sample_frame(result.sdf, frame_time(f, sequence.n_frames), cfg, sampling_rng(0, 0, f)))
        video = np.stack(volumes)
        data.mkdir(parents=True, exist_ok=True)
        with h5py.File(data / "sequence.h5", "w") as h5:
            h5.create_dataset("sdf_vid", data=video, chunks=(1, size, size, size), compression="gzip", compression_opts=1)
            h5.create_dataset("xyzt", data=np.concatenate([p[0] for p in points]))
            h5.create_dataset("sdf", data=np.concatenate([p[1] for p in points]))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM starts afresh at exec; getrusage's
    ru_maxrss would also count the parent's memory at the fork that started us."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(kind: str, masks: Path, data: Path, size: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--masks", str(masks), "--data", str(data), "--size", str(size)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = "  ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths)))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(f"{x:<{w}}" if i == 0 else f"{x:>{w}}" for i, (x, w) in enumerate(zip(row, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="cube side of masks and grid, in voxels")
    parser.add_argument("--frames", type=int, default=30, help="frames of the sequence for the memory test")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (cellgen per frame)")
    parser.add_argument("--child", choices=["cellgen", "whole-sequence"], help=argparse.SUPPRESS)
    parser.add_argument("--masks", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.masks, args.data, args.size)
        return

    from cellgen.data.phantoms import write_phantoms

    size = (args.size,) * 3
    cfg = DataConfig(size=size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"writing a {args.size}^3 x {args.frames} phantom sequence ...", file=sys.stderr)
        (folder,) = write_phantoms(root / "masks", "plat", n=1, frames=args.frames, size=size, seed=0)
        from cellgen.data.masks import discover_sequences

        mask = discover_sequences(root / "masks")[0].read_frame(args.frames - 1)
        frame_rows = per_frame(mask, cfg, args.repeat)
        print("measuring peak memory ...", file=sys.stderr)
        ours = measure("cellgen", root / "masks", root / "data-cellgen", args.size)
        whole = measure("whole-sequence", root / "masks", root / "data-whole", args.size)

    (base_wall, base_cpu) = frame_rows[1][1]
    table(
        f"one {args.size}^3 frame, SDF + sampling ({round(cfg.sample_fraction * np.prod(size))} points), one core",
        ("approach", "wall s", "CPU s", "speed-up (CPU)"),
        [(name, f"{wall:.2f}", f"{cpu:.2f}", f"{base_cpu / cpu:.1f}x") for name, (wall, cpu) in frame_rows],
    )
    table(
        f"preparing one {args.size}^3 x {args.frames} sequence (read, SDF, sample, write)",
        ("approach", "peak RSS MB", "RSS ratio", "wall s", "CPU s/frame"),
        [
            (name, f"{m['peak_mb']:.0f}", f"{m['peak_mb'] / whole['peak_mb']:.2f}", f"{m['seconds']:.1f}",
             f"{m['cpu'] / args.frames:.2f}")  # fmt: skip
            for name, m in (("cellgen prepare (streaming)", ours), ("whole sequence in RAM", whole))
        ],
    )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times include waiting)")


if __name__ == "__main__":
    main()
