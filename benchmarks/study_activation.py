"""Sine vs ReLU at the same budget, and the effect of omega, on filopodial phantoms (issue #6).

    .venv/bin/python benchmarks/study_activation.py [--out DIR] [--epochs E] [--quick]

The papers report that a ReLU auto-decoder gives noisy surfaces and thick, less detailed
filopodia, and that a higher omega gives sharper shapes that can break apart. This script
trains every variant with the same budget -- the same data (6 filo phantom sequences x 8
frames at configs/demo.yaml's size, seed 0), the same network (demo preset), the same epochs,
learning rates and seed -- changing only the activation or omega:

    sine30     the demo preset (sin, omega 30)        -- the baseline of the ratios
    relu       ReLU (DeepSDF-style baseline; PyTorch's default init), the same learning rates
    relu-lr    ReLU with the decoder learning rate doubled (is the shared lr unfair to ReLU?)
    relu-3x    ReLU with 3x the epochs (and the lr schedule stretched 3x): NOT the same budget,
               a check of whether ReLU merely learns slower
    sine10     omega 10
    sine60     omega 60
    sine30f90  omega 30, first layer omega 90 (the first layer's init U(-1/n, 1/n) with
               n = latent + 4 inputs keeps its coordinate frequencies low: does a higher
               first-layer omega matter?)

Training runs in this process (one worker, ``train.cpus_per_worker=2``, no Ray), then each
model is voxelized at the training size (``cellgen.train.reconstruct``) and compared with the
ground truth, frame by frame:

- train s: epochs x the median epoch's wall time (robust to other work on the machine).
- Dice: mean over sequences (each the mean over its frames), and the worst sequence's.
- area / GT (surface noise): surface area of the reconstruction over that of the ground truth,
  both measured the same way (``evaluate.descriptors.surface_area``: marching cubes of the mask,
  lightly Taubin-smoothed), summed over all frames. Bumps and spurious blobs add area; 1 is ideal.
- components: mean connected components per frame (26-connectivity); the phantoms have 1.
- filopodia: the thin part of the ground truth is ``gt & ~opening(gt, 2 iterations)`` (the
  default 6-connected element: what a 5-voxel-wide diamond cannot reach, i.e. the filopodia).
  "filo vol / GT" is the reconstruction's volume in the filopodium zone -- the thin part grown
  by 2 voxels, minus the body grown by 1 -- over the ground truth's volume there: > 1 thicker
  filopodia, < 1 thinner or missing ones. "filo recall" is the share of the thin part's voxels the
  reconstruction covers (missing detail lowers it; thickening does not raise it).

Runs are cached in OUT (phantoms, prepared data, one experiment folder per variant and
configuration hash): a rerun skips finished trainings and reconstructions. The figures
(``docs/img/sine_vs_relu.png`` and ``docs/img/omega.png``; in OUT with ``--quick``) show
three frames of the sequence with the most filopodia: the ground truth's surface (training
grid, as the area measure sees it) next to each model's zero level set evaluated on a finer
grid (``--figure-size``, continuous values), all with the same view and light.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from cellgen.config import CellgenConfig, apply_override, config_from_dict, load_config  # noqa: E402
from cellgen.data.phantoms import write_phantoms  # noqa: E402
from cellgen.data.prepare import prepare  # noqa: E402
from cellgen.evaluate.descriptors import count_components, surface_area, surface_mesh  # noqa: E402
from cellgen.generate.voxelize import voxelize_dense  # noqa: E402
from cellgen.io import atomic_path, read_json, read_tiff, sha256_json  # noqa: E402
from cellgen.layout import DataDir, ExperimentDir, SequenceDir, sequence_name  # noqa: E402
from cellgen.model.rotation import rotate_points  # noqa: E402
from cellgen.train.checkpoint import load_trained_model  # noqa: E402
from cellgen.train.experiment import plan_training, read_metrics, write_run_files  # noqa: E402
from cellgen.train.reconstruct import reconstruct  # noqa: E402
from cellgen.train.worker import WorkerContext, run_worker  # noqa: E402

LINE = "filo"
SEQUENCES = 6
FRAMES = 8
SEED = 0
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    overrides: tuple[str, ...]
    lr_decoder_factor: float = 1.0
    """Times the preset's decoder learning rate."""
    epochs_factor: int = 1
    """Times the study's epochs, with the lr schedule (lr_step) stretched alike."""


