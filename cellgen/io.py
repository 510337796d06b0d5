"""File I/O shared by every stage: atomic writes, mask TIFFs, JSON.

Nothing half-written is ever visible: every writer here writes to a temporary name in the
destination folder and renames it into place (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cellgen.errors import InputDataError, OutputError

VoxelSize = tuple[float, float, float]  # (z, y, x), micrometres


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    ensure_writable_dir(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    # mkstemp creates 0600 files; give results the usual mode so collaborators can read them.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check that we can write into it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            "cannot create output folder", folder, f"{err.strerror}; choose a writable location"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError("output folder is not writable", folder, "choose a writable location")
    return folder


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputDataError("file not found", path) from None
    except json.JSONDecodeError as err:
        raise InputDataError("not valid JSON", path, f"line {err.lineno}: {err.msg}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    """Stable hash of a JSON-serialisable object (keys sorted)."""
    text = json.dumps(data, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Mask TIFFs (the layout of the published data sets: 3D uint8 ZYX, 0 / 255, ImageJ metadata)
# --------------------------------------------------------------------------------------------


def write_mask_tiff(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    voxel_size: VoxelSize = (1.0, 1.0, 1.0),
    unit: str = "um",
) -> None:
    """Write a binary 2D (YX) or 3D (ZYX) mask as uint8 0/255, zlib-compressed, ImageJ metadata.

    Fiji and napari read the axes and the voxel size from the file.
    """
    import tifffile

    data = np.asarray(mask)
    if data.dtype != np.uint8 or data.max(initial=0) not in (0, 255):
        data = np.where(data > 0, np.uint8(255), np.uint8(0))
    if data.ndim not in (2, 3):
        raise ValueError(f"mask must be 2D or 3D, got shape {data.shape}")
    write_image_tiff(path, data, voxel_size, unit)


def write_image_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    voxel_size: VoxelSize = (1.0, 1.0, 1.0),
    unit: str = "um",
) -> None:
    """Write a 2D (YX) or 3D (ZYX) image losslessly with ImageJ metadata, atomically."""
    import tifffile

    data = np.ascontiguousarray(image)
    vz, vy, vx = (float(v) for v in voxel_size)
    metadata: dict[str, Any] = {"axes": "ZYX" if data.ndim == 3 else "YX", "unit": unit}
    if data.ndim == 3:
        metadata["spacing"] = vz
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            imagej=True,
            resolution=(1.0 / vx, 1.0 / vy),
            metadata=metadata,
            compression="zlib",
        )


def read_tiff(path: str | os.PathLike[str]) -> tuple[np.ndarray, VoxelSize | None]:
    """Read a TIFF and the voxel size (z, y, x) from its ImageJ or OME metadata, if any.

    Unreadable or corrupt files raise one clear ``InputDataError`` naming the file.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            voxel_size = _tiff_voxel_size(tif)
    except FileNotFoundError:
        raise InputDataError("file not found", path) from None
    except Exception as err:  # tifffile raises many types for corrupt files
        raise InputDataError(
            "cannot read TIFF", path, f"{type(err).__name__}: {err}; is the file complete?"
        ) from None
    return data, voxel_size


def _tiff_voxel_size(tif: Any) -> VoxelSize | None:
    try:
        page = tif.pages[0]
        x_res = page.tags.get("XResolution")
        y_res = page.tags.get("YResolution")
        vx = vy = None
        if x_res is not None:
            num, den = x_res.value
            vx = den / num if num else None
        if y_res is not None:
            num, den = y_res.value
            vy = den / num if num else None
        vz = None
        if tif.is_imagej and tif.imagej_metadata:
            vz = tif.imagej_metadata.get("spacing")
        if tif.is_ome and tif.ome_metadata:
            import re

            for axis in ("Z", "Y", "X"):
                match = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', tif.ome_metadata)
                if match:
                    value = float(match.group(1))
                    if axis == "Z":
                        vz = value
                    elif axis == "Y":
                        vy = value
                    else:
                        vx = value
        if vx is None and vy is None and vz is None:
            return None
        vx = float(vx or 1.0)
        vy = float(vy or vx)
        vz = float(vz or 1.0)
        return (vz, vy, vx)
    except Exception:
        return None
