"""Figures of rendered image/mask pairs (matplotlib, Agg): images on top, their masks below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellgen.errors import InputDataError
from cellgen.io import atomic_path, read_tiff
from cellgen.layout import RenderDir


def pairs_figure(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], path: str | Path, titles: Sequence[str] | None = None
) -> Path:
    """Write a PNG with one column per 2D (image, mask) pair: the image above the mask, the
    mask's outline drawn on the image. Images are shown between their 0.5 and 99.8 percentiles
    with gamma 0.5 (square root), so faint thin structures stay visible next to bright bodies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    if not pairs:
        raise ValueError("no image/mask pairs to draw")
    columns = len(pairs)
    fig, axes = plt.subplots(2, columns, figsize=(2.6 * columns, 5.4), squeeze=False)
    for column, (image, mask) in enumerate(pairs):
        low, high = np.percentile(image, (0.5, 99.8))
        top, bottom = axes[0, column], axes[1, column]
        stretch = PowerNorm(gamma=0.5, vmin=low, vmax=max(high, low + 1), clip=True)
        top.imshow(image, cmap="gray", norm=stretch, interpolation="nearest")
        top.contour(mask > 0, levels=[0.5], colors=["#ff7f0e"], linewidths=0.4, alpha=0.45)
        bottom.imshow(mask > 0, cmap="gray", interpolation="nearest")
        if titles is not None:
            top.set_title(titles[column], fontsize=9)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("synthetic image (gamma 0.5)", fontsize=9)
    axes[1, 0].set_ylabel("mask", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def figure_from_render(out: str | Path, path: str | Path, max_pairs: int = 4) -> Path:
    """A figure of the first frame of up to ``max_pairs`` sequences rendered into ``out``
    (the 'mip' view, else 'slice', else the MIP of the '3d' view)."""
    layout = RenderDir(out)
    for view in ("mip", "slice", "3d"):
        folder = layout.view(view)
        if not folder.is_dir():
            continue
        pairs, titles = [], []
        for sequence in sorted(p for p in folder.iterdir() if p.is_dir()):
            frames = layout.sequence(view, sequence.name)
            if not (frames.image(0).exists() and frames.mask(0).exists()):
                continue
            image, _ = read_tiff(frames.image(0))
            mask, _ = read_tiff(frames.mask(0))
            if view == "3d":
                image, mask = image.max(axis=0), mask.max(axis=0)
            pairs.append((image, mask))
            titles.append(f"{sequence.name} t0 ({view})")
            if len(pairs) == max_pairs:
                break
        if pairs:
            return pairs_figure(pairs, path, titles)
    raise InputDataError("no rendered image/mask pairs to draw", out, "render some first")
