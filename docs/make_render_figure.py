"""Make docs/img/render_pairs.png: synthetic microscopy images of the three phantom lines above
their masks (the figure of docs/render.md).

    .venv/bin/python docs/make_render_figure.py [--size 96] [--out docs/img/render_pairs.png]

Phantoms (cellgen.data.phantoms) are written to a temporary folder, rendered with the default
render settings (cellgen.render) in every view, and a few pairs are drawn.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cellgen.config import RenderConfig
from cellgen.data.phantoms import write_phantoms
from cellgen.io import read_tiff
from cellgen.layout import RenderDir
from cellgen.render.figure import pairs_figure
from cellgen.render.stage import RenderRequest, render_masks

# (line, frame of 3, view): the plat cell, the cele cell after division, the filo cell's MIP,
# and the in-focus slice through the filo cell (the nucleus shows as the dim middle).
PANELS = (("plat", 1, "mip"), ("cele", 2, "mip"), ("filo", 2, "mip"), ("filo", 2, "slice"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="grid side of the phantoms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img" / "render_pairs.png")
    args = parser.parse_args()
    settings = RenderConfig(mode="all", seed=args.seed)
    pairs, titles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for line in sorted({line for line, _, _ in PANELS}):
            masks, out = Path(tmp) / line, Path(tmp) / f"{line}_render"
            write_phantoms(masks, line=line, n=1, frames=3, size=(args.size,) * 3, seed=args.seed)
            render_masks(RenderRequest(masks=masks, out=out, settings=settings, progress=False))
        for line, frame, view in PANELS:
            folder = RenderDir(Path(tmp) / f"{line}_render").sequence(view, "seq_000")
            pairs.append((read_tiff(folder.image(frame))[0], read_tiff(folder.mask(frame))[0]))
            titles.append(f"{line}, t{frame}, {view}")
        print(pairs_figure(pairs, args.out, titles))


if __name__ == "__main__":
    main()
