"""Figures of the evaluation report (matplotlib, Agg backend, PNGs written atomically)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cellgen.evaluate.compare import finite
from cellgen.io import atomic_path

SET_COLOURS = {"real": "#1f77b4", "synthetic": "#d62728"}


def panels(n_panels: int, columns: int = 4, panel: tuple[float, float] = (3.4, 2.6)):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(n_panels / columns))
    cols = min(columns, max(1, n_panels))
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), squeeze=False)
    for ax in axes.ravel()[n_panels:]:
        ax.set_visible(False)
    # Fixed margins in inches: tight_layout costs more than drawing the figure.
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.55 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.45 / height,
        wspace=0.3, hspace=0.55,
    )
    return fig, axes.ravel()


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def plot_distributions(
    values: Mapping[str, Mapping[str, Sequence[float]]], names: Sequence[str], path: Path
) -> None:
    """One panel per descriptor: histograms of each set (``values[set][descriptor]``), shared bins."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = panels(len(names))
    for ax, name in zip(axes, names):
        samples = {s: finite(v[name]) for s, v in values.items()}
        pooled = np.concatenate([v for v in samples.values()] or [np.zeros(0)])
        if len(pooled) == 0:
            ax.set_title(f"{name} (no values)", fontsize=9)
            continue
        lo, hi = float(pooled.min()), float(pooled.max())
        integer = np.all(pooled == np.round(pooled)) and hi - lo < 30
        bins = np.arange(lo - 0.5, hi + 1.5) if integer else np.linspace(lo, hi if hi > lo else lo + 1, 25)
        for set_name, v in samples.items():
            if len(v):
                ax.hist(
                    v, bins=bins, density=True, histtype="stepfilled", alpha=0.45,
                    color=SET_COLOURS.get(set_name), label=set_name,
                )
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=bool(integer)))
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def plot_over_time(
    series: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], names: Sequence[str], path: Path
) -> None:
    """One panel per descriptor: each set's mean +- std over normalised time.

    ``series[set][descriptor] = (times, values)`` with one entry per frame of every sequence.
    """
    fig, axes = panels(len(names))
    for ax, name in zip(axes, names):
        for set_name, per_descriptor in series.items():
            times, vals = per_descriptor[name]
            keep = np.isfinite(vals)
            times, vals = np.round(times[keep], 3), vals[keep]
            if len(vals) == 0:
                continue
            grid = np.unique(times)
            mean = np.array([vals[times == t].mean() for t in grid])
            std = np.array([vals[times == t].std() for t in grid])
            colour = SET_COLOURS.get(set_name)
            ax.plot(grid, mean, color=colour, label=set_name, lw=1.5)
            ax.fill_between(grid, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("time (normalised)", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def plot_nearest(
    synthetic_to_real: Sequence[float], real_to_real: Sequence[float], threshold: float, path: Path
) -> None:
    """Nearest-real Dice of the synthetic sequences next to the real set's own nearest-other Dice."""
    fig, axes = panels(1, columns=1, panel=(5.0, 3.2))
    ax = axes[0]
    bins = np.linspace(0.0, 1.0, 41)
    for label, v, colour in (
        ("real -> nearest other real", finite(real_to_real), SET_COLOURS["real"]),
        ("synthetic -> nearest real", finite(synthetic_to_real), SET_COLOURS["synthetic"]),
    ):
        if len(v):
            ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.5, color=colour, label=label)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"near copy (Dice >= {threshold:g})")
    ax.set_xlabel("mean Dice over frames", fontsize=8)
    ax.set_ylabel("sequences", fontsize=8)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_pairs(frames: np.ndarray, dice: np.ndarray, hausdorff: np.ndarray, path: Path) -> None:
    """Dice and Hausdorff distance of matched pairs against the frame index (all pairs pooled)."""
    fig, axes = panels(2, columns=2)
    for ax, values, name in ((axes[0], dice, "Dice"), (axes[1], hausdorff, "Hausdorff distance")):
        keep = np.isfinite(values)
        ax.scatter(frames[keep], values[keep], s=6, alpha=0.5, color=SET_COLOURS["synthetic"])
        ax.set_xlabel("frame", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    save_figure(fig, path)
