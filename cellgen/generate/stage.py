"""The ``cellgen generate`` stage: plan the sequences, record them, render what is missing.

OUT/manifest.json is written before any rendering and holds everything needed to reproduce each
sequence (code, rotation, seeds, checkpoint hash, resolved config, grid, voxelizer). A rerun with
the same settings renders only the missing files; other settings into a used OUT are refused
unless ``force``.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellgen import __version__
from cellgen.config import GenerateConfig, apply_override, load_config, validate_config
from cellgen.errors import CheckpointError, ClusterError, ConfigError, InputDataError, OutputError
from cellgen.generate.latents import LatentDraw, sample_latents, sequence_rotation
from cellgen.generate.sequence import (
    RenderSettings,
    SequenceRenderer,
    SequenceStats,
    SequenceTask,
    frame_times,
    output_voxel_size,
)
from cellgen.generate.voxelize import units_per_sdf_for
from cellgen.generate.writers import VOXEL_UNIT
from cellgen.io import ensure_writable_dir, read_json, sha256_file, sha256_json, write_json_atomic
from cellgen.layout import ExperimentDir, sequence_name
from cellgen.train.checkpoint import TrainedModel, find_checkpoint, load_checkpoint, load_trained_model

MANIFEST = "manifest.json"
_SEQUENCE_DIR = re.compile(r"^seq_\d{3,}$")


@dataclass
class GenerateRequest:
    """One ``cellgen generate`` call, resolved (config section + command-line options)."""

    checkpoint: Path
    """A checkpoint file (resolve an experiment with ``cellgen.train.checkpoint.find_checkpoint``)."""
    out: Path
    settings: GenerateConfig
    between: tuple[int, int] | None = None
    """For the ``interpolate`` strategy: the two learned codes to morph between."""
    address: str | None = None
    """Ray cluster address; None = in-process for one worker, else an embedded local Ray."""
    write_sdf: bool = False
    write_mesh: bool = False
    force: bool = False
    progress: bool = True


@dataclass
class GenerateSummary:
    out: Path
    sequences: int
    rendered: int
    skipped: int
    frames_rendered: int
    evaluations: int
    seconds: float
    debris_frames: int = 0
    """Rendered frames in which small pieces were removed (``generate.debris_fraction``)."""
    stats: list[SequenceStats] = field(default_factory=list)


@dataclass
class GenerationPlan:
    tasks: list[SequenceTask]
    render: RenderSettings
    manifest: dict[str, Any]


def resolve_generate_config(
    experiment: Path,
    checkpoint: Path | None,
    overrides: list[str],
    *,
    between: tuple[int, int] | None = None,
    steps: int | None = None,
    n_given: bool = False,
) -> tuple[Path, GenerateConfig]:
    """The checkpoint to use and the generate settings: the experiment's saved config (or, when
    it has none, the checkpoint's), with ``section.key=value`` overrides on top."""
    experiment = Path(experiment)
    if checkpoint is None and not experiment.exists():
        raise InputDataError("experiment folder not found", experiment, "check the path, or train first")
    found = find_checkpoint(Path(checkpoint) if checkpoint is not None else experiment)
    overrides = list(overrides)
    if steps is not None:
        if between is None:
            raise ConfigError("--steps only works with --between", steps, "add --between I J")
        if n_given and f"generate.n={steps}" not in overrides:
            raise ConfigError("--n and --steps disagree; an interpolation has --steps codes", steps, "drop --n")
        overrides.append(f"generate.n={steps}")
    if between is not None and not any(o.startswith("generate.strategy=") for o in overrides):
        overrides.append("generate.strategy=interpolate")
    saved = ExperimentDir(experiment).config
    if saved.is_file():
        config = load_config(saved, overrides)
    else:
        raw = load_checkpoint(found)["config"]
        for item in overrides:
            apply_override(raw, item)
        config = validate_config(raw, f"config of {found}")
    return found, config.generate


