"""Typed configuration for every stage, loaded from YAML.

Defaults live here and only here. Unknown keys are rejected with a message that names the key
and the allowed ones; wrong types name the key and the expected type. ``--set a.b=value``
overrides are applied before validation, so they obey the same rules.

The presets in ``configs/`` (``plat``, ``cele``, ``filo``, ``demo``) can be named instead of
a path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cellgen.errors import ConfigError

Grid3 = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_default=True, frozen=False
    )


def _as_grid(value: Any) -> Any:
    """Accept ``64`` or ``[z, y, x]`` or ``"256,256,32"`` for a grid size."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return (value, value, value)
    if isinstance(value, str) and "," in value:
        return tuple(int(v) for v in value.split(","))
    if isinstance(value, str) and value.strip().isdigit():
        n = int(value)
        return (n, n, n)
    return value


class DataConfig(_Strict):
    """How time-lapse masks become SDF volumes and sampled points (``cellgen prepare``)."""

    size: Grid3 = (256, 256, 256)
    """Target grid (Z, Y, X) in voxels; each frame is cropped/padded to it around the cell."""
    clamp: float = Field(32.0, gt=0)
    """Outside distances are clamped at this many voxels (METHOD.md: 32 at 256^3)."""
    normalisation: Literal["frame", "fixed"] = "frame"
    """'frame': divide each frame's SDF by its max |sdf| (reference); 'fixed': divide every
    frame by half the largest grid side, so one SDF unit is the same distance everywhere."""
    sample_fraction: float = Field(0.03, gt=0, le=1)
    """Points sampled per frame, as a fraction of all grid points."""
    near_fraction: float = Field(0.7, ge=0, le=1)
    """Share of the sampled points drawn from the near/inside set (sdf <= near_threshold)."""
    near_threshold: float = 0.3
    """Normalised SDF value separating 'near/inside' from 'far' points."""
    shards: int = Field(8, ge=1)
    """Number of point-sample shard files; frames are spread across them."""
    largest_only: bool = False
    """Keep only the largest connected component (reference); default keeps every component
    larger than ``debris_fraction`` of the largest, so dividing cells keep both daughters."""
    debris_fraction: float = Field(0.05, ge=0, le=1)
    """Components smaller than this fraction of the largest one are removed as debris."""
    scale: float = Field(1.0, gt=0)
    """Isotropic rescale factor applied after resampling to isotropic voxels."""
    label: int | None = None
    """Use only this label value as foreground (default: every non-zero voxel)."""
    voxel_size: tuple[float, float, float] | None = None
    """Voxel size (z, y, x) of the input; default: read from TIFF metadata, else isotropic."""
    max_frames: int | None = Field(None, ge=1)
    """Use at most this many frames per sequence (evenly subsampled); default all."""
    seed: int = 0
    """Seed of the point sampling."""
    workers: int = Field(1, ge=1)
    """Sequences prepared in parallel."""

    _grid = field_validator("size", mode="before")(_as_grid)

    @field_validator("size")
    @classmethod
    def _positive(cls, v: Grid3) -> Grid3:
        if any(s < 2 for s in v):
            raise ValueError("every grid side must be at least 2 voxels")
        return v


