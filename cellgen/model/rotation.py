"""Rotations as pure torch functions (differentiable; batched over leading dimensions).

Euler angles follow the reference's "XYZ" convention: R = R_x(a) @ R_y(b) @ R_z(c), and points
are row vectors rotated as ``xyz @ R``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def euler_to_matrix(angles: Tensor) -> Tensor:
    """Euler angles (..., 3) [about x, about y, about z] -> rotation matrices (..., 3, 3)."""
    if angles.shape[-1] != 3:
        raise ValueError(f"angles must end in a dimension of 3, got shape {tuple(angles.shape)}")
    a, b, c = angles.unbind(-1)
    return _axis_matrix(a, 0) @ _axis_matrix(b, 1) @ _axis_matrix(c, 2)


def _axis_matrix(angle: Tensor, axis: int) -> Tensor:
    """Rotation by ``angle`` about coordinate ``axis`` (0 = x, 1 = y, 2 = z), shape (..., 3, 3)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = (one, zero, zero, zero, cos, -sin, zero, sin, cos)
    elif axis == 1:
        rows = (cos, zero, sin, zero, one, zero, -sin, zero, cos)
    else:
        rows = (cos, -sin, zero, sin, cos, zero, zero, zero, one)
    return torch.stack(rows, -1).reshape(*angle.shape, 3, 3)


def rotate_points(xyz: Tensor, rotation: Tensor) -> Tensor:
    """Rotate row-vector points: ``xyz`` (N, 3) @ ``rotation`` (3, 3) or one matrix per point (N, 3, 3)."""
    if rotation.dim() == 2:
        return xyz @ rotation
    return torch.bmm(xyz.unsqueeze(1), rotation).squeeze(1)