VARIANTS = (
    Variant("sine30", "sine, omega 30 (demo)", ()),
    Variant("relu", "ReLU", ("model.activation=relu",)),
    Variant("relu-lr", "ReLU, 2x decoder lr", ("model.activation=relu",), lr_decoder_factor=2.0),
    Variant("relu-3x", "ReLU, 3x epochs", ("model.activation=relu",), epochs_factor=3),
    Variant("sine10", "sine, omega 10", ("model.omega=10",)),
    Variant("sine60", "sine, omega 60", ("model.omega=60",)),
    Variant("sine30f90", "sine, omega 30, first 90", ("model.omega_first=90",)),
)
BASELINE = "sine30"
FIGURES = {
    "sine_vs_relu.png": ("sine30", "relu", "relu-3x"),
    "omega.png": ("sine10", "sine30", "sine60", "sine30f90"),
}


# ------------------------------------------------------------------ data and training


def make_data(out: Path, size: tuple[int, int, int], data_cfg) -> Path:
    """Phantoms and prepared data in folders named by their settings, so a changed preset
    prepares anew instead of overwriting what cached runs were trained on."""
    masks = out / f"masks-{'x'.join(str(n) for n in size)}"
    data = out / f"data-{sha256_json(data_cfg.model_dump(mode='json'))[:8]}"
    write_phantoms(masks, LINE, SEQUENCES, FRAMES, size, SEED)
    prepare(masks, data, data_cfg, progress=False)
    return data


def variant_config(variant: Variant, demo: CellgenConfig, epochs: int) -> CellgenConfig:
    """The demo preset (read once, so a preset edited mid-study changes no variant) with the
    variant's changes, trained in this process by one worker on 2 threads."""
    raw = demo.to_dict()
    for item in (f"train.epochs={epochs}", "train.workers=1", "train.cpus_per_worker=2", *variant.overrides):
        apply_override(raw, item)
    config = config_from_dict(raw)
    config.train.lr_decoder *= variant.lr_decoder_factor
    config.train.epochs *= variant.epochs_factor
    config.train.lr_step *= variant.epochs_factor
    return config


def train(variant: Variant, demo: CellgenConfig, epochs: int, data: Path, runs: Path) -> Path:
    """Train one variant into RUNS/<key>-<hash of config and data> unless a finished run is there."""
    config = variant_config(variant, demo, epochs)
    data_hash = read_json(DataDir(data).manifest)["settings_hash"]
    exp = ExperimentDir(runs / f"{variant.key}-{sha256_json([config.to_dict(), data_hash])[:8]}")
    latest = exp.checkpoints()
    if latest and latest[-1][0] >= config.train.epochs:
        return exp.root
    print(f"training {variant.key} ({config.train.epochs} epochs) -> {exp.root}", file=sys.stderr, flush=True)
    plan = plan_training(config, exp.root, data, resume=bool(latest))
    write_run_files(plan)
    run_worker(plan, WorkerContext())
    return exp.root


def train_seconds(exp: Path) -> float:
    """Epochs x the median epoch time of metrics.csv: on a shared machine the sum would mostly
    measure who else was running (single epochs took up to 20x the median)."""
    seconds = [float(row["seconds"]) for row in read_metrics(ExperimentDir(exp).metrics)]
    return len(seconds) * float(np.median(seconds))


# ------------------------------------------------------------------ measures