class ModelConfig(_Strict):
    """The SIREN auto-decoder (METHOD.md section 2)."""

    latent_dim: int = Field(192, ge=1)
    """Length of each sequence's latent code."""
    hidden_dims: list[int] = Field(default_factory=lambda: [128] * 10)
    """Widths of the hidden layers (reference: 10 x 128)."""
    latent_in: list[int] = Field(default_factory=lambda: [4, 7])
    """Hidden layers that receive the full input [latent, x, y, z, t] again (skip)."""
    xyz_in_all: bool = True
    """Append the 4 coordinates to the input of every other hidden layer."""
    activation: Literal["sine", "relu"] = "sine"
    """Hidden activation: sin(omega x) (SIREN) or ReLU (the papers' baseline)."""
    omega: float = Field(30.0, gt=0)
    """SIREN frequency factor on every hidden layer."""
    omega_first: float | None = None
    """Frequency factor of the first layer (default: ``omega``)."""
    layer_norm: list[int] = Field(default_factory=list)
    """Hidden layers followed by LayerNorm."""
    weight_norm: list[int] = Field(default_factory=list)
    """Hidden layers with weight normalisation."""
    dropout: list[int] = Field(default_factory=list)
    """Hidden layers followed by dropout."""
    dropout_prob: float = Field(0.0, ge=0, lt=1)
    """Dropout probability for the layers in ``dropout``."""
    latent_dropout: bool = False
    """Dropout on the latent code at the input (probability ``dropout_prob``)."""
    tanh_output: bool = False
    """Squash the output with tanh."""
    rotations: bool = True
    """Learn a per-sequence rotation applied to the coordinates (SO(3), 2024 paper)."""
    code_init_std: float | None = None
    """Std of the latent-code initialisation (default 1/sqrt(latent_dim))."""

    @model_validator(mode="after")
    def _layers_exist(self) -> ModelConfig:
        n = len(self.hidden_dims)
        if n < 1:
            raise ValueError("hidden_dims needs at least one layer")
        for key in ("latent_in", "layer_norm", "weight_norm", "dropout"):
            for layer in getattr(self, key):
                if not 0 <= layer < n:
                    raise ValueError(
                        f"{key} names layer {layer}, but there are only {n} hidden layers (0..{n - 1})"
                    )
        if 0 in self.latent_in:
            raise ValueError("latent_in cannot contain layer 0: the first layer already gets the input")
        return self


class TrainConfig(_Strict):
    """Auto-decoder training (METHOD.md section 3) and its Ray Train settings."""

    epochs: int = Field(15000, ge=1)
    """Training epochs (one epoch = every sampled frame once)."""
    frames_per_batch: int = Field(4, ge=1)
    """Frames per optimisation step; a batch holds all their sampled points."""
    lr_decoder: float = Field(1e-4, gt=0)
    lr_codes: float = Field(1e-3, gt=0)
    lr_rotations: float = Field(1e-3, gt=0)
    lr_step: int = Field(350, ge=1)
    """Every ``lr_step`` epochs each learning rate is multiplied by ``lr_gamma``."""
    lr_gamma: float = Field(0.5, gt=0, le=1)
    code_reg: float = Field(1e-4, ge=0)
    """Weight lambda of the code regularisation lambda * sum ||z|| / N."""
    code_reg_ramp: int = Field(1000, ge=1)
    """The code regularisation is ramped by min(1, epoch / code_reg_ramp)."""
    clamp_delta: float | None = None
    """Clamp prediction and target to +-delta before the L1 loss (off by default)."""
    opt_rot_epochs: int = Field(1000, ge=0)
    """Rotations are optimised during the first this many epochs only."""
    rot_code_lr_factor: float = Field(10.0, gt=0)
    """While rotations are optimised the codes get this factor on their learning rate."""
    rot_code_reg_factor: float = Field(10.0, ge=0)
    """... and this factor on the code regularisation."""
    grad_clip: float | None = None
    """Clip the gradient norm of the decoder to this value."""
    checkpoint_every: int = Field(100, ge=1)
    """Write a checkpoint every this many epochs (and at the end)."""
    keep_checkpoints: int = Field(3, ge=1)
    """Keep the newest this many checkpoints."""
    workers: int = Field(1, ge=1)
    """Ray Train workers (one per GPU, or one per CPU group)."""
    cpus_per_worker: int = Field(1, ge=1)
    """CPU cores per worker (torch threads)."""
    use_gpu: bool = False
    """Train on GPUs (NCCL); CPU training uses gloo."""
    max_failures: int = Field(3, ge=0)
    """Restarts of the worker group after a worker dies, each from the last checkpoint."""
    bf16: bool = False
    """bf16 autocast on the GPU."""
    tf32: bool = False
    """Allow TF32 matmuls on the GPU."""
    compile: bool = False
    """torch.compile the decoder."""
    seed: int = 0
    """Seed of model initialisation and data order."""


