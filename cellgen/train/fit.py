"""``cellgen fit``: latent codes (and rotations) of mask sequences the model never saw, fitted to
the FROZEN decoder (DeepSDF's reconstruction by test-time optimisation).

Per input sequence:

1. prepare it exactly as ``cellgen prepare`` prepared the training data (``data_config``: the
   settings of the experiment's data folder, else the checkpoint's config): every frame ->
   ``frame_sdf`` (isotropic voxels, debris removal, crop centred on the cell, clamped and
   normalised SDF) -> ``sample_frame`` (the same 70/30 near/far sampling and seeding);
2. fit one code (and one rotation, when the model learned rotations) with Adam on the training
   loss (``sdf_l1_loss`` + ``code_reg`` * ``code_norm_loss``) over random mini-batches of the
   sampled points. Starts (``start_pool``): the mean of the learned codes (DeepSDF's start), each
   training sequence's code (with its learned rotation), and with rotations the mean code at
   Haar-uniform random rotations. Every start is scored before any step; the best ``restarts``
   are optimised together for a short restart phase; the best of those goes on alone;
3. voxelize every frame densely at the training grid: Dice against the prepared ground truth
   (sdf <= 0, i.e. the input mask after the same crop and centring); write the masks.

A rotation is parameterised as ``R = R_start @ euler_to_matrix(delta)`` with ``delta`` starting
at 0, so every candidate starts far from the Euler angles' gimbal-lock points.

Output (OUT)::

    OUT/seq_000/mask_t000.tif ...   the reconstructions (published layout; seq_XXX = the input
                                    sequences in sorted order, their names are in fit.json)
    OUT/fit.json                    settings, and per sequence: name, sources, code, rotation,
                                    start, loss curve, screen/restart losses, Dice per frame
    OUT/fit.csv                     sequence, name, frames, dice, loss, start (+ a mean row)

fit.json is rewritten after every sequence; a rerun with the same settings skips the sequences
it lists (when their masks and inputs are unchanged); other settings are refused unless ``force``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cellgen.config import CellgenConfig, DataConfig, TrainConfig
from cellgen.data.masks import MaskSequence, discover_sequences, select_frames
from cellgen.data.prepare import progress_bar
from cellgen.data.sdf import frame_sdf, frame_time, isotropic_zoom, sample_frame, sampling_rng
from cellgen.errors import CellgenError, InputDataError, OutputError
from cellgen.evaluate.overlap import dice
from cellgen.generate.latents import quaternion_to_matrix
from cellgen.generate.sequence import output_voxel_size, sdf_function
from cellgen.generate.voxelize import voxelize_dense
from cellgen.io import (
    ensure_writable_dir,
    read_json,
    sha256_file,
    sha256_json,
    write_json_atomic,
    write_mask_tiff,
    write_text_atomic,
)
from cellgen.layout import ExperimentDir, SequenceDir, sequence_name
from cellgen.model.rotation import euler_to_matrix
from cellgen.train.checkpoint import TrainedModel, load_trained_model
from cellgen.train.loop import code_norm_loss, sdf_l1_loss, step_lr

Grid3 = tuple[int, int, int]
FORMAT = 1

_EVAL_CHUNK = 65536  # points per no-grad decoder call
SCREEN_POINTS = 4096
"""Points on which every start of the pool is scored before any optimisation."""
EVAL_POINTS = 65536
"""Points (a fixed random subset of the samples) on which candidates and the result are scored."""


@dataclass(frozen=True)
class FitSettings:
    """How codes (and rotations) are fitted. Defaults: DeepSDF's recipe scaled to our loss."""

    iterations: int = 300
    """Adam steps of the main phase (after the restart phase)."""
    lr: float = 2e-2
    """Learning rate of the code and the rotation's Euler angles; divided by 10 halfway."""
    rotations: bool | None = None
    """Fit a rotation per sequence; None: when the model learned rotations."""
    restarts: int = 4
    """Starts optimised in the restart phase (the best-scoring of the pool; 1: no such phase)."""
    random_rotations: int = 16
    """Starts at Haar-uniform random rotations (with the mean code), when rotations are fitted."""
    restart_iterations: int | None = None
    """Steps of the restart phase; None: a quarter of ``iterations``."""
    points_per_step: int = 16384
    """Sampled points per Adam step (split among the candidates in the restart phase)."""
    seed: int = 0
    """Seeds the random rotations, the scoring subsets and the mini-batches (per sequence)."""

    def __post_init__(self) -> None:
        if self.random_rotations < 0:
            raise InputDataError("random_rotations must be 0 or more", self.random_rotations)
        for name in ("iterations", "restarts", "points_per_step"):
            if getattr(self, name) < 1:
                raise InputDataError(f"--{name.replace('_', '-')} must be at least 1", getattr(self, name))
        if not self.lr > 0:
            raise InputDataError("--lr must be positive", self.lr)

    @property
    def warmup(self) -> int:
        return self.restart_iterations if self.restart_iterations is not None else max(1, self.iterations // 4)


# --------------------------------------------------------------------------------------------
# Preparing an unseen sequence (the pure functions of prepare)
# --------------------------------------------------------------------------------------------


@dataclass
class FitTarget:
    """One input sequence, prepared: sampled points and the ground-truth masks."""

    name: str
    source_frames: list[int]
    xyzt: np.ndarray
    """float32 (N, 4): the sampled points of every frame."""
    sdf: np.ndarray
    """float32 (N,): their normalised signed distances."""
    truth: list[np.ndarray]
    """Per frame, the prepared mask (sdf <= 0), bit-packed (np.packbits) to keep memory low."""
    shape: Grid3
    norm_factors: list[float]

    @property
    def n_frames(self) -> int:
        return len(self.source_frames)

    def truth_mask(self, frame: int) -> np.ndarray:
        count = math.prod(self.shape)
        return np.unpackbits(self.truth[frame], count=count).reshape(self.shape).astype(bool)


def prepare_target(sequence: MaskSequence, cfg: DataConfig, index: int) -> FitTarget:
    """``sequence`` prepared as ``cellgen prepare`` would have prepared training sequence
    ``index`` (same frames, voxel size, SDF, sampling and seed); one frame in memory at a time."""
    frames = select_frames(sequence.n_frames, cfg.max_frames)
    zoom = isotropic_zoom(cfg.voxel_size or sequence.voxel_size, cfg.scale)
    points, values, truth, factors = [], [], [], []
    for f, source_frame in enumerate(frames):
        where = f"{sequence.name} frame {source_frame} ({sequence.file_of(source_frame)})"
        prepared = frame_sdf(sequence.read_frame(source_frame), cfg, zoom, where)
        xyzt, sdf = sample_frame(prepared.sdf, frame_time(f, len(frames)), cfg, sampling_rng(cfg.seed, index, f))
        points.append(xyzt)
        values.append(sdf)
        truth.append(np.packbits(prepared.sdf <= 0, axis=None))
        factors.append(prepared.factor)
    return FitTarget(
        name=sequence.name,
        source_frames=list(frames),
        xyzt=np.concatenate(points),
        sdf=np.concatenate(values),
        truth=truth,
        shape=tuple(cfg.size),  # type: ignore[arg-type]
        norm_factors=factors,
    )


def data_config(trained: TrainedModel, exp: Path | None) -> tuple[DataConfig, str]:
    """The preprocessing the model was trained with, and where it comes from.

    The settings of the experiment's data folder (EXP/data.json -> DATA/manifest.json) when
    that folder still holds the data the checkpoint was trained on (same settings hash); else
    the checkpoint config's ``data`` section with the grid and normalisation the checkpoint
    records (those two decide what the decoder's output means).
    """
    state = trained.checkpoint
    if exp is not None and ExperimentDir(exp).data_ref.is_file():
        try:
            data_root = Path(read_json(ExperimentDir(exp).data_ref)["data"])
            manifest = read_json(data_root / "manifest.json")
            if manifest.get("settings_hash") == state.get("data_hash"):
                return DataConfig.model_validate(manifest["settings"]), str(data_root / "manifest.json")
        except (CellgenError, KeyError, TypeError, ValueError):
            pass  # the data folder moved or changed: fall back to the checkpoint
    saved: CellgenConfig = trained.config
    cfg = saved.data.model_copy(update={
        "size": tuple(int(v) for v in state["data_size"]),
        "normalisation": state.get("normalisation", saved.data.normalisation),
    })
    return cfg, f"checkpoint {trained.path}"


# --------------------------------------------------------------------------------------------
# Fitting a code (and a rotation) to a frozen decoder
# --------------------------------------------------------------------------------------------


@dataclass
class StartPool:
    """Where a fit may start: pairs of a code and a rotation, with a label each."""

    codes: Tensor
    """(P, L)"""
    rotations: Tensor
    """(P, 3, 3)"""
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def start_pool(
    learned_codes: Tensor,
    learned_rotations: Tensor | None,
    names: list[str],
    rotate: bool,
    random: int,
    seed: int,
    sequence: int,
) -> StartPool:
    """The starts of one sequence's fit: the mean of the learned codes at the identity (DeepSDF's
    start); every training sequence's code, with its learned rotation when rotations are fitted
    (an unseen cell may look and lie like one of them: with few training sequences the space
    between their codes means little); with rotations, the mean code at ``random``
    Haar-uniform rotations seeded by (seed, sequence)."""
    n, dim = learned_codes.shape
    like = {"dtype": learned_codes.dtype, "device": learned_codes.device}
    codes = [learned_codes.mean(0), *learned_codes]
    rotations = [torch.eye(3, **like)] * (n + 1)
    if rotate and learned_rotations is not None:
        rotations[1:] = list(learned_rotations.to(**like))
    labels = ["mean code", *(f"code of {name}" for name in names)]
    if rotate:
        rng = np.random.default_rng([int(seed), int(sequence), 1])
        for i in range(random):
            codes.append(codes[0])
            rotations.append(torch.tensor(quaternion_to_matrix(rng.standard_normal(4)), **like))
            labels.append(f"mean code, random rotation {i}")
    return StartPool(torch.stack(codes).reshape(-1, dim), torch.stack(rotations), labels)


def predict(decoder: nn.Module, codes: Tensor, rotations: Tensor, xyzt: Tensor) -> Tensor:
    """SDF of K candidates at their own points: codes (K, L), rotations (K, 3, 3) applied as
    ``xyz @ R``, xyzt (K, n, 4) -> (K, n). One decoder call for all candidates."""
    k, n = xyzt.shape[:2]
    xyz = torch.bmm(xyzt[..., :3], rotations)
    inputs = torch.cat([xyz, xyzt[..., 3:]], dim=-1).reshape(k * n, 4)
    latent = codes[:, None, :].expand(k, n, codes.shape[1]).reshape(k * n, -1)
    return decoder(latent, inputs).reshape(k, n)


@dataclass
class LatentFit:
    code: Tensor
    """(L,)"""
    rotation: Tensor
    """(3, 3), applied as ``xyz @ rotation``; the identity when no rotation was fitted."""
    loss: float
    """Training loss (L1 + code regularisation) at the end, on up to EVAL_POINTS sampled points."""
    loss_curve: list[float]
    """Mini-batch loss of every main-phase step."""
    start: int
    """The start (index into the pool) the result grew from."""
    screen_losses: list[float] = field(default_factory=list)
    """Loss of every start of the pool before any step (empty for a pool of one)."""
    restarts: list[int] = field(default_factory=list)
    """The starts that went through the restart phase ..."""
    restart_losses: list[float] = field(default_factory=list)
    """... and their losses at its end."""


class _Candidates(nn.Module):
    """K codes and K rotations ``start @ euler_to_matrix(delta)`` being fitted."""

    def __init__(self, codes: Tensor, starts: Tensor, rotate: bool):
        super().__init__()
        self.codes = nn.Parameter(codes.clone())
        self.register_buffer("starts", starts.clone())
        self.delta = nn.Parameter(torch.zeros(len(starts), 3, device=codes.device), requires_grad=rotate)

    def rotations(self) -> Tensor:
        return self.starts @ euler_to_matrix(self.delta)


def _optimise(
    decoder: nn.Module,
    candidates: _Candidates,
    points: tuple[Tensor, Tensor],
    steps: int,
    per_candidate: int,
    lr: Callable[[int], float],
    train_cfg: TrainConfig,
    generator: torch.Generator,
    advance: Callable[[int], None],
) -> list[float]:
    """``steps`` Adam steps of every candidate on its own random mini-batch (all points when
    there are no more than ``per_candidate``); returns the losses.

    The loss is the mean over candidates of each one's training loss, so each candidate follows
    its own gradient (Adam is invariant to the common 1/K factor).
    """
    xyzt, sdf = points
    k = candidates.codes.shape[0]
    params = [p for p in candidates.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr(0))
    full_batch = per_candidate >= len(sdf)  # few samples: every step sees all of them
    if full_batch:
        per_candidate = len(sdf)
    owner = torch.arange(k, device=xyzt.device).repeat_interleave(per_candidate)
    curve = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr(step)
        if full_batch:
            picks = torch.arange(len(sdf), device=xyzt.device).expand(k, -1)
        else:
            picks = torch.randint(len(sdf), (k, per_candidate), generator=generator).to(xyzt.device)
        pred = predict(decoder, candidates.codes, candidates.rotations(), xyzt[picks])
        loss = sdf_l1_loss(pred.reshape(-1), sdf[picks].reshape(-1), train_cfg.clamp_delta)
        loss = loss + train_cfg.code_reg * code_norm_loss(candidates.codes, owner)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
        advance(1)
    return curve


def subset_loss(decoder: nn.Module, codes: Tensor, rotations: Tensor, xyzt: Tensor, sdf: Tensor,
                train_cfg: TrainConfig) -> list[float]:
    """The training loss of each of K codes (K, L) and rotations (K, 3, 3) at the same points
    (no gradient, chunked so that K x chunk points go through the decoder at once)."""
    k = len(codes)
    chunk = max(1, _EVAL_CHUNK // k)
    totals = torch.zeros(k, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(sdf), chunk):
            points = xyzt[start : start + chunk]
            pred = predict(decoder, codes, rotations, points[None].expand(k, -1, -1))
            target = sdf[start : start + chunk]
            for i in range(k):
                totals[i] += sdf_l1_loss(pred[i], target, train_cfg.clamp_delta).item() * len(target)
    norms = codes.detach().norm(dim=1).cpu().double()
    return (totals / len(sdf) + train_cfg.code_reg * norms).tolist()


def fit_latent(
    decoder: nn.Module,
    xyzt: Tensor,
    sdf: Tensor,
    pool: StartPool,
    settings: FitSettings,
    train_cfg: TrainConfig,
    rotate: bool,
    generator: torch.Generator,
    advance: Callable[[int], None] = lambda n: None,
) -> LatentFit:
    """Fit a code (and, if ``rotate``, a rotation) so that ``decoder`` reproduces ``sdf`` at
    ``xyzt``; the decoder's weights are not changed.

    Every start of ``pool`` is scored on SCREEN_POINTS points; the best ``settings.restarts``
    are optimised together for ``settings.warmup`` steps; the best of those on EVAL_POINTS
    points goes on alone for ``settings.iterations`` steps (lr divided by 10 halfway).
    """
    device = xyzt.device
    codes, rotations = pool.codes.to(device), pool.rotations.to(device)
    order = torch.randperm(len(sdf), generator=generator).to(device)
    screen, evaluate = order[:SCREEN_POINTS], order[:EVAL_POINTS]
    frozen = [p.requires_grad for p in decoder.parameters()]
    decoder.requires_grad_(False)
    try:
        screen_losses: list[float] = []
        kept, restart_losses = [0], []
        if len(pool) > 1:
            screen_losses = subset_loss(decoder, codes, rotations, xyzt[screen], sdf[screen], train_cfg)
            kept = np.argsort(screen_losses, kind="stable")[: settings.restarts].tolist()
        start_code, start_rotation, start = codes[kept[0]], rotations[kept[0]], kept[0]
        if len(kept) > 1:
            candidates = _Candidates(codes[kept], rotations[kept], rotate)
            per = max(1, settings.points_per_step // len(kept))
            _optimise(decoder, candidates, (xyzt, sdf), settings.warmup, per, lambda _: settings.lr,
                      train_cfg, generator, advance)
            with torch.no_grad():
                warm_codes, warm_rotations = candidates.codes.detach(), candidates.rotations().detach()
            restart_losses = subset_loss(decoder, warm_codes, warm_rotations, xyzt[evaluate], sdf[evaluate], train_cfg)
            best = int(np.argmin(restart_losses))
            start_code, start_rotation, start = warm_codes[best], warm_rotations[best], kept[best]
        candidates = _Candidates(start_code[None], start_rotation[None], rotate)
        half = max(1, settings.iterations // 2)
        curve = _optimise(decoder, candidates, (xyzt, sdf), settings.iterations, settings.points_per_step,
                          lambda step: step_lr(settings.lr, step, half, 0.1), train_cfg, generator, advance)
        with torch.no_grad():
            code, rotation = candidates.codes.detach(), candidates.rotations().detach()
        loss = subset_loss(decoder, code, rotation, xyzt[evaluate], sdf[evaluate], train_cfg)[0]
    finally:
        for p, flag in zip(decoder.parameters(), frozen):
            p.requires_grad_(flag)
    return LatentFit(code=code[0], rotation=rotation[0], loss=loss, loss_curve=curve, start=start,
                     screen_losses=screen_losses, restarts=kept if len(kept) > 1 else [],
                     restart_losses=restart_losses)


def fit_generator(seed: int, sequence: int) -> torch.Generator:
    """The mini-batch generator of one sequence: a function of (seed, sequence) only."""
    value = np.random.default_rng([int(seed), int(sequence), 2]).integers(0, 2**62)
    return torch.Generator().manual_seed(int(value))


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@dataclass
class FitSummary:
    out: Path
    records: list[dict[str, Any]]
    """One per input sequence (as in fit.json), in order."""
    fitted: list[str] = field(default_factory=list)
    """Sequences fitted by this run (the others were already done)."""

    @property
    def mean_dice(self) -> float:
        return float(np.mean([r["dice"] for r in self.records]))


def fit_sequences(
    exp: Path,
    masks: Path,
    out: Path,
    settings: FitSettings = FitSettings(),
    checkpoint: Path | None = None,
    size: Grid3 | None = None,
    device: str = "cpu",
    chunk_points: int = 262144,
    force: bool = False,
    progress: bool = True,
) -> FitSummary:
    """Fit every mask sequence in ``masks`` to the model of ``exp`` (or ``checkpoint``) and write
    the reconstructions to ``out``; see the module docstring. Every input is checked before any
    compute is spent."""
    exp, masks, out = Path(exp), Path(masks), Path(out)
    if checkpoint is not None and not exp.exists():
        raise InputDataError("experiment folder not found", exp, "check the path")
    trained = load_trained_model(checkpoint or exp, device)
    data_cfg, data_source = data_config(trained, exp if exp.is_dir() else None)
    sequences = discover_sequences(masks)
    ensure_writable_dir(out)

    model = trained.model
    rotate = settings.rotations if settings.rotations is not None else model.rotations is not None
    learned = model.rotation_matrices() if model.rotations is not None else None
    data_size: Grid3 = tuple(int(v) for v in trained.checkpoint["data_size"])  # type: ignore[assignment]
    grid: Grid3 = tuple(size) if size is not None else data_size  # type: ignore[assignment]
    run_settings = {
        "checkpoint": str(trained.path.resolve()), "checkpoint_sha256": sha256_file(trained.path),
        "epoch": int(trained.checkpoint["epoch"]), "masks": str(masks.resolve()), "size": list(grid),
        "iterations": settings.iterations, "lr": settings.lr, "rotations": rotate,
        "restarts": settings.restarts, "restart_iterations": settings.warmup,
        "random_rotations": settings.random_rotations, "points_per_step": settings.points_per_step,
        "seed": settings.seed, "data": data_cfg.model_dump(mode="json"),
    }
    previous = _claim_output(out / "fit.json", run_settings, force)
    inputs = [_input_hash(seq) for seq in sequences]
    done = {r["sequence"]: r for r in previous if not force}
    todo = [s for s in range(len(sequences)) if not _is_done(done.get(sequence_name(s)), inputs[s], out)]
    records = {sequence_name(s): done[sequence_name(s)] for s in range(len(sequences)) if s not in todo}

    codes, names = model.latent_codes(), list(trained.checkpoint["sequences"])
    pools = {s: start_pool(codes, learned, names, rotate, settings.random_rotations, settings.seed, s) for s in todo}
    restart_phase = min(settings.restarts, len(names) + 1) > 1
    steps = settings.iterations + (settings.warmup if restart_phase else 0)
    frames = [len(select_frames(sequences[s].n_frames, data_cfg.max_frames)) for s in todo]
    summary = FitSummary(out=out, records=[])
    with progress_bar("fitting", len(todo) * steps + sum(frames), progress) as advance:
        for s in todo:
            name = sequence_name(s)
            target = prepare_target(sequences[s], data_cfg, s)
            xyzt = torch.from_numpy(target.xyzt).to(device)
            sdf = torch.from_numpy(target.sdf).to(device)
            fit = fit_latent(model.decoder, xyzt, sdf, pools[s], settings, trained.config.train, rotate,
                             fit_generator(settings.seed, s), advance)
            frame_dice = _write_frames(model.decoder, fit, target, SequenceDir(out / name), data_size, grid,
                                       device, chunk_points, advance)
            records[name] = _record(name, sequences[s], target, fit, frame_dice, inputs[s], pools[s].labels)
            summary.fitted.append(name)
            _write_results(out, run_settings, data_source, records)
    summary.records = [records[k] for k in sorted(records)]
    _write_results(out, run_settings, data_source, records)
    return summary


def _write_frames(
    decoder: nn.Module, fit: LatentFit, target: FitTarget, seq_dir: SequenceDir, data_size: Grid3, grid: Grid3,
    device: str, chunk_points: int, advance: Callable[[int], None],
) -> list[float]:
    """Voxelize every frame: Dice at the training grid against the prepared truth; masks at ``grid``."""
    code, rotation = fit.code[None], fit.rotation
    voxel_size = output_voxel_size(data_size, grid)
    scores = []
    for f in range(target.n_frames):
        fn = sdf_function(decoder, code, rotation, frame_time(f, target.n_frames))
        mask = voxelize_dense(fn, data_size, chunk_points, device=device).mask
        scores.append(dice(mask, target.truth_mask(f)))
        if grid != data_size:
            mask = voxelize_dense(fn, grid, chunk_points, device=device).mask
        write_mask_tiff(seq_dir.mask(f), mask, voxel_size)
        advance(1)
    return scores


def _record(name: str, sequence: MaskSequence, target: FitTarget, fit: LatentFit, frame_dice: list[float],
            input_hash: str, pool_labels: list[str]) -> dict[str, Any]:
    return {
        "sequence": name,
        "name": sequence.name,
        "sources": [str(p) for p in sequence.sources],
        "source_frames": target.source_frames,
        "frames": target.n_frames,
        "input_hash": input_hash,
        "dice": float(np.mean(frame_dice)),
        "dice_per_frame": [round(float(d), 6) for d in frame_dice],
        "loss": fit.loss,
        "code": [float(v) for v in fit.code.cpu()],
        "rotation": fit.rotation.cpu().tolist(),
        "start": pool_labels[fit.start],
        "screen_losses": [round(v, 6) for v in fit.screen_losses],
        "restarts": [pool_labels[i] for i in fit.restarts],
        "restart_losses": [round(v, 6) for v in fit.restart_losses],
        "loss_curve": [float(f"{v:.6g}") for v in fit.loss_curve],
        "norm_factors": target.norm_factors,
    }


def _input_hash(sequence: MaskSequence) -> str:
    """Changes when an input file of the sequence changes (path, size, modification time)."""
    stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sequence.sources]
    return sha256_json({"name": sequence.name, "sources": stats})


def _is_done(record: dict[str, Any] | None, input_hash: str, out: Path) -> bool:
    if record is None or record.get("input_hash") != input_hash:
        return False
    seq_dir = SequenceDir(out / record["sequence"])
    return all(seq_dir.mask(f).is_file() for f in range(int(record["frames"])))


def _claim_output(record_path: Path, settings: dict[str, Any], force: bool) -> list[dict[str, Any]]:
    """The sequences a previous run with the same settings finished; other settings are refused."""
    if not record_path.is_file():
        return []
    try:
        previous = read_json(record_path)
        same = previous["settings"] == settings
        records = list(previous["sequences"])
    except (CellgenError, KeyError, TypeError):
        raise OutputError("cannot read the fit record of an earlier run", record_path,
                          "use --force to redo the fit, or choose another output folder") from None
    if not same and not force:
        raise OutputError("output folder holds a fit with other settings", record_path.parent,
                          "use --force to redo it, or choose another output folder")
    return records if same else []


def _write_results(out: Path, settings: dict[str, Any], data_source: str, records: dict[str, dict[str, Any]]) -> None:
    ordered = [records[k] for k in sorted(records)]
    write_json_atomic(out / "fit.json", {"format": FORMAT, "settings": settings, "data_settings_from": data_source,
                                         "sequences": ordered})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sequence", "name", "frames", "dice", "loss", "start"])
    for r in ordered:
        writer.writerow([r["sequence"], r["name"], r["frames"], f"{r['dice']:.6f}", f"{r['loss']:.6g}", r["start"]])
    if ordered:
        writer.writerow(["mean", "", "", f"{np.mean([r['dice'] for r in ordered]):.6f}",
                         f"{np.mean([r['loss'] for r in ordered]):.6g}", ""])
    write_text_atomic(out / "fit.csv", buffer.getvalue())