def plan_generation(trained: TrainedModel, request: GenerateRequest) -> GenerationPlan:
    """Codes, rotations and render settings of every sequence, and the manifest recording them."""
    s = request.settings
    state = trained.checkpoint
    between = request.between
    if s.strategy == "interpolate" and between is None:
        raise ConfigError("the interpolate strategy needs two learned sequences", None, "add --between I J --steps K")
    if between is not None and s.strategy != "interpolate":
        raise ConfigError("--between only works with the interpolate strategy", s.strategy, "use --strategy interpolate")
    if s.sigma is not None and not s.sigma >= 0:
        raise ConfigError("--sigma must not be negative", s.sigma, "e.g. --sigma 0.001")
    learned = trained.model.latent_codes().cpu().numpy()
    if s.strategy == "mix":
        if len(learned) < 2:
            raise ConfigError("the mix strategy needs a model of at least two sequences", len(learned), "use --strategy noise")
        if s.sigma is not None and s.sigma > 0.5:
            raise ConfigError("mix: --sigma is the weight's half-width around 1/2, at most 0.5", s.sigma, "e.g. --sigma 0.2")
    if between is not None:
        for i in between:
            if not 0 <= i < len(learned):
                raise ConfigError(
                    "--between names a sequence the model did not learn", i, f"choose 0..{len(learned) - 1}"
                )
    draw = sample_latents(s.strategy, learned, s.n, s.seed, s.sigma, between)
    data_size = tuple(int(v) for v in state["data_size"])
    units, trusted = _distance_bound(trained, s.voxelizer)
    render = RenderSettings(
        out=str(request.out),
        size=tuple(s.size),
        times=tuple(frame_times(s.frames)),
        voxelizer=s.voxelizer,
        chunk_points=s.chunk_points,
        coarse_cell=s.coarse_cell,
        safety=s.safety,
        margin=s.margin,
        units_per_sdf=units,
        max_trusted_sdf=trusted,
        voxel_size=output_voxel_size(data_size, tuple(s.size)),
        write_sdf=request.write_sdf,
        write_mesh=request.write_mesh,
        debris_fraction=s.debris_fraction,
    )
    tasks, records = [], []
    for i in range(s.n):
        # A morph keeps one orientation, so only the shape changes along it.
        rotation, quaternion = sequence_rotation(s.seed, 0 if between is not None else i, s.rotate)
        code = draw.codes[i]
        tasks.append(SequenceTask(i, tuple(float(v) for v in code), tuple(tuple(float(v) for v in row) for row in rotation)))
        records.append(_sequence_record(i, s.seed, draw, rotation, quaternion))
    manifest = _manifest(trained, request, render, draw, records, learned.shape)
    return GenerationPlan(tasks, render, manifest)


def _distance_bound(trained: TrainedModel, voxelizer: str) -> tuple[float | None, float | None]:
    """(coordinate units per SDF unit, largest trusted |sdf|) from the checkpoint's data facts."""
    state = trained.checkpoint
    factor = state.get("sdf_factor_min")
    if factor is None or not factor > 0:
        if voxelizer == "adaptive":
            raise CheckpointError(
                "checkpoint does not record sdf_factor_min, which the adaptive voxelizer needs",
                trained.path,
                "use --voxelizer dense, or retrain with the current cellgen",
            )
        return None, None
    units = units_per_sdf_for(state["data_size"], float(factor))
    # Beyond the clamp distance the target is a constant plateau: it bounds nothing further.
    trusted = float(trained.config.data.clamp) / float(factor)
    return units, trusted


def _sequence_record(
    index: int, seed: int, draw: LatentDraw, rotation: np.ndarray, quaternion: np.ndarray
) -> dict[str, Any]:
    return {
        "name": sequence_name(index),
        "index": index,
        "seed": [seed, index],
        "strategy": draw.strategy,
        "sigma": draw.sigma,
        "source": draw.sources[index],
        "code": draw.codes[index].tolist(),
        "rotation": {
            "matrix": rotation.tolist(),
            "quaternion_wxyz": quaternion.tolist(),
            "applied_as": "model input xyz @ matrix",
        },
    }


def _manifest(
    trained: TrainedModel,
    request: GenerateRequest,
    render: RenderSettings,
    draw: LatentDraw,
    records: list[dict[str, Any]],
    learned_shape: tuple[int, ...],
) -> dict[str, Any]:
    s = request.settings
    checkpoint = {"path": str(Path(trained.path).resolve()), "sha256": sha256_file(trained.path), "epoch": trained.checkpoint.get("epoch")}
    reproducible = {
        "n": s.n,
        "strategy": s.strategy,
        "sigma": draw.sigma,
        "seed": s.seed,
        "between": list(request.between) if request.between else None,
        "rotate": s.rotate,
        "size": list(render.size),
        "frames": len(render.times),
        "times": list(render.times),
        "voxelizer": render.voxelizer,
        "debris_fraction": render.debris_fraction,
        "coarse_cell": render.coarse_cell if render.voxelizer == "adaptive" else None,
        "safety": render.safety if render.voxelizer == "adaptive" else None,
        "margin": render.margin if render.voxelizer == "adaptive" else None,
        "units_per_sdf": render.units_per_sdf,
        "max_trusted_sdf": render.max_trusted_sdf,
        "voxel_size_zyx": list(render.voxel_size),
        "voxel_unit": VOXEL_UNIT,
        "checkpoint_sha256": checkpoint["sha256"],
    }
    return {
        "cellgen_version": __version__,
        "settings_hash": sha256_json(reproducible),
        "settings": reproducible,
        "outputs": {"sdf": request.write_sdf, "mesh": request.write_mesh},
        "checkpoint": checkpoint,
        "config": trained.config.to_dict() | {"generate": s.model_dump(mode="json")},
        "learned_codes": list(learned_shape),
        "latent_details": draw.details,
        "sequences": records,
    }