class GenerateConfig(_Strict):
    """Sampling new cells and voxelizing them (``cellgen generate``)."""

    n: int = Field(33, ge=1)
    """Number of sequences."""
    size: Grid3 = (256, 256, 256)
    """Output grid (Z, Y, X); any resolution, also non-cubic."""
    frames: int = Field(30, ge=1)
    """Time points per sequence, evenly spaced over the learned time range."""
    strategy: Literal["normal", "fitted", "noise", "local", "mix", "interpolate"] = "local"
    """How new latent codes are drawn (see README)."""
    sigma: float | None = None
    """Scale of the strategy (normal: 0.001, noise: 1e-4, local: 0.5 of the codes' spread, mix: 0.2
    half-width of the weight around 1/2, fitted: 1 = the fitted spread)."""
    rotate: bool = True
    """Rotate each sequence uniformly over SO(3) (Haar measure)."""
    seed: int = 0
    workers: int = Field(1, ge=1)
    """Ray actors (one per GPU, or per group of CPU cores)."""
    use_gpu: bool = False
    voxelizer: Literal["adaptive", "dense"] = "adaptive"
    debris_fraction: float = Field(0.2, ge=0, le=1)
    """Pieces of a frame (26-connected) smaller than this fraction of its largest piece are
    removed: the network's zero level set leaves small islands, e.g. a filopodium tip cut off by
    a pinch (measured on the demo models: at most 7 % of the body), while both daughters of a
    division stay (at least 62 % of each other in the cele phantoms). 0 keeps the raw output."""
    chunk_points: int = Field(262144, ge=1024)
    """Points per network evaluation."""
    coarse_cell: int = Field(8, ge=2)
    """Side of the coarse cells of the adaptive voxelizer, in voxels."""
    safety: float = Field(0.8, gt=0, le=1)
    """Share of the SDF's distance bound the adaptive voxelizer relies on when it skips a block
    (a network is only approximately a distance function; lower = safer and slower)."""
    margin: float = Field(0.05, ge=0)
    """SDF units the adaptive voxelizer takes off every value before trusting it: the network's
    error near the surface (higher = safer and slower)."""

    _grid = field_validator("size", mode="before")(_as_grid)

    @field_validator("size")
    @classmethod
    def _positive(cls, v: Grid3) -> Grid3:
        if any(s < 1 for s in v):
            raise ValueError("every grid side must be positive")
        return v


class RenderConfig(_Strict):
    """Synthetic fluorescence microscopy images of mask sequences (``cellgen render``).

    Lengths are in voxels of the input masks; intensities in photo-electrons before the camera.
    The optical model is described in docs/render.md.
    """

    mode: Literal["mip", "slice", "3d", "all"] = "mip"
    """What is written per frame: the maximum-intensity projection along Z ('mip'), the in-focus
    slice through the middle of the cell ('slice'), the 3D stack ('3d'), or all three."""
    seed: int = Field(0, ge=0)
    """Seed of texture, background and camera noise (one stream per sequence and frame)."""
    workers: int = Field(1, ge=1)
    """Frames rendered in parallel (processes)."""
    photons: float = Field(200.0, gt=0)
    """Expected photo-electrons per voxel of the cell at its mean fluorophore density, in focus."""
    texture_sigma: float = Field(1.5, gt=0)
    """Correlation length of the finest octave of the intracellular texture (Gaussian sigma)."""
    texture_octaves: int = Field(3, ge=1, le=8)
    """Octaves of band-limited noise; octave k has sigma texture_sigma * 2**k."""
    texture_persistence: float = Field(0.5, gt=0)
    """Amplitude of octave k relative to the first: persistence**k."""
    texture_contrast: float = Field(0.35, ge=0)
    """Standard deviation of the fluorophore density inside the cell, relative to its mean."""
    membrane: float = Field(0.6, ge=0)
    """Extra fluorophore density at the cell surface, relative to the interior (0: no rim)."""
    membrane_width: float = Field(1.5, gt=0)
    """Width (Gaussian sigma) of the bright rim, measured inwards from the surface."""
    nucleus: float = Field(-0.5, ge=-1)
    """Relative density change inside a nucleus-like blob at the deepest point of each cell
    component: negative dimmer (-1 black), positive brighter, 0 no blob."""
    nucleus_size: float = Field(0.5, gt=0, le=1)
    """Radius of the blob as a fraction of the component's largest inscribed-ball radius."""
    psf: Literal["gaussian", "born-wolf"] = "gaussian"
    """Point-spread function: a 3D Gaussian, or a Born-Wolf-like widefield approximation (Airy
    lateral profile widening with defocus; same in-focus FWHM and axial energy profile)."""
    sigma_xy: float = Field(1.0, ge=0)
    """Lateral PSF width: Gaussian sigma (born-wolf: the Gaussian with the same in-focus FWHM)."""
    sigma_z: float = Field(2.5, ge=0)
    """Axial PSF width (Gaussian sigma); larger than sigma_xy, as in every widefield/confocal PSF."""
    background: float = Field(20.0, ge=0)
    """Mean background (out-of-focus haze, autofluorescence) in photo-electrons per voxel."""
    background_variation: float = Field(0.3, ge=0)
    """Relative standard deviation of the smooth lateral variation of the background."""
    background_scale: float = Field(48.0, gt=0)
    """Correlation length of the background variation."""
    bleach_tau: float | None = Field(None, gt=0)
    """Photobleaching: the cell's signal in frame f is multiplied by exp(-f / bleach_tau);
    None: no bleaching."""
    noise: bool = True
    """Camera noise (Poisson shot noise and Gaussian read noise); off gives the expected image."""
    gain: float = Field(2.0, gt=0)
    """Camera gain in grey values (ADU) per photo-electron."""
    read_noise: float = Field(3.0, ge=0)
    """Standard deviation of the Gaussian read noise, in ADU."""
    offset: float = Field(100.0, ge=0, le=65535)
    """Camera offset (dark level) in ADU."""

    @model_validator(mode="after")
    def _born_wolf_needs_widths(self) -> RenderConfig:
        if self.psf == "born-wolf" and (self.sigma_xy <= 0 or self.sigma_z <= 0):
            raise ValueError("psf 'born-wolf' needs sigma_xy > 0 and sigma_z > 0")
        return self