def thin_part(truth: np.ndarray, iterations: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(body, thin) of a ground-truth mask: body = opening(truth), thin = truth outside it."""
    body = ndi.binary_opening(truth, iterations=iterations)
    return body, truth & ~body


def filopodium_counts(recon: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """Voxel counts (reconstruction in the filopodium zone, ground truth in it, thin part,
    thin part covered by the reconstruction); the zone is the thin part grown by 2 voxels
    minus the body grown by 1 (so the body's own surface errors do not count)."""
    body, thin = thin_part(truth)
    zone = ndi.binary_dilation(thin, iterations=2) & ~ndi.binary_dilation(body)
    return int((recon & zone).sum()), int((truth & zone).sum()), int(thin.sum()), int((recon & thin).sum())


@dataclass
class Row:
    variant: Variant
    epochs: int
    seconds: float
    dice: dict[int, float]
    area_ratio: float
    components: float
    filo_volume_ratio: float
    filo_recall: float


def measure(variant: Variant, exp: Path, data: Path, epochs: int) -> Row:
    out = exp / "reconstruction"
    result = reconstruct(exp, out, compare=data, progress=False)
    names = read_json(out / "reconstruct.json")["names"]
    area = area_truth = 0.0
    filopodia = np.zeros(4)
    components = []
    for s in result.sequences:
        truth_video = read_truth(data, names[sequence_name(s)])
        for f, truth_sdf in enumerate(truth_video):
            truth = truth_sdf <= 0
            recon = read_tiff(SequenceDir(out / sequence_name(s)).mask(f))[0] > 0
            area += surface_area(recon)
            area_truth += surface_area(truth)
            components.append(count_components(recon))
            filopodia += filopodium_counts(recon, truth)
    return Row(variant, epochs * variant.epochs_factor, train_seconds(exp), result.dice, area / area_truth,
               float(np.mean(components)), filopodia[0] / filopodia[1], filopodia[3] / filopodia[2])


def read_truth(data: Path, name: str) -> np.ndarray:
    with h5py.File(DataDir(data).sdf_file(name), "r") as h5:
        return h5["sdf_vid"][...]


def print_table(rows: list[Row]) -> None:
    base = next((r for r in rows if r.variant.key == BASELINE), rows[0])
    print()
    print("| variant | epochs | train s | x baseline | mean Dice | worst seq Dice | area / GT | components "
          "| filo vol / GT | filo recall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        dice = list(r.dice.values())
        print(f"| {r.variant.label} | {r.epochs} | {r.seconds:.0f} | {r.seconds / base.seconds:.2f} "
              f"| {np.mean(dice):.3f} | {min(dice):.3f} | {r.area_ratio:.2f} | {r.components:.2f} "
              f"| {r.filo_volume_ratio:.2f} | {r.filo_recall:.2f} |")


# ------------------------------------------------------------------ figures


def learned_sdf(model, sequence: int, t: float, size: int) -> np.ndarray:
    """The model's SDF of one training sequence at time t on a size^3 grid (continuous values,
    so the rendered surface shows what the network learned, not a voxel staircase)."""
    code = model.latent_codes()[sequence : sequence + 1]
    rotation = model.rotation_matrices()[sequence]

    def fn(xyz: torch.Tensor) -> torch.Tensor:
        xyzt = torch.cat([rotate_points(xyz, rotation), torch.full((len(xyz), 1), t)], dim=1)
        return model.decoder.forward_indexed(code, None, xyzt)

    return voxelize_dense(fn, (size, size, size)).sdf


def zero_surface(sdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (x, y, z in [-1, 1]) and triangles of the zero level set of a (Z, Y, X) volume."""
    from skimage.measure import marching_cubes

    padded = np.pad(sdf, 1, constant_values=max(float(sdf.max()), 1e-3))  # closed at the border
    if padded.min() > 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, _, _ = marching_cubes(padded, 0.0)
    zyx = -1.0 + 2.0 * (verts - 1.0) / (np.array(sdf.shape) - 1.0)
    return zyx[:, ::-1], faces


def mask_surface(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth's surface as the area measure sees it (``surface_mesh``: marching cubes
    of the mask, light Taubin smoothing), in the same x, y, z coordinates as ``zero_surface``."""
    verts, faces = surface_mesh(mask)  # vertices of the mask padded by one voxel, z y x
    zyx = -1.0 + 2.0 * (verts - 1.0) / (np.array(mask.shape) - 1.0)
    return zyx[:, ::-1], faces


def draw_surface(ax, verts: np.ndarray, faces: np.ndarray, limits: np.ndarray) -> None:
    """Lambert-shaded triangles, one fixed view and light for every panel."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if len(faces):
        triangles = verts[faces]
        normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        light = np.array([-0.4, -0.5, 0.75])
        shade = 0.25 + 0.75 * np.abs(normals @ (light / np.linalg.norm(light)))
        colour = np.array([0.35, 0.6, 0.85])
        ax.add_collection3d(Poly3DCollection(triangles, facecolors=shade[:, None] * colour, linewidths=0))
    for axis, (low, high) in zip("xyz", limits):
        getattr(ax, f"set_{axis}lim")(low, high)
    ax.set_box_aspect((1, 1, 1), zoom=1.35)
    ax.view_init(elev=25, azim=-60)
    ax.set_axis_off()


def surface_figure(path: Path, data: Path, sequence: int, name: str, frames: list[int],
                   columns: list[tuple[str, Path]], size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth_video = read_truth(data, name)
    models = [(label, load_trained_model(exp).model) for label, exp in columns]
    n_frames = truth_video.shape[0]
    fig = plt.figure(figsize=(2.3 * (len(columns) + 1), 2.3 * len(frames)))
    for row, f in enumerate(frames):
        t = -1.0 + 2.0 * f / (n_frames - 1) if n_frames > 1 else 0.0
        truth = mask_surface(truth_video[f] <= 0)
        centre = (truth[0].min(0) + truth[0].max(0)) / 2
        half = (truth[0].max(0) - truth[0].min(0)).max() / 2 * 1.1
        limits = np.stack([centre - half, centre + half], 1)
        surfaces = [("ground truth", truth)] + [(label, zero_surface(learned_sdf(model, sequence, t, size)))
                                                 for label, model in models]
        for column, (label, (verts, faces)) in enumerate(surfaces):
            ax = fig.add_subplot(len(frames), len(surfaces), row * len(surfaces) + column + 1, projection="3d")
            draw_surface(ax, verts, faces, limits)
            if row == 0:
                ax.set_title(label, fontsize=9)
            if column == 0:
                ax.text2D(-0.05, 0.5, f"frame {f}", transform=ax.transAxes, rotation=90, va="center", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.01, wspace=0.0, hspace=0.0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)", file=sys.stderr)


def richest_sequence(data: Path, names: dict[str, str]) -> int:
    """The training sequence whose ground truth has the most thin (filopodium) voxels."""
    def thin_voxels(s: int) -> int:
        return sum(int(thin_part(frame <= 0)[1].sum()) for frame in read_truth(data, names[sequence_name(s)]))

    return max(range(len(names)), key=thin_voxels)


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "cellgen-study-activation",
                        help="cache folder (phantoms, data, one experiment per variant)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per variant (default: configs/demo.yaml's)")
    parser.add_argument("--quick", action="store_true", help="10 epochs, figures in OUT: to check the script")
    parser.add_argument("--variants", type=lambda text: text.split(","), default=None,
                        help=f"comma-separated subset of {','.join(v.key for v in VARIANTS)} (default all)")
    parser.add_argument("--figure-size", type=int, default=96, help="grid on which the models are drawn")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "img",
                        help="where the two PNGs go (OUT with --quick)")
    args = parser.parse_args()
    demo = load_config("demo", [f"line={LINE}"])
    epochs = args.epochs or (10 if args.quick else demo.train.epochs)
    figures = args.out if args.quick else args.figures
    torch.set_num_threads(2)

    started = time.perf_counter()
    data = make_data(args.out, demo.data.size, demo.data)
    print(f"data: {SEQUENCES} {LINE} phantom sequences x {FRAMES} frames at {demo.data.size}, seed {SEED}; "
          f"model: demo preset {demo.model.hidden_dims}, latent {demo.model.latent_dim}; {epochs} epochs, "
          f"lr decoder {demo.train.lr_decoder}, one process, 2 threads")
    variants = [v for v in VARIANTS if args.variants is None or v.key in args.variants]
    runs = {v.key: train(v, demo, epochs, data, args.out / "runs") for v in variants}
    rows = [measure(v, runs[v.key], data, epochs) for v in variants]
    print_table(rows)

    if BASELINE not in runs:
        return
    names = read_json(runs[BASELINE] / "reconstruction" / "reconstruct.json")["names"]
    sequence = richest_sequence(data, names)
    frames = [0, FRAMES // 2, FRAMES - 1]
    labels = {v.key: v.label for v in VARIANTS}
    for file, keys in FIGURES.items():
        surface_figure(figures / file, data, sequence, names[sequence_name(sequence)], frames,
                       [(labels[k], runs[k]) for k in keys if k in runs], args.figure_size)
    elapsed = time.perf_counter() - started
    print(f"\nfigures: sequence {sequence_name(sequence)}, frames {frames}; {elapsed:.0f} s in all")


if __name__ == "__main__":
    main()
