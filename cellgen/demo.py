"""``cellgen demo``: the whole chain on a laptop, with no downloads.

For each cell line: procedural phantoms -> prepare -> train (configs/demo.yaml, embedded Ray)
-> reconstruct (Dice against the training data) -> generate -> evaluate, then one summary.
Every step is a normal stage call, so rerunning the demo skips what is finished and resumes an
interrupted training run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellgen.config import CellgenConfig, load_config, override_key
from cellgen.errors import ConfigError
from cellgen.io import ensure_writable_dir, write_text_atomic
from cellgen.layout import DemoLineDir, ExperimentDir

LINES = ("plat", "cele", "filo")


@dataclass
class DemoRequest:
    out: Path
    lines: Sequence[str] = LINES
    sequences: int = 6
    """Phantom sequences per line (the training set)."""
    frames: int = 8
    seed: int = 0
    config: str = "demo"
    overrides: list[str] = field(default_factory=list)
    address: str | None = None
    progress: bool = True


@dataclass
class LineResult:
    line: str
    folder: Path
    reconstruction_dice: float | None
    train_epochs: int
    seconds: dict[str, float]
    synthetic: Path
    report: Path
    summary: dict[str, Any]


@dataclass
class DemoSummary:
    out: Path
    lines: list[LineResult]
    seconds: float


def line_config(request: DemoRequest, line: str) -> CellgenConfig:
    """The demo config for ``line``; new cells are drawn as the line's own preset draws them
    (``configs/<line>.yaml``: strategy and sigma were chosen per line by the generation study),
    unless the user's overrides say otherwise."""
    drawing: list[str] = []
    if ("generate", "strategy") not in {override_key(o) for o in request.overrides}:
        preset = load_config(line).generate
        sigma = "null" if preset.sigma is None else repr(preset.sigma)
        drawing = [f"generate.strategy={preset.strategy}", f"generate.sigma={sigma}"]
    return load_config(request.config, [f"line={line}", f"name=demo-{line}", *drawing, *request.overrides])


def run_demo(request: DemoRequest, say: Callable[[str], None] = print) -> DemoSummary:
    """Run the chain for every line; returns where everything is and the headline figures."""
    unknown = [line for line in request.lines if line not in LINES]
    if unknown:
        raise ConfigError("unknown cell line", unknown[0], f"choose from {', '.join(LINES)}")
    if request.sequences < 1 or request.frames < 1:
        raise ConfigError("the demo needs at least one sequence and one frame",
                          f"{request.sequences} sequences, {request.frames} frames")
    out = ensure_writable_dir(request.out)
    started = time.perf_counter()
    results = []
    from cellgen.train.ray_job import connect, disconnect

    # One Ray runtime for the whole demo (each stage reuses it): starting one costs ~10-20 s on
    # the 2-core machine, and the dashboard then shows every training run of the demo.
    started_ray = connect(request.address)
    try:
        for number, line in enumerate(request.lines, 1):
            say(f"[{number}/{len(request.lines)}] {line}")
            results.append(_run_line(request, line, out / line, say))
    finally:
        if started_ray:
            disconnect()
    summary = DemoSummary(out=out, lines=results, seconds=time.perf_counter() - started)
    write_text_atomic(out / "SUMMARY.md", summary_markdown(summary))
    return summary


def _run_line(request: DemoRequest, line: str, folder: Path, say: Callable[[str], None]) -> LineResult:
    from cellgen.data.phantoms import write_phantoms
    from cellgen.data.prepare import prepare
    from cellgen.evaluate.report import evaluate
    from cellgen.generate.stage import GenerateRequest, generate_cells
    from cellgen.train.checkpoint import find_checkpoint
    from cellgen.train.ray_job import train_experiment
    from cellgen.train.reconstruct import reconstruct

    cfg = line_config(request, line)
    dirs = DemoLineDir(folder)
    masks, data, exp = dirs.masks, dirs.data, dirs.exp
    reconstructions, synthetic, report = dirs.reconstructions, dirs.synthetic, dirs.report
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = time.perf_counter() - t0
        return value

    say(f"  phantoms: {request.sequences} sequences x {request.frames} frames at {cfg.data.size}")
    timed("phantoms", lambda: write_phantoms(masks, line, request.sequences, request.frames, cfg.data.size,
                                              request.seed, workers=min(2, request.sequences)))
    say("  prepare: signed distances and point shards")
    timed("prepare", lambda: prepare(masks, data, cfg.data, progress=request.progress))

    experiment = ExperimentDir(exp)
    done = experiment.checkpoints()
    if done and done[-1][0] >= cfg.train.epochs:
        say(f"  train: already trained ({done[-1][0]} epochs)")
        epochs = done[-1][0]
    else:
        say(f"  train: {cfg.train.epochs} epochs, {cfg.train.workers} Ray Train worker(s)")
        outcome = timed("train", lambda: train_experiment(cfg, exp, data, resume=bool(done), address=request.address))
        epochs = outcome.epoch
    checkpoint = find_checkpoint(exp)

    say("  reconstruct: learned shapes vs the training data")
    recon = timed("reconstruct", lambda: reconstruct(exp, reconstructions, compare=data, progress=request.progress))
    say(f"  generate: {cfg.generate.n} new sequences x {cfg.generate.frames} frames at {cfg.generate.size}")
    timed("generate", lambda: generate_cells(GenerateRequest(
        checkpoint=checkpoint, out=synthetic, settings=cfg.generate, address=request.address,
        progress=request.progress)))
    say("  evaluate: shape descriptors, real vs synthetic")
    summary = timed("evaluate", lambda: evaluate(masks, synthetic, report, workers=2))
    dice = recon.mean_dice
    say(f"  done: reconstruction Dice {dice:.3f}" if dice is not None else "  done")
    return LineResult(line=line, folder=folder, reconstruction_dice=dice, train_epochs=epochs,
                      seconds=seconds, synthetic=synthetic, report=report / "report.md", summary=summary)


def _distance(summary: dict[str, Any], name: str) -> float | None:
    """Normalised Wasserstein distance of one descriptor from an evaluate summary."""
    entry = summary.get("descriptors", {}).get(name, {})
    value = entry.get("wasserstein_normalised")
    return float(value) if value is not None else None


def summary_markdown(summary: DemoSummary) -> str:
    rows = ["# cellgen demo", "", f"Total time: {summary.seconds / 60:.1f} min", "",
            "| line | epochs | reconstruction Dice | norm. W1 volume | norm. W1 sphericity | train s | generated cells | report |",
            "|---|---|---|---|---|---|---|---|"]
    for r in summary.lines:
        dice = f"{r.reconstruction_dice:.3f}" if r.reconstruction_dice is not None else "-"
        w_vol, w_sph = _distance(r.summary, "volume"), _distance(r.summary, "sphericity")
        rows.append(
            f"| {r.line} | {r.train_epochs} | {dice} | {_fmt(w_vol)} | {_fmt(w_sph)} | "
            f"{r.seconds.get('train', 0):.0f} | {r.synthetic.relative_to(summary.out)} | "
            f"{r.report.relative_to(summary.out)} |")
    rows += ["", "Preview GIFs: `<line>/synthetic/seq_*/preview.gif`; masks: `<line>/synthetic/seq_*/mask_t*.tif`."]
    return "\n".join(rows) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
