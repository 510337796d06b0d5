"""The auto-decoder: one latent code (and optionally one learned rotation) per training sequence,
and one shared SDF decoder. Codes and rotations are free parameters optimised with the network."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cellgen.config import ModelConfig
from cellgen.model.decoder import SdfDecoder
from cellgen.model.rotation import euler_to_matrix, rotate_points

ROTATION_INIT_STD = math.pi / 8  # the reference: Euler angles ~ N(0, pi^2 / 64)


class EulerRotations(nn.Module):
    """Per-sequence Euler angles (XYZ, as the reference). ``forward() -> (S, 3, 3)``.

    Euler angles have gimbal-lock points, but they start near identity (std pi/8) and are only
    optimised for ``opt_rot_epochs`` epochs at a small lr, so they stay far from the singular
    configurations (b = +-pi/2); we keep the reference parameterisation for comparability.
    """

    def __init__(self, n_sequences: int, std: float = ROTATION_INIT_STD):
        super().__init__()
        self.angles = nn.Parameter(torch.randn(n_sequences, 3) * std)

    def forward(self) -> Tensor:
        return euler_to_matrix(self.angles)


class AutoDecoder(nn.Module):
    """SDF of sequence ``s`` at (x, y, z, t): decoder(code_s, [xyz @ R_s, t])."""

    def __init__(self, cfg: ModelConfig, n_sequences: int):
        super().__init__()
        if n_sequences < 1:
            raise ValueError("an auto-decoder needs at least one sequence")
        self.n_sequences = n_sequences
        self.decoder = SdfDecoder(cfg)
        self.codes = nn.Embedding(n_sequences, cfg.latent_dim)
        std = cfg.code_init_std if cfg.code_init_std is not None else 1.0 / math.sqrt(cfg.latent_dim)
        nn.init.normal_(self.codes.weight, 0.0, std)
        self.rotations: EulerRotations | None = EulerRotations(n_sequences) if cfg.rotations else None

    def forward(self, sequence: Tensor, xyzt: Tensor) -> Tensor:
        if self.rotations is not None:
            rotation = self.rotations()[sequence]
            xyzt = torch.cat([rotate_points(xyzt[:, :3], rotation), xyzt[:, 3:]], dim=1)
        # Same as self.decoder(self.codes(sequence), xyzt), with the latent maps shared per sequence.
        return self.decoder.forward_indexed(self.codes.weight, sequence, xyzt)

    def rotation_matrices(self) -> Tensor:
        """(S, 3, 3), detached; identity when rotations are off."""
        if self.rotations is None:
            weight = self.codes.weight
            return torch.eye(3, dtype=weight.dtype, device=weight.device).expand(self.n_sequences, 3, 3).clone()
        return self.rotations().detach()

    def latent_codes(self) -> Tensor:
        """(S, L), detached."""
        return self.codes.weight.detach().clone()
