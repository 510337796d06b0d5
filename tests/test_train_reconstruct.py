"""`cellgen reconstruct`: learned codes and rotations voxelized at any size and frame count, the
published layout, Dice against the prepared ground truth, reruns and refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.config import load_config
from cellgen.io import read_tiff
from cellgen.train.checkpoint import load_trained_model
from cellgen.train.experiment import plan_training
from cellgen.train.reconstruct import reconstruct
from cellgen.train.synthetic import write_sphere_dataset
from cellgen.train.worker import WorkerContext, run_worker

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A model trained in-process (no Ray) on 3 growing spheres, 16^3 x 3 frames."""
    root = tmp_path_factory.mktemp("recon")
    data = root / "data"
    write_sphere_dataset(data, n_sequences=3, frames=3, size=16, shards=1, sample_fraction=0.5)
    config = load_config("demo", [
        "model.latent_dim=8", "model.hidden_dims=[48,48,48]", "model.latent_in=[2]", "model.omega=15",
        "train.workers=1", "train.epochs=60", "train.frames_per_batch=1", "train.lr_decoder=1e-3",
        "train.lr_codes=3e-3", "train.lr_step=1000", "train.opt_rot_epochs=10", "train.checkpoint_every=60",
    ])
    torch.manual_seed(0)
    run_worker(plan_training(config, root / "exp", data, False), WorkerContext())
    return root / "exp", data


def test_reconstruction_matches_ground_truth(trained, tmp_path):
    exp, data = trained
    out = tmp_path / "rec"
    result = runner.invoke(app, ["reconstruct", str(exp), str(out), "--compare", str(data)])
    assert result.exit_code == 0, result.output
    assert "mean dice" in result.output
    rows = list(csv.DictReader(open(out / "dice.csv")))
    assert [r["sequence"] for r in rows] == ["seq_000", "seq_001", "seq_002", "mean"]
    assert float(rows[-1]["dice"]) > 0.75  # 0.85 measured; tiny spheres (radius 2-5 voxels)
    mask, _ = read_tiff(out / "seq_002" / "mask_t002.tif")
    assert mask.shape == (16, 16, 16) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def test_any_size_frames_and_selected_sequences_with_learned_rotation(trained, tmp_path):
    exp, _ = trained
    out = tmp_path / "rec"
    result = reconstruct(exp, out, size=(12, 10, 8), frames=4, sequences=[1], progress=False)
    assert result.frames_written == 4
    assert sorted(p.name for p in out.iterdir()) == ["reconstruct.json", "seq_001"]
    assert len(list((out / "seq_001").glob("mask_t*.tif"))) == 4
    mask = read_tiff(out / "seq_001" / "mask_t003.tif")[0] > 0
    assert mask.shape == (12, 10, 8)
    # The generation path (decoder + rotate_points) equals the training path (AutoDecoder.forward).
    model = load_trained_model(exp).model
    assert model.rotations is not None and not torch.allclose(model.rotation_matrices()[1], torch.eye(3))
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (12, 10, 8)), indexing="ij")
    xyzt = torch.stack([x.ravel(), y.ravel(), z.ravel(), torch.ones(z.numel())], 1)
    with torch.no_grad():
        expected = (model(torch.full((len(xyzt),), 1), xyzt) <= 0).reshape(12, 10, 8).numpy()
    assert np.mean(mask == expected) > 0.999

    # A rerun skips finished frames; other settings are refused unless --force.
    before = (out / "seq_001" / "mask_t000.tif").stat().st_mtime_ns
    again = reconstruct(exp, out, size=(12, 10, 8), frames=4, sequences=[1], progress=False)
    assert again.frames_written == 0
    assert (out / "seq_001" / "mask_t000.tif").stat().st_mtime_ns == before
    refused = runner.invoke(app, ["reconstruct", str(exp), str(out), "--frames", "2", "--sequences", "1"])
    assert refused.exit_code == 2 and "--force" in refused.output


def test_user_errors_are_one_line(trained, tmp_path):
    exp, data = trained
    cases = [
        ["reconstruct", str(tmp_path / "nope"), str(tmp_path / "o1")],
        ["reconstruct", str(exp), str(tmp_path / "o2"), "--sequences", "7"],
        ["reconstruct", str(exp), str(tmp_path / "o3"), "--size", "20", "--compare", str(data)],
        ["reconstruct", str(exp), str(tmp_path / "o4"), "--compare", str(tmp_path)],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("cellgen: error:"), result.output