class CellgenConfig(_Strict):
    """Everything one experiment needs; saved resolved into every experiment directory."""

    name: str = "cellgen"
    """A label for the experiment."""
    line: Literal["plat", "cele", "filo", "custom"] = "custom"
    """The cell line the preset imitates (phantom generator used by the demo)."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

PRESETS = ("plat", "cele", "filo", "demo")


def presets_dir() -> Path:
    """Where the named presets live: $CELLGEN_CONFIGS, ``configs/`` of the source tree, or the
    installed copy."""
    env = os.environ.get("CELLGEN_CONFIGS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent / "configs"
    if repo.is_dir():
        return repo
    return Path(__file__).resolve().parent / "presets"


def resolve_config_path(spec: str | os.PathLike[str]) -> Path:
    """A path to a YAML file, or a preset name such as ``demo``."""
    text = str(spec)
    if text in PRESETS:
        return presets_dir() / f"{text}.yaml"
    path = Path(text)
    if not path.exists():
        raise ConfigError(
            "config file not found", text, f"give a YAML path or one of the presets {', '.join(PRESETS)}"
        )
    return path


def load_config(
    spec: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> CellgenConfig:
    """Load a config (path or preset name; None = all defaults) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if spec is not None:
        path = resolve_config_path(spec)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config {path} is not valid YAML{where}", None, "fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("config must be a mapping of sections", path, "see configs/demo.yaml")
        raw = loaded
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML (numbers, lists)."""
    if "=" not in item:
        raise ConfigError("override must look like section.key=value", item, "e.g. --set model.omega=20")
    parts = override_key(item)
    text = item.partition("=")[2]
    if not parts:
        raise ConfigError("override has an empty key", item, "e.g. --set model.omega=20")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError("override goes below a value that is not a section", item)
        node = child
    node[parts[-1]] = value


def override_key(item: str) -> tuple[str, ...]:
    """The dotted key of a ``section.key=value`` override, as :func:`apply_override` reads it
    (``" generate.strategy =x"`` -> ``("generate", "strategy")``)."""
    return tuple(p for p in item.partition("=")[0].strip().split(".") if p)


def validate_config(raw: dict[str, Any], source: str = "config") -> CellgenConfig:
    try:
        return CellgenConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def config_from_dict(raw: dict[str, Any]) -> CellgenConfig:
    """Rebuild a resolved config (e.g. from a checkpoint)."""
    return validate_config(raw, "saved config")


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = CellgenConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _describe(err: ValidationError, source: str) -> str:
    """One line for the first validation problem, naming the key."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        return f"unknown config key '{key}' in {source}; allowed keys here: {allowed}"
    value = first.get("input")
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"config key '{key}' in {source}: {msg} (got {shown})"


def dump_config(config: CellgenConfig, path: str | os.PathLike[str]) -> None:
    """Save the resolved config (atomically)."""
    from cellgen.io import write_text_atomic

    write_text_atomic(path, config.to_yaml())