def prepare_out(out: Path, manifest: dict[str, Any], force: bool) -> None:
    """Make OUT ready: empty or same settings -> go on; otherwise refuse unless ``force``."""
    ensure_writable_dir(out)
    path = out / MANIFEST
    if path.exists():
        previous = read_json(path)
        if previous.get("settings_hash") == manifest["settings_hash"]:
            return
        if not force:
            old = previous.get("settings", {})
            changed = sorted(k for k in manifest["settings"] if old.get(k) != manifest["settings"][k])
            raise OutputError(
                f"output folder holds cells generated with other settings ({', '.join(changed) or 'unknown'})",
                out,
                "choose another folder, or add --force to replace them",
            )
    elif any(out.iterdir()) and not force:
        raise OutputError(
            "output folder is not empty and holds no cellgen generate manifest", out, "choose an empty folder or add --force"
        )
    if force:
        for child in out.iterdir():
            if child.is_dir() and _SEQUENCE_DIR.match(child.name):
                shutil.rmtree(child)
        path.unlink(missing_ok=True)


def generate_cells(request: GenerateRequest) -> GenerateSummary:
    """Render every sequence of the request that is not complete in OUT yet."""
    started = time.perf_counter()
    s = request.settings
    ensure_writable_dir(request.out)  # fail before any model is loaded
    if s.use_gpu and request.address is None and s.workers == 1:
        import torch

        if not torch.cuda.is_available():
            raise ClusterError("--gpu was asked for but torch sees no GPU", None, "use --no-gpu")
    trained = load_trained_model(request.checkpoint, "cpu")
    plan = plan_generation(trained, request)
    prepare_out(request.out, plan.manifest, request.force)
    write_json_atomic(request.out / MANIFEST, plan.manifest)
    todo = [task for task in plan.tasks if not plan.render.is_done(task.index)]
    stats: list[SequenceStats] = []
    if todo:
        with _Progress(plan, enabled=request.progress) as progress:
            if s.workers == 1 and request.address is None:
                device = "cuda" if s.use_gpu else "cpu"
                renderer = SequenceRenderer(trained.model.decoder, plan.render, device)
                for task in todo:
                    stats.append(renderer.render(task, on_frame=lambda *_: progress.refresh()))
                    progress.refresh()
            else:
                from cellgen.generate.pool import run_pool

                stats = run_pool(
                    todo,
                    plan.render,
                    str(trained.path),
                    workers=s.workers,
                    use_gpu=s.use_gpu,
                    address=request.address,
                    on_progress=lambda _: progress.refresh(),
                    on_done=lambda _: progress.refresh(),
                )
    return GenerateSummary(
        out=request.out,
        sequences=len(plan.tasks),
        rendered=len(stats),
        skipped=len(plan.tasks) - len(todo),
        frames_rendered=sum(st.frames_rendered for st in stats),
        evaluations=sum(st.evaluations for st in stats),
        debris_frames=sum(st.debris_frames for st in stats),
        seconds=time.perf_counter() - started,
        stats=stats,
    )


class _Progress:
    """Sequences and frames done, counted from the files on disk (works for every runner)."""

    def __init__(self, plan: GenerationPlan, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.plan = plan
        self.enabled = enabled and sys.stderr.isatty()
        frames = len(plan.render.times)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not self.enabled,
        )
        self.sequences = self.bar.add_task("sequences", total=len(plan.tasks))
        self.frames = self.bar.add_task("frames", total=len(plan.tasks) * frames)

    def refresh(self) -> None:
        if not self.enabled:
            return
        render = self.plan.render
        frames = len(render.times)
        done = sum(render.is_done(t.index) for t in self.plan.tasks)
        frames_done = sum(frames - len(render.missing_frames(render.sequence_dir(t.index))) for t in self.plan.tasks)
        self.bar.update(self.sequences, completed=done)
        self.bar.update(self.frames, completed=frames_done)

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)
