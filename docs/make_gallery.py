"""Make the README gallery from a finished demo run: shaded 3D surfaces of real, reconstructed
and generated cells of every line, animated over time, and a small report plot.

    make demo && .venv/bin/python docs/make_gallery.py out/demo [--out docs/img] [--sequences 2]

Reads DEMO/<line>/{masks,reconstructions,synthetic,report} (the folders ``cellgen demo`` writes)
and writes, into --out:

- gallery.gif: rows are the lines, columns the training phantom seq_000, its reconstruction by
  the model, and --sequences generated cells; one GIF frame per time point, looping;
- gallery.png: the last frame of the GIF, as a still;
- report_distributions.png: four descriptor distributions, real vs generated, of one line
  (drawn by the report's own plot function from the report's descriptors.csv).

Every panel is a marching-cubes surface of the mask in normalised coordinates (-1..1, so 48^3
phantoms and 64^3 generated cells share one scale), lit by one fixed light, seen from one fixed
view, with the same axis limits in every panel of a row. The output depends only on the input
masks: rerunning on the same demo gives the same files.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellgen.demo import LINES
from cellgen.errors import CellgenError, InputDataError
from cellgen.io import atomic_path, read_tiff
from cellgen.layout import DemoLineDir, SequenceDir, sequence_name

# Surface colours follow the report's: real blue, generated red; the reconstruction in between.
COLOURS = {"real": "#4a90c8", "reconstruction": "#8a6cc0", "generated": "#d65a4f"}
VIEW = {"elev": 22.0, "azim": -58.0}
LIGHT = np.array([-0.45, -0.65, 0.62])  # (x, y, z), towards the light: upper left, in front
AMBIENT = 0.3
SMOOTHING = 10
"""Taubin smoothing passes over the marching-cubes mesh: they hide the voxel staircase of 48^3
masks without shrinking the cell or erasing thin filopodia (smoothing the mask would)."""
FPS = 4
PANEL_INCHES, DPI = 2.4, 80
REPORT_DESCRIPTORS = ("volume", "surface_area", "sphericity", "elongation")


@dataclass(frozen=True)
class Panel:
    """One cell of the grid: a mask sequence and how it is labelled and coloured."""

    folder: Path
    title: str
    kind: str  # a key of COLOURS


@dataclass(frozen=True)
class Surface:
    triangles: np.ndarray  # (F, 3, 3) vertex coordinates (x, y, z), normalised
    shade: np.ndarray  # (F,) brightness in [AMBIENT, 1]


def line_panels(demo: Path, line: str, generated: int) -> list[Panel]:
    dirs = DemoLineDir.of(demo, line)
    first = sequence_name(0)
    panels = [
        Panel(dirs.masks / first, f"training phantom {first}", "real"),
        Panel(dirs.reconstructions / first, f"reconstruction of {first}", "reconstruction"),
    ]
    panels += [
        Panel(dirs.synthetic / sequence_name(i), f"generated {sequence_name(i)}", "generated")
        for i in range(generated)
    ]
    return panels


def read_sequence(folder: Path) -> list[np.ndarray]:
    """Every frame of a mask sequence as a boolean (Z, Y, X) array, first frame first."""
    sequence = SequenceDir(folder)
    frames = []
    while sequence.mask(len(frames)).is_file():
        frames.append(read_tiff(sequence.mask(len(frames)))[0] > 0)
    if not frames:
        raise InputDataError(
            "no mask_t000.tif in", folder, "pass the folder of a finished `cellgen demo` run, e.g. out/demo after make demo"
        )
    return frames


def frame_at(frames: Sequence[np.ndarray], step: int, steps: int) -> np.ndarray:
    """The frame shown at animation step ``step`` of ``steps``: the one nearest in normalised time,
    so sequences of different lengths stay in step."""
    if steps == 1:
        return frames[-1]
    return frames[round(step * (len(frames) - 1) / (steps - 1))]


def mask_surface(mask: np.ndarray) -> Surface:
    """Marching-cubes surface (step 1) of a mask, smoothed, in normalised (x, y, z), shaded by
    one light."""
    from skimage.measure import marching_cubes

    if not mask.any():
        return Surface(np.zeros((0, 3, 3)), np.zeros(0))
    # A border of background closes surfaces that touch the grid's edge.
    padded = np.pad(mask.astype(np.float32), 2)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, step_size=1)
    verts = taubin_smooth(verts, faces, SMOOTHING)
    shape = np.array(mask.shape, dtype=np.float64)
    zyx = -1.0 + 2.0 * (verts - 2.0) / np.maximum(shape - 1.0, 1.0)
    triangles = zyx[:, ::-1][faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    # With (x, y, z) vertex order, marching cubes' winding makes these normals point outwards.
    diffuse = np.clip(normals @ (LIGHT / np.linalg.norm(LIGHT)), 0.0, None)
    return Surface(triangles, AMBIENT + (1.0 - AMBIENT) * diffuse)


def taubin_smooth(verts: np.ndarray, faces: np.ndarray, passes: int,
                  shrink: float = 0.5, inflate: float = -0.53) -> np.ndarray:
    """Taubin's lambda/mu smoothing: each pass moves every vertex towards the mean of its mesh
    neighbours by ``shrink``, then away by ``inflate``, which smooths without shrinking."""
    from scipy.sparse import coo_matrix

    n = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0  # an edge shared by two faces counts once
    degree = np.maximum(np.asarray(adjacency.sum(axis=1)), 1.0)
    smoothed = verts.astype(np.float64)
    for _ in range(passes):
        for factor in (shrink, inflate):
            smoothed = smoothed + factor * (adjacency @ smoothed / degree - smoothed)
    return smoothed


def row_limits(surfaces: Sequence[Surface]) -> tuple[np.ndarray, float]:
    """Centre and half side of one cube holding every surface of a row (all its frames)."""
    points = [s.triangles.reshape(-1, 3) for s in surfaces if len(s.triangles)]
    if not points:
        return np.zeros(3), 1.0
    stacked = np.concatenate(points)
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    return (lo + hi) / 2.0, float((hi - lo).max()) / 2.0 * 1.05


def draw_gallery(rows: dict[str, list[Panel]]) -> list[np.ndarray]:
    """Render every animation step of the grid; returns RGB uint8 images, one per step."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    sequences = {
        line: [read_sequence(p.folder) for p in panels] for line, panels in rows.items()
    }
    steps = max(len(frames) for seqs in sequences.values() for frames in seqs)
    surfaces = {
        line: [[mask_surface(frame_at(frames, step, steps)) for frames in seqs] for step in range(steps)]
        for line, seqs in sequences.items()
    }
    columns = max(len(panels) for panels in rows.values())
    left, top, bottom = 0.45, 0.4, 0.3  # inches: row labels, column titles, time caption
    width = left + PANEL_INCHES * columns
    height = top + bottom + PANEL_INCHES * len(rows)
    fig = plt.figure(figsize=(width, height), dpi=DPI, facecolor="white")
    axes = {}
    for r, (line, panels) in enumerate(rows.items()):
        centre, half = row_limits([s for step in surfaces[line] for s in step])
        y0 = (bottom + PANEL_INCHES * (len(rows) - 1 - r)) / height
        fig.text(0.3 / width, y0 + PANEL_INCHES / 2 / height, line, rotation=90,
                 ha="center", va="center", fontsize=12, fontweight="bold")
        for c, panel in enumerate(panels):
            ax = fig.add_axes(
                ((left + PANEL_INCHES * c) / width, y0, PANEL_INCHES / width, PANEL_INCHES / height),
                projection="3d",
            )
            ax.view_init(**VIEW)
            ax.set_box_aspect((1, 1, 1), zoom=1.25)
            ax.set_xlim(centre[0] - half, centre[0] + half)
            ax.set_ylim(centre[1] - half, centre[1] + half)
            ax.set_zlim(centre[2] - half, centre[2] + half)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(panel.title, fontsize=9, pad=0, y=0.98)
            axes[line, c] = ax
    caption = fig.text(0.5, 0.1 / height, "", ha="center", va="bottom", fontsize=9, color="#444444")

    images = []
    for step in range(steps):
        for (line, c), ax in axes.items():
            for artist in list(ax.collections):
                artist.remove()
            surface = surfaces[line][step][c]
            if len(surface.triangles):
                colour = np.array(to_rgb(COLOURS[rows[line][c].kind]))
                shaded = surface.shade[:, None] * colour
                # Edges in the face colour close the hairline seams anti-aliasing leaves between
                # neighbouring triangles (they read as a dotted texture otherwise).
                ax.add_collection3d(Poly3DCollection(
                    surface.triangles, facecolors=shaded, edgecolors=shaded, linewidths=0.3,
                ))
        caption.set_text(f"time point {step + 1} of {steps}")
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return images


