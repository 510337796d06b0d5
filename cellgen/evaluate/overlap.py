"""Agreement between two masks on the same grid: Dice, IoU and surface distances (pure)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from cellgen.evaluate.descriptors import VoxelSize

PAIR_METRICS: tuple[str, ...] = ("dice", "iou", "hausdorff", "hausdorff95", "mean_surface_distance")
"""Columns of ``pairs.csv`` besides set names and frame."""

_FACES = ndi.generate_binary_structure(3, 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2 |A & B| / (|A| + |B|); 1 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(a & b) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B|; 1 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return np.count_nonzero(a & b) / union


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one background face neighbour (outside the grid counts)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndi.binary_erosion(mask, structure=_FACES, border_value=0)


def surface_distances(
    a: np.ndarray, b: np.ndarray, voxel_size: VoxelSize = (1.0, 1.0, 1.0)
) -> dict[str, float]:
    """Hausdorff, 95th-percentile Hausdorff and mean symmetric distance between the surfaces.

    Distances run between surface voxel centres, in the voxel size's units, computed with exact
    Euclidean distance transforms on the two masks' joint bounding box. Both empty: 0; one
    empty: infinite.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    if not a.any() and not b.any():
        return {"hausdorff": 0.0, "hausdorff95": 0.0, "mean_surface_distance": 0.0}
    if not a.any() or not b.any():
        return dict.fromkeys(("hausdorff", "hausdorff95", "mean_surface_distance"), math.inf)
    box = _joint_box(a | b)
    surf_a = surface_voxels(a[box])
    surf_b = surface_voxels(b[box])
    spacing = tuple(float(v) for v in voxel_size)
    # Every surface voxel of either mask lies in the box, so distances within it are exact.
    a_to_b = ndi.distance_transform_edt(~surf_b, sampling=spacing)[surf_a]
    b_to_a = ndi.distance_transform_edt(~surf_a, sampling=spacing)[surf_b]
    both = np.concatenate([a_to_b, b_to_a])
    return {
        "hausdorff": float(max(a_to_b.max(), b_to_a.max())),
        "hausdorff95": float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))),
        "mean_surface_distance": float(both.mean()),
    }


def pair_metrics(a: np.ndarray, b: np.ndarray, voxel_size: VoxelSize = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Every metric of ``PAIR_METRICS`` for two masks of one shape."""
    return {"dice": dice(a, b), "iou": iou(a, b), **surface_distances(a, b, voxel_size)}


def _joint_box(mask: np.ndarray) -> tuple[slice, ...]:
    slices = ndi.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(s.start, s.stop) for s in slices)
