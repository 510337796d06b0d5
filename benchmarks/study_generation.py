"""Realism, novelty and diversity of generated cells per latent strategy (issue #6's study).

    .venv/bin/python benchmarks/study_generation.py DEMO_DIR [--n 12] [--lines plat,cele,filo]
                                                    [--strategies phantoms,fitted,mix,noise,local@0.25,local@0.5,local@1.0] [--seed 1] [--out DIR]

DEMO_DIR is a finished ``cellgen demo`` folder (``<line>/masks`` = the training phantoms,
``<line>/exp`` = the trained demo model). For every line and strategy this script generates
``--n`` sequences with the training set's grid size and frame count (so shape descriptors are
measured at the same resolution on both sides: marching-cubes sphericity depends on it), then
runs ``cellgen evaluate`` against the training phantoms and prints one row:

- realism: normalised Wasserstein-1 (W1 / std of the real values) of volume, surface area,
  sphericity and elongation per frame (issue target <= 0.15);
- novelty: mean and max Dice of each generated sequence to its nearest training cell, and the
  number of near copies (Dice >= 0.95). The network holds the training cells in its own
  canonical orientation (each training sequence is seen through its learned rotation), so the
  comparison is made there: the "training copies" are the learned codes decoded without
  rotation (strategy ``noise`` with sigma 0, one per code), and every strategy is generated
  without rotation too. Comparing with the phantoms as they were given would miss copies
  (that is what ``cellgen evaluate``'s own check, orientation-dependent, does);
- diversity: mean pairwise 1 - Dice within the generated set (in brackets: the training set's);
- topology: share of frames with one component, as written (``generate.debris_fraction``
  removes small islands) and raw (the network's own output, debris_fraction 0), and divisions
  per sequence (``cele`` divides).

A strategy may carry its sigma after an ``@`` (``local@0.3``, ``noise@0.05``): a sweep of one
strategy's scale is then several entries of ``--strategies``.

Each line also gets a ``phantoms`` row: ``--n`` fresh phantom sequences from the very generator
and settings of the training set (another seed), measured the same way. That is what a perfect
generator would score, so it is the floor of these numbers at this training-set size: with few
training sequences the per-descriptor W1 of two independent samples of the same distribution
is far from 0, and a generator cannot be judged below it.

Everything is cached in --out (generation and evaluation skip finished work).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cellgen.config import GenerateConfig, load_config
from cellgen.evaluate.report import evaluate
from cellgen.generate.stage import GenerateRequest, generate_cells
from cellgen.layout import DemoLineDir
from cellgen.train.checkpoint import find_checkpoint

REALISM = ("volume", "surface_area", "sphericity", "elongation")
PHANTOMS = "phantoms"
"""The reference row: fresh phantoms instead of a strategy."""
FRESH_SEED = 1000
"""Times the study seed, added to the training phantoms' seed for the fresh ones."""


def _grid(masks: Path) -> tuple[list[int], int]:
    """(Z, Y, X) and frames per sequence of the training phantoms."""
    from cellgen.io import read_tiff

    first = sorted(masks.glob("seq_*"))[0]
    frames = sorted(first.glob("mask_t*.tif"))
    return list(read_tiff(frames[0])[0].shape), len(frames)


def line_settings(demo: Path, line: str, n: int, seed: int = 1) -> GenerateConfig:
    """The line's generate settings at the training grid and frame count, unrotated."""
    dirs = DemoLineDir.of(demo, line)
    size, frames = _grid(dirs.masks)
    return load_config(str(dirs.exp / "config.yaml"), [
        f"generate.n={n}", f"generate.size=[{size[0]},{size[1]},{size[2]}]", f"generate.frames={frames}",
        "generate.rotate=false", f"generate.seed={seed}"]).generate


def training_copies(demo: Path, out: Path, line: str, settings: GenerateConfig) -> Path:
    """The learned codes decoded unrotated (noise, sigma 0, one per code): the training cells in
    the network's canonical frame, against which novelty is measured."""
    dirs = DemoLineDir.of(demo, line)
    copies = out / line / "training_copies"
    n_codes = len(list(dirs.masks.glob("seq_*")))
    generate_cells(GenerateRequest(checkpoint=find_checkpoint(dirs.exp), out=copies, progress=False,
                                   settings=settings.model_copy(update={"strategy": "noise", "sigma": 0.0, "n": n_codes})))
    return copies


def fresh_phantoms(demo: Path, out: Path, line: str, n: int, seed: int) -> Path:
    """``n`` new sequences from the training phantoms' generator and settings, another seed."""
    from cellgen.data.phantoms import write_phantoms

    masks = DemoLineDir.of(demo, line).masks
    given = json.loads((masks / "phantoms.json").read_text())
    folder = out / line / PHANTOMS / "synthetic"
    write_phantoms(folder, given["line"], n, given["frames"], tuple(given["size"]), int(given["seed"]) + FRESH_SEED * seed)
    return folder


def one_component_share(folder: Path) -> float:
    """Share of the mask frames under ``folder`` that are one 26-connected piece."""
    from cellgen.evaluate.descriptors import count_components
    from cellgen.io import read_tiff

    counts = [count_components(read_tiff(f)[0] > 0) for f in sorted(folder.glob("seq_*/mask_t*.tif"))]
    return sum(c == 1 for c in counts) / max(1, len(counts))


def strategy_settings(entry: str, settings: GenerateConfig) -> GenerateConfig:
    """``fitted`` or ``local@0.3`` (strategy, then optionally its sigma) applied to ``settings``."""
    name, _, sigma = entry.partition("@")
    return settings.model_copy(update={"strategy": name, "sigma": float(sigma) if sigma else None})


