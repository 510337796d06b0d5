"""Files of one generated sequence (the published layout; names from ``cellgen.layout``).

Every file is written under a temporary name and renamed into place, so a file that exists is
complete. Readers for the formats that have no reader elsewhere (PLY, the SDF video) live here
too, for tests and downstream users.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cellgen.io import VoxelSize, atomic_path, write_mask_tiff

SDF_DATASET = "sdf_vid"
PREVIEW_MS_PER_FRAME = 150
VOXEL_UNIT = "pixel"
"""Voxel sizes are in voxels of the training grid (ImageJ's name for uncalibrated units)."""


def mip(mask: np.ndarray) -> np.ndarray:
    """Maximum-intensity projection along Z of a (Z, Y, X) mask: uint8 (Y, X), 0 / 255."""
    return np.where(np.asarray(mask).any(axis=0), np.uint8(255), np.uint8(0))


def write_frame(mask_path: Path, mip_path: Path, mask: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
    """The 3D mask TIFF and its MIP TIFF (MIP last: a frame is done when both exist). Returns the MIP."""
    projection = mip(mask)
    write_mask_tiff(mask_path, mask, voxel_size, unit=VOXEL_UNIT)
    write_mask_tiff(mip_path, projection, voxel_size, unit=VOXEL_UNIT)
    return projection


def write_preview(path: Path, projections: list[np.ndarray]) -> None:
    """An animated GIF of the per-frame MIPs, looping."""
    import imageio.v3 as iio

    frames = np.stack([np.asarray(p, dtype=np.uint8) for p in projections])
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, extension=".gif", duration=PREVIEW_MS_PER_FRAME, loop=0)


@contextlib.contextmanager
def sdf_video_writer(
    path: Path, frames: int, shape: tuple[int, int, int], times: list[float], exact: str = "everywhere"
) -> Iterator[Callable[[int, np.ndarray], None]]:
    """``sdf.h5`` frame by frame: yields ``write(frame, sdf)``. Dataset ``sdf_vid`` float32
    (T, Z, Y, X), gzip, one chunk per frame (the format of ``cellgen prepare``); attribute
    ``exact`` says where the values are the network's (the adaptive voxelizer fills blocks away
    from the surface with their centre's value). The file appears only when the block ends
    without error and every frame was written."""
    import h5py

    written = np.zeros(frames, dtype=bool)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            data = fh.create_dataset(
                SDF_DATASET, shape=(frames, *shape), dtype="float32", chunks=(1, *shape), compression="gzip"
            )
            data.attrs["times"] = np.asarray(times, dtype=np.float64)
            data.attrs["exact"] = exact

            def write(frame: int, sdf: np.ndarray) -> None:
                data[frame] = np.asarray(sdf, dtype=np.float32)
                written[frame] = True

            yield write
        if not written.all():
            raise RuntimeError(f"SDF video {path} is missing frames {np.flatnonzero(~written).tolist()}")


def read_sdf_video(path: str | os.PathLike[str]) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as fh:
        return fh[SDF_DATASET][()]


# --------------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------------


def surface_mesh(sdf: np.ndarray, voxel_size: VoxelSize) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of a (Z, Y, X) SDF volume: vertices (V, 3) as (x, y, z) in voxel-size
    units and triangles (F, 3); empty arrays when the volume has no surface."""
    from skimage.measure import marching_cubes

    volume = np.asarray(sdf, dtype=np.float32)
    if volume.min() > 0 or volume.max() <= 0 or min(volume.shape) < 2:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
    vertices, faces, _, _ = marching_cubes(volume, level=0.0, spacing=tuple(float(v) for v in voxel_size))
    return vertices[:, ::-1].astype(np.float32), faces.astype(np.int32)


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY: float x, y, z per vertex; uchar count + int indices per face."""
    vertices = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    faces = np.asarray(faces, dtype="<i4").reshape(-1, 3)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by cellgen\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    face_records = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face_records["n"] = 3
    face_records["v"] = faces
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(vertices.tobytes())
            fh.write(face_records.tobytes())


def read_ply(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle PLY written by ``write_ply`` (vertices (V, 3), faces (F, 3))."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if header[1] != "format binary_little_endian 1.0":
        raise ValueError(f"{path}: only binary little-endian PLY is supported")
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    n_vertices, n_faces = counts["vertex"], counts["face"]
    vertices = np.frombuffer(data, dtype="<f4", count=3 * n_vertices, offset=end).reshape(-1, 3)
    face_records = np.frombuffer(
        data, dtype=[("n", "u1"), ("v", "<i4", (3,))], count=n_faces, offset=end + 12 * n_vertices
    )
    if n_faces and not (face_records["n"] == 3).all():
        raise ValueError(f"{path}: only triangle faces are supported")
    return vertices.copy(), face_records["v"].copy()
