"""Seconds per phantom frame, per cell line, against baselines measured in the same run.

    .venv/bin/python benchmarks/phantoms.py [--size 256] [--repeat 3]

For each line one frame (the last, the largest) is rendered
- restricted: every primitive evaluated only inside its bounding box (what cellgen does),
- whole grid: the same primitives evaluated on every voxel (the baseline; the masks must match),
and, as yardsticks, one scipy Euclidean distance transform of a frame of the same grid (``prepare``
needs two per frame; measured once, on the plat frame) and writing each frame as a zlib TIFF (what
``cellgen phantoms`` also does per frame).
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellgen.data.phantoms import LINES, Grid, make_phantom
from cellgen.io import write_mask_tiff


def seconds(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls."""
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="cube side in voxels")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (restricted)")
    args = parser.parse_args()
    size = (args.size,) * 3
    restricted, whole = Grid(size), Grid(size, restrict=False)

    rows = []
    edt = None
    with tempfile.TemporaryDirectory() as tmp:
        for line in LINES:
            cell = make_phantom(line, 0, size, seed=0)
            mask, reference = cell.render(restricted, 1.0), cell.render(whole, 1.0)
            same = bool(np.array_equal(mask, reference))
            fast = seconds(lambda: cell.render(restricted, 1.0), args.repeat)
            slow = seconds(lambda: cell.render(whole, 1.0))
            if edt is None:
                edt = seconds(lambda: ndimage.distance_transform_edt(mask))
            tiff = seconds(lambda: write_mask_tiff(Path(tmp) / f"{line}.tif", mask))
            rows.append((line, fast, slow, edt, tiff, int(mask.sum()), same))

    print(f"phantom frame at {args.size}^3, seconds (restricted: best of {args.repeat})")
    columns = [("line", 5), ("restricted", 10), ("whole grid", 10), ("speed-up", 8), ("scipy EDT", 9),
               ("EDT/render", 10), ("TIFF write", 10), ("voxels", 9), ("same mask", 9)]  # fmt: skip
    header = " ".join(f"{name:<{width}}" if i == 0 else f"{name:>{width}}" for i, (name, width) in enumerate(columns))
    print(header)
    print("-" * len(header))
    for line, fast, slow, edt, tiff, voxels, same in rows:
        print(
            f"{line:<5} {fast:>10.3f} {slow:>10.3f} {slow / fast:>7.1f}x {edt:>9.3f} "
            f"{edt / fast:>9.1f}x {tiff:>10.3f} {voxels:>9d} {str(same):>9}"
        )


if __name__ == "__main__":
    main()
