"""Finding and reading time-lapse mask sequences (the input of ``prepare`` and ``evaluate``).

A masks folder holds sequences, each either

* a folder of per-time-point 3D TIFFs (``seq_000/mask_t000.tif ...``; any ``<prefix>_t<number>``
  names, ordered by the number; next to them other series such as ``mip_t000.tif`` are ignored
  when a ``mask`` series exists), or
* one TIFF file holding a 4D stack (T, Z, Y, X), or a 3D stack (one time point).

``discover_sequences`` reads only the TIFF headers, so a whole data set is verified (readable,
3D, one frame shape per sequence) before any compute is spent; ``MaskSequence.read_frame`` then
reads one time point at a time (for a 4D stack only that frame's pages).

The voxel size comes from ImageJ or OME metadata; plain TIFF resolution tags are ignored because
many writers put a meaningless 72 dpi there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellgen.errors import InputDataError
from cellgen.io import VoxelSize, _tiff_voxel_size

TIFF_SUFFIXES = (".tif", ".tiff")

_TIME = re.compile(r"^(?P<prefix>.*?)[_-]?t(?P<time>\d+)$", re.IGNORECASE)
_PREFERRED_SERIES = "mask"


@dataclass(frozen=True)
class TiffHeader:
    """What a TIFF holds, from its header alone."""

    shape: tuple[int, ...]
    """Shape with length-1 axes dropped (Y and X are always kept)."""
    axes: str
    """One letter per axis of ``shape`` (tifffile's names: T time, Z depth, Q unknown, ...)."""
    dtype: np.dtype
    voxel_size: VoxelSize | None
    page_order: np.ndarray
    """Page numbers arranged over the leading (non-YX) axes of ``shape``."""


@dataclass(frozen=True)
class MaskSequence:
    """One time-lapse of masks of one cell; frames are read lazily, one at a time."""

    name: str
    n_frames: int
    voxel_size: VoxelSize | None
    """(z, y, x) from the files' metadata; None when the files do not record it."""
    sources: tuple[Path, ...]
    """The files: one per frame, or one 4D stack."""
    frame_shape: tuple[int, int, int]
    """(Z, Y, X) of every frame."""

    def file_of(self, frame: int) -> Path:
        """The file that holds frame ``frame``."""
        return self.sources[frame] if len(self.sources) == self.n_frames else self.sources[0]

    def source_of(self, frame: int) -> str:
        """Where frame ``frame`` comes from, for messages: a file, or 'file frame t'."""
        path = self.file_of(frame)
        return str(path) if len(self.sources) == self.n_frames else f"{path} frame {frame}"

    def read_frame(self, frame: int) -> np.ndarray:
        """Frame ``frame`` as a (Z, Y, X) array of the file's dtype."""
        if not 0 <= frame < self.n_frames:
            raise IndexError(f"{self.name} has {self.n_frames} frames, asked for frame {frame}")
        in_stack = len(self.sources) != self.n_frames
        data = _read_pages(self.file_of(frame), frame if in_stack else None)
        if data.shape != self.frame_shape:
            raise InputDataError(
                "frame has another shape than the sequence",
                self.source_of(frame),
                f"{data.shape} instead of {self.frame_shape}",
            )
        return data


def discover_sequences(root: str | Path) -> list[MaskSequence]:
    """Every mask sequence in ``root``, sorted by name, with all headers verified.

    Raises one ``InputDataError`` naming the file for: a missing or empty folder, an unreadable
    TIFF, a 2D image, frames of different shapes in one sequence.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputDataError("masks folder not found", root, "give a folder of mask sequences")
    sequences: list[MaskSequence] = []
    loose = sorted(p for p in root.iterdir() if p.is_file() and _is_tiff(p))
    timed = [p for p in loose if _TIME.match(_stem(p))]
    if len(timed) > 1:
        raise InputDataError(
            "the masks folder looks like ONE sequence (time-point files directly inside)",
            root,
            f"point at the folder that contains it, i.e. {root.parent}",
        )
    for path in loose:
        sequences.append(_stack_sequence(path))
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _frame_files(folder)
        if files:
            sequences.append(_folder_sequence(folder, files))
    if not sequences:
        raise InputDataError(
            "no mask sequences found", root, "expected sub-folders of *_t000.tif files or 4D TIFF files"
        )
    names = [s.name for s in sequences]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise InputDataError("two sequences share a name", f"{root / duplicate}", "rename one of them")
    return sorted(sequences, key=lambda s: s.name)


def select_frames(n_frames: int, max_frames: int | None) -> list[int]:
    """At most ``max_frames`` frame indices, evenly spread over the sequence (first and last kept)."""
    if max_frames is None or max_frames >= n_frames:
        return list(range(n_frames))
    if max_frames == 1:
        return [0]
    picks = np.round(np.linspace(0, n_frames - 1, max_frames)).astype(int)
    return sorted(set(picks.tolist()))


def read_header(path: Path) -> TiffHeader:
    """Shape, axes, dtype and voxel size of a TIFF, read from its header only."""
    with _open_tiff(path) as tif:
        return _header(tif, path)


# --------------------------------------------------------------------------------------------


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES and not path.name.startswith(".")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _require_volumes(path: Path, header: TiffHeader) -> None:
    """Masks are one-channel 3D data; a (T, Y, X) stack is 2D images over time."""
    if "C" in header.axes or "S" in header.axes:
        raise InputDataError("a mask must have one channel", path, f"axes {header.axes}, shape {header.shape}")
    if len(header.shape) == 2 or (len(header.shape) == 3 and header.axes[0] == "T"):
        raise InputDataError(
            "a 2D image, not a 3D mask",
            path,
            f"shape {header.shape} (axes {header.axes}); masks must be (Z, Y, X) per time point",
        )


def _stack_sequence(path: Path) -> MaskSequence:
    """One TIFF file: 4D (T, Z, Y, X) or 3D (a single time point)."""
    header = read_header(path)
    _require_volumes(path, header)
    shape = header.shape
    if len(shape) == 3:
        return MaskSequence(_stem(path), 1, header.voxel_size, (path,), shape)  # type: ignore[arg-type]
    if len(shape) == 4 and header.axes.find("T") in (-1, 0):
        return MaskSequence(_stem(path), shape[0], header.voxel_size, (path,), shape[1:])  # type: ignore[arg-type]
    raise InputDataError(
        "expected a 3D (Z, Y, X) or 4D (T, Z, Y, X) TIFF", path, f"shape {shape}, axes {header.axes}"
    )


def _frame_files(folder: Path) -> list[Path]:
    """The per-time-point files of a sequence folder, ordered by their time number."""
    series: dict[str, list[tuple[int, Path]]] = {}
    untimed: list[Path] = []
    for path in folder.iterdir():
        if not (path.is_file() and _is_tiff(path)):
            continue
        match = _TIME.match(_stem(path))
        if match:
            series.setdefault(match["prefix"], []).append((int(match["time"]), path))
        else:
            untimed.append(path)
    if not series:
        if len(untimed) > 1:
            raise InputDataError(
                "cannot order the TIFFs of a sequence by time", folder, "name them like mask_t000.tif, mask_t001.tif, ..."
            )
        return untimed
    if len(series) > 1:
        if _PREFERRED_SERIES not in series:
            raise InputDataError(
                "sequence folder holds several series of time points",
                folder,
                f"found prefixes {sorted(series)}; keep one, or name the masks mask_t000.tif ...",
            )
        chosen = series[_PREFERRED_SERIES]
    else:
        chosen = next(iter(series.values()))
    times = [t for t, _ in chosen]
    if len(set(times)) != len(times):
        raise InputDataError("two files of a sequence have the same time number", folder)
    return [p for _, p in sorted(chosen)]


def _folder_sequence(folder: Path, files: Sequence[Path]) -> MaskSequence:
    shapes = []
    voxel_size = None
    for i, path in enumerate(files):
        header = read_header(path)
        _require_volumes(path, header)
        if len(header.shape) != 3:
            raise InputDataError(
                "expected one 3D (Z, Y, X) time point per file", path, f"shape {header.shape}, axes {header.axes}"
            )
        if shapes and header.shape != shapes[0]:
            raise InputDataError(
                "frames of one sequence have different shapes",
                path,
                f"{header.shape} here, {shapes[0]} in {files[0].name}; crop or pad them to one shape",
            )
        shapes.append(header.shape)
        if i == 0:
            voxel_size = header.voxel_size
    return MaskSequence(folder.name, len(files), voxel_size, tuple(files), shapes[0])  # type: ignore[arg-type]


@contextlib.contextmanager
def _open_tiff(path: Path) -> Iterator[Any]:
    """An open ``tifffile.TiffFile``; any failure to read it becomes one ``InputDataError``."""
    import tifffile

    # tifffile logs what it finds wrong in a file; that becomes our one-line error instead.
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with tifffile.TiffFile(path) as tif:
            yield tif
    except InputDataError:
        raise
    except FileNotFoundError:
        raise InputDataError("file not found", path) from None
    except Exception as err:  # tifffile raises many types for corrupt files
        raise InputDataError("cannot read TIFF", path, f"{type(err).__name__}: {err}; is the file complete?") from None
    finally:
        log.setLevel(level)


def _header(tif: Any, path: Path) -> TiffHeader:
    series = tif.series[0]
    shape = tuple(int(s) for s in series.shape)
    axes = str(series.axes)
    if len(shape) < 2 or axes[-2:] != "YX":
        raise InputDataError("not an image stack with Y and X as the last axes", path, f"axes {axes}, shape {shape}")
    # Pages are 2D planes in C order over the leading axes (ImageJ, OME and tifffile stacks);
    # any other layout is read whole (page_order empty).
    planes = math.prod(shape[:-2])
    page_order = np.arange(planes) if planes == len(series.pages) else np.zeros(0, dtype=int)
    keep = [i for i, s in enumerate(shape) if s > 1 or i >= len(shape) - 2]
    squeezed = tuple(shape[i] for i in keep)
    if page_order.size:
        page_order = page_order.reshape(squeezed[:-2])
    return TiffHeader(
        shape=squeezed,
        axes="".join(axes[i] for i in keep),
        dtype=np.dtype(series.dtype),
        voxel_size=_tiff_voxel_size(tif) if (tif.is_imagej or tif.is_ome) else None,
        page_order=page_order,
    )


def _read_pages(path: Path, frame: int | None) -> np.ndarray:
    """A 3D TIFF, or frame ``frame`` of a 4D one (only that frame's pages where the layout allows)."""
    with _open_tiff(path) as tif:
        header = _header(tif, path)
        if frame is not None and header.page_order.size:
            pages = header.page_order[frame].ravel().tolist()
            return tif.asarray(key=pages, series=0).reshape(header.shape[1:])
        data = tif.series[0].asarray().reshape(header.shape)
        return data if frame is None else np.array(data[frame])
