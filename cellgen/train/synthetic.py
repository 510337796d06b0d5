"""A small prepared data set of analytic shapes, in exactly the layout ``cellgen prepare`` writes.

Spheres whose centre and radius change with time: their signed distance is exact, so tests and
benchmarks of training, resuming and reconstruction need neither masks nor ``prepare``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cellgen.config import DataConfig
from cellgen.data.sdf import axis_coordinates, frame_time, sample_frame, sampling_rng
from cellgen.data.shards import FramePoints, write_shard
from cellgen.io import atomic_path, sha256_json, write_json_atomic
from cellgen.layout import DataDir, sequence_name


def sphere_sdf_voxels(size: tuple[int, int, int], centre: np.ndarray, radius: float, clamp: float) -> np.ndarray:
    """Signed distance in voxels (Z, Y, X) to a sphere given in [-1, 1] coordinates (cubic voxels)."""
    side = max(size)
    axes = [axis_coordinates(n) for n in size]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) - radius
    return np.minimum(dist * (side - 1) / 2, clamp).astype(np.float32)


def write_sphere_dataset(
    root: Path,
    n_sequences: int = 4,
    frames: int = 3,
    size: int = 16,
    shards: int = 2,
    sample_fraction: float = 0.25,
    normalisation: str = "frame",
    seed: int = 0,
) -> DataDir:
    """Write DATA/{sdf,points,manifest.json} for ``n_sequences`` moving, growing spheres."""
    data = DataDir(Path(root))
    grid = (size, size, size)
    cfg = DataConfig(size=grid, clamp=max(2.0, size / 4), normalisation=normalisation,
                     sample_fraction=sample_fraction, shards=shards, seed=seed)
    settings = cfg.model_dump(mode="json")
    settings_hash = sha256_json({"synthetic": "spheres", "n_sequences": n_sequences, "frames": frames, **settings})
    rng = np.random.default_rng(seed)
    sequences, all_frames = [], []
    for s in range(n_sequences):
        name = sequence_name(s)
        centre0 = rng.uniform(-0.2, 0.2, 3)
        drift = rng.uniform(-0.1, 0.1, 3)
        radius0 = rng.uniform(0.3, 0.5)
        volumes, factors = [], []
        for f in range(frames):
            t = frame_time(f, frames)
            sdf_vox = sphere_sdf_voxels(grid, centre0 + drift * t, radius0 * (1 + 0.25 * t), settings["clamp"])
            factor = float(np.abs(sdf_vox).max()) if normalisation == "frame" else max(grid) / 2
            sdf = sdf_vox / factor
            volumes.append(sdf)
            factors.append(factor)
            xyzt, values = sample_frame(sdf, t, cfg, sampling_rng(seed, s, f))
            all_frames.append(FramePoints(s, f, xyzt, values))
        with atomic_path(data.sdf_file(name)) as tmp, h5py.File(tmp, "w") as h5:
            h5.create_dataset("sdf_vid", data=np.stack(volumes), chunks=(1, *grid), compression="gzip")
            h5.attrs["norm_factors"] = factors
            h5.attrs["normalisation"] = normalisation
            h5.attrs["clamp"] = settings["clamp"]
        sequences.append({"name": name, "frames": frames, "sources": [], "sdf_file": f"sdf/{name}.h5",
                          "norm_factors": factors, "voxel_size": [1.0, 1.0, 1.0], "source_shape": list(grid)})
    shard_rows = []
    for k in range(shards):
        mine = all_frames[k::shards]
        write_shard(data.shard_file(k), mine, k, settings_hash)
        shard_rows.append({"file": f"points/{data.shard_file(k).name}", "frames": len(mine),
                           "points": sum(len(f.sdf) for f in mine)})
    factors = [x for seq in sequences for x in seq["norm_factors"]]
    write_json_atomic(data.manifest, {
        "format": 1, "settings": settings, "settings_hash": settings_hash, "size": list(grid),
        "n_points": sum(r["points"] for r in shard_rows), "sdf_factor_min": min(factors),
        "sdf_factor_max": max(factors), "sequences": sequences, "shards": shard_rows,
    })
    return data