def run(demo: Path, out: Path, line: str, strategy: str, settings: GenerateConfig, copies: Path) -> dict:
    dirs = DemoLineDir.of(demo, line)
    synthetic, report = out / line / strategy / "synthetic", out / line / strategy / "report"
    t0 = time.perf_counter()
    if strategy == PHANTOMS:
        synthetic = fresh_phantoms(demo, out, line, settings.n, settings.seed)
        raw_single = one_component_share(synthetic)
    else:
        checkpoint = find_checkpoint(dirs.exp)
        chosen = strategy_settings(strategy, settings)
        generate_cells(GenerateRequest(checkpoint=checkpoint, out=synthetic, progress=False, settings=chosen))
        raw = out / line / strategy / "raw"
        generate_cells(GenerateRequest(checkpoint=checkpoint, out=raw, progress=False,
                                       settings=chosen.model_copy(update={"debris_fraction": 0.0})))
        raw_single = one_component_share(raw)
    summary = evaluate(dirs.masks, synthetic, report, workers=2)
    # Fresh phantoms live in the training phantoms' frame, so they are compared with those.
    novelty = summary if strategy == PHANTOMS else evaluate(copies, synthetic, out / line / strategy / "novelty", workers=2)
    seconds = time.perf_counter() - t0
    rows = read_csv_rows(report / "descriptors.csv")
    synth = [r for r in rows if r["set"] == "synthetic"]
    single = sum(1 for r in synth if float(r["components"]) == 1) / max(1, len(synth))
    seq_rows = read_csv_rows(report / "sequences.csv")
    divisions = [float(r["divisions"]) for r in seq_rows if r["set"] == "synthetic"]
    memo = novelty["memorisation"]
    return {
        "line": line,
        "strategy": strategy,
        **{name: summary["descriptors"][name]["wasserstein_normalised"] for name in REALISM},
        "nn_dice_mean": memo["nearest_dice"]["mean"],
        "nn_dice_max": memo["nearest_dice"]["max"],
        "near_copies": memo["near_copies"],
        "real_nn_other": memo["real_nearest_other_dice"]["mean"],
        "diversity": summary["diversity"]["synthetic"],
        "diversity_real": summary["diversity"]["real"],
        "single_component": single,
        "single_component_raw": raw_single,
        "divisions_per_seq": sum(divisions) / max(1, len(divisions)),
        "seconds": seconds,
    }


def plot_tradeoff(results: list[dict], path: Path) -> None:
    """One panel per line: novelty (nearest training copy's Dice, right = closer to a copy) against
    realism (the worst of the four W1/sigma), a point per strategy; the fresh phantoms mark what
    a perfect generator scores at this training-set size, the dashed lines the issue's targets."""
    from cellgen.evaluate.plots import panels, save_figure

    lines = list(dict.fromkeys(r["line"] for r in results))
    fig, axes = panels(len(lines), columns=len(lines), panel=(4.2, 3.4))
    for ax, line in zip(axes, lines):
        for r in (r for r in results if r["line"] == line):
            worst = max(r[name] for name in REALISM)
            is_floor = r["strategy"] == PHANTOMS
            ax.scatter(r["nn_dice_mean"], worst, marker="*" if is_floor else "o", s=90 if is_floor else 30,
                       color="black" if is_floor else "#d62728")
            ax.annotate(r["strategy"], (r["nn_dice_mean"], worst), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.15, color="grey", lw=0.8, ls="--")
        ax.axvline(0.95, color="grey", lw=0.8, ls="--")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{line}: lower = more realistic, left = newer", fontsize=9)
        ax.set_xlabel("Dice to the nearest training cell (mean)")
        ax.set_ylabel("worst of the four W1/σ")
    fig.subplots_adjust(left=0.06)
    save_figure(fig, path)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a finished `cellgen demo` folder")
    parser.add_argument("--n", type=int, default=12, help="generated sequences per line and strategy")
    parser.add_argument("--lines", default="plat,cele,filo")
    parser.add_argument("--strategies", default=f"{PHANTOMS},fitted,mix,noise,local@0.25,local@0.5,local@1.0",
                        help=f"latent strategies, each optionally with @SIGMA; {PHANTOMS} = fresh phantoms (the floor)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the draws (and of the fresh phantoms)")
    parser.add_argument("--out", type=Path, default=Path("out/study_generation"))
    args = parser.parse_args(argv)
    results = []
    for line in args.lines.split(","):
        exp = DemoLineDir.of(args.demo, line).exp
        if not exp.is_dir():
            print(f"skipping {line}: no {exp}", file=sys.stderr)
            continue
        settings = line_settings(args.demo, line, args.n, args.seed)
        copies = training_copies(args.demo, args.out, line, settings)
        for strategy in args.strategies.split(","):
            results.append(run(args.demo, args.out, line, strategy, settings, copies))
            print(f"  {line} {strategy}: {results[-1]['seconds']:.0f} s", file=sys.stderr)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot_tradeoff(results, args.out / "tradeoff.png")
    header = ("| line | strategy | W1/σ volume | surface area | sphericity | elongation | NN Dice mean / max "
              "| near copies | diversity (training) | one component (raw) | divisions / seq |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in results:
        print(f"| {r['line']} | {r['strategy']} | {r['volume']:.2f} | {r['surface_area']:.2f} | "
              f"{r['sphericity']:.2f} | {r['elongation']:.2f} | {r['nn_dice_mean']:.2f} / {r['nn_dice_max']:.2f} "
              f"(copies {r['real_nn_other']:.2f}) | {r['near_copies']} | {r['diversity']:.2f} "
              f"({r['diversity_real']:.2f}) | {100 * r['single_component']:.0f} % ({100 * r['single_component_raw']:.0f} %) "
              f"| {r['divisions_per_seq']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