def write_gif_and_still(images: Sequence[np.ndarray], gif: Path, still: Path, colours: int = 96) -> None:
    """One palette for every frame (no flicker, small file), the GIF looping at FPS; the still
    is the last frame in the same palette."""
    from PIL import Image

    height = images[0].shape[0]
    montage = Image.fromarray(np.concatenate(images, axis=0))
    palette = montage.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    frames = [palette.crop((0, i * height, palette.width, (i + 1) * height)) for i in range(len(images))]
    with atomic_path(gif) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=round(1000 / FPS), loop=0)
    with atomic_path(still) as tmp:
        frames[-1].save(tmp, format="PNG", optimize=True)


def write_report_plot(demo: Path, line: str, path: Path) -> None:
    """The report's distribution histograms of a few descriptors, from its descriptors.csv."""
    from cellgen.evaluate.plots import plot_distributions

    table = DemoLineDir.of(demo, line).report / "descriptors.csv"
    if not table.is_file():
        raise InputDataError("no report table", table, "run `cellgen demo` to the end (evaluate writes it)")
    values: dict[str, dict[str, list[float]]] = {"real": {}, "synthetic": {}}
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            for name in REPORT_DESCRIPTORS:
                values[row["set"]].setdefault(name, []).append(float(row[name]))
    plot_distributions(values, REPORT_DESCRIPTORS, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="folder of a finished `cellgen demo` run (out/demo)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    parser.add_argument("--sequences", type=int, default=2, choices=(1, 2, 3, 4),
                        help="generated cells shown per line")
    parser.add_argument("--report-line", default="cele", choices=LINES,
                        help="line whose descriptor distributions are plotted")
    args = parser.parse_args()
    try:
        rows = {line: line_panels(args.demo, line, args.sequences) for line in LINES}
        images = draw_gallery(rows)
        gif, still = args.out / "gallery.gif", args.out / "gallery.png"
        write_gif_and_still(images, gif, still)
        report = args.out / "report_distributions.png"
        write_report_plot(args.demo, args.report_line, report)
    except CellgenError as err:
        sys.exit(f"make_gallery: {err}")
    for path in (gif, still, report):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
