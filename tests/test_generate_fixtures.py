"""A tiny trained model and its checkpoint for the generate tests (no tests here: fixtures only).

The model is fitted in a few seconds to analytic, moving and growing spheres given in the
normalised SDF units the real pipeline uses (per-frame max |sdf|, clamp), so the voxelizers see
a real SIREN with a real shape, and the checkpoint carries the same keys ``cellgen train`` writes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cellgen.config import CellgenConfig
from cellgen.model.autodecoder import AutoDecoder
from cellgen.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

TRAIN_SIZE = 24
CLAMP = 6.0
FRAMES = 3
SEQUENCES = 3


def tiny_config() -> CellgenConfig:
    return CellgenConfig.model_validate(
        {
            "name": "tiny",
            "data": {"size": [TRAIN_SIZE] * 3, "clamp": CLAMP},
            "model": {
                "latent_dim": 8,
                "hidden_dims": [32, 32, 32],
                "latent_in": [2],
                "xyz_in_all": False,
                "omega": 15,
                "rotations": True,
            },
            "generate": {"n": 2, "size": [20, 20, 20], "frames": 2},
        }
    )


def sphere_params(sequence: int, t: float) -> tuple[np.ndarray, float]:
    centre = np.array([0.15 * math.sin(sequence + 1), -0.1 * sequence / SEQUENCES, 0.05]) * (1 + 0.5 * t)
    radius = 0.35 + 0.08 * sequence + 0.1 * t
    return centre, radius


def normalised_sphere_sdf(xyz: np.ndarray, sequence: int, t: float) -> tuple[np.ndarray, float]:
    """(sdf in normalised units, voxels per SDF unit of that frame) on the training grid."""
    centre, radius = sphere_params(sequence, t)
    half = (TRAIN_SIZE - 1) / 2
    voxels = np.minimum((np.linalg.norm(xyz - centre, axis=1) - radius) * half, CLAMP)
    factor = max(CLAMP, radius * half)  # max |sdf| over the grid: the clamp or the centre depth
    return voxels / factor, factor


def fit_tiny_model(steps: int = 300, seed: int = 0) -> tuple[AutoDecoder, float]:
    """(fitted model, sdf_factor_min)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = tiny_config()
    model = AutoDecoder(config.model, SEQUENCES)
    times = [-1.0 + 2.0 * f / (FRAMES - 1) for f in range(FRAMES)]
    factors = [normalised_sphere_sdf(np.zeros((1, 3)), s, t)[1] for s in range(SEQUENCES) for t in times]
    optimizer = torch.optim.Adam(
        [{"params": model.decoder.parameters(), "lr": 2e-3}, {"params": model.codes.parameters(), "lr": 2e-3}]
    )
    batch = 3000
    for _ in range(steps):
        xyz = rng.uniform(-1, 1, (batch, 3))
        sequence = rng.integers(0, SEQUENCES, batch)
        frame_time = np.asarray(times)[rng.integers(0, FRAMES, batch)]
        target = np.empty(batch)
        for s in range(SEQUENCES):
            for t in times:
                pick = (sequence == s) & (frame_time == t)
                target[pick] = normalised_sphere_sdf(xyz[pick], s, t)[0]
        xyzt = torch.tensor(np.concatenate([xyz, frame_time[:, None]], 1), dtype=torch.float32)
        # Fit in the canonical frame: the learned rotations stay as initialised (not identity).
        pred = model.decoder(model.codes(torch.from_numpy(sequence)), xyzt)
        loss = (pred - torch.tensor(target, dtype=torch.float32)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, min(factors)


def checkpoint_state(model: AutoDecoder, sdf_factor_min: float, config: CellgenConfig | None = None) -> dict:
    config = config or tiny_config()
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": 1,
        "model": model.state_dict(),
        "optimizer": {},
        "config": config.to_dict(),
        "data_hash": "test",
        "sequences": [f"seq_{i:03d}" for i in range(model.n_sequences)],
        "frames": [FRAMES] * model.n_sequences,
        "data_size": [TRAIN_SIZE] * 3,
        "sdf_factor_min": sdf_factor_min,
        "sdf_factor_max": sdf_factor_min * 2,
        "normalisation": "frame",
        "cellgen_version": "test",
    }


def write_experiment(root: Path, model: AutoDecoder, sdf_factor_min: float) -> Path:
    """EXP/config.yaml and EXP/checkpoints/epoch_000001.pt, as ``cellgen train`` leaves them."""
    from cellgen.config import dump_config
    from cellgen.layout import ExperimentDir

    exp = ExperimentDir(root)
    config = tiny_config()
    dump_config(config, exp.config)
    save_checkpoint(exp.checkpoint(1), checkpoint_state(model, sdf_factor_min, config))
    return exp.root


@pytest.fixture(scope="session")
def tiny_model() -> tuple[AutoDecoder, float]:
    return fit_tiny_model()


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory, tiny_model) -> Path:
    model, factor = tiny_model
    return write_experiment(tmp_path_factory.mktemp("exp"), model, factor)
