"""Shipped demo models and exported models: every shipped file loads safely, matches SHA256SUMS
and generates through ``cellgen generate --model``; export round-trips and is byte-stable; two
trainings of one config on one data set (real Ray Train, 2 DDP workers) give identical tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_generate_cli import one_error_line as one_line_of
from test_generate_fixtures import checkpoint_state, tiny_config, tiny_experiment, tiny_model  # noqa: F401
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.config import load_config
from cellgen.errors import CheckpointError
from cellgen.io import read_tiff
from cellgen.layout import ExperimentDir, SequenceDir
from cellgen.models import LINES, available, read_checksums, resolve, ship_demo_models, shipped_name
from cellgen.train.checkpoint import export_model, load_checkpoint, load_trained_model, save_checkpoint

runner = CliRunner()


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    return one_line_of(result)


# --------------------------------------------------------------------------------------------
# The shipped files
# --------------------------------------------------------------------------------------------


def test_every_line_ships_a_model():
    assert sorted(available()) == sorted(shipped_name(line) for line in LINES)


@pytest.mark.parametrize("line", LINES)
def test_shipped_model_matches_its_checksum_and_loads_safely(line):
    path = resolve(shipped_name(line))
    assert read_checksums()[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "optimizer" not in state
    assert state["config"]["line"] == line
    assert state["epoch"] == state["config"]["train"]["epochs"]  # a finished training
    assert path.stat().st_size < 1_000_000
    trained = load_trained_model(path)
    assert trained.model.n_sequences == len(state["sequences"])


@pytest.mark.parametrize("line", LINES)
def test_generate_with_a_shipped_model(line, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["generate", "--model", shipped_name(line), str(out), "--n", "2", "--size", "24", "--frames", "2"]
    )
    assert result.exit_code == 0, result.output
    for s in range(2):
        for f in range(2):
            mask, _ = read_tiff(SequenceDir(out / f"seq_{s:03d}").mask(f))
            assert mask.shape == (24, 24, 24) and mask.dtype == np.uint8
            assert 0 < (mask > 0).sum() < mask.size  # a cell, not an empty or full box


def test_unknown_model_is_one_line_naming_the_value_and_the_choices(tmp_path):
    line = one_error_line(runner.invoke(app, ["generate", "--model", "demo-nope", str(tmp_path / "out")]))
    assert "demo-nope" in line
    assert all(shipped_name(name) in line for name in LINES)
    assert not (tmp_path / "out").exists()


def test_exp_and_model_together_or_neither_are_one_line(tiny_experiment, tmp_path):  # noqa: F811
    both = one_error_line(runner.invoke(app, ["generate", str(tiny_experiment), str(tmp_path / "o"), "--model", "demo-filo"]))
    assert "not both" in both
    alone = one_error_line(runner.invoke(app, ["generate", str(tmp_path / "o")]))
    assert "EXP and OUT" in alone
    checkpoint = one_error_line(
        runner.invoke(app, ["generate", "--model", "demo-filo", str(tmp_path / "o"), "--checkpoint", str(tiny_experiment)])
    )
    assert "--checkpoint" in checkpoint
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def test_export_round_trip_is_stripped_stable_and_path_free(tiny_experiment, tmp_path):  # noqa: F811
    first = export_model(tiny_experiment, tmp_path / "a.pt")
    second = export_model(ExperimentDir(tiny_experiment).latest_checkpoint(), tmp_path / "sub" / "other-name.pt")
    raw = first.read_bytes()
    assert raw == second.read_bytes()  # the file name and the time of writing leave no trace
    assert str(tmp_path).encode() not in raw and str(tiny_experiment).encode() not in raw

    state = torch.load(first, map_location="cpu", weights_only=True)
    original = load_checkpoint(ExperimentDir(tiny_experiment).latest_checkpoint())
    assert "optimizer" not in state and "data_hash" not in state  # the data hash holds source mtimes
    for key in ("epoch", "config", "sequences", "frames", "data_size", "sdf_factor_min", "normalisation"):
        assert state[key] == original[key], key

    source, exported = load_trained_model(tiny_experiment), load_trained_model(first)
    generator = torch.Generator().manual_seed(0)
    xyzt = torch.rand(500, 4, generator=generator) * 2 - 1
    codes = torch.randn(500, source.config.model.latent_dim, generator=generator) * 0.1
    with torch.no_grad():
        assert torch.equal(source.model.decoder(codes, xyzt), exported.model.decoder(codes, xyzt))
        assert torch.equal(source.model.latent_codes(), exported.model.latent_codes())


def test_export_cli_then_generate_from_the_file(tiny_experiment, tmp_path):  # noqa: F811
    model = tmp_path / "shared" / "tiny.pt"
    made = runner.invoke(app, ["export", str(tiny_experiment), str(model)])
    assert made.exit_code == 0, made.output
    assert "exists" in one_error_line(runner.invoke(app, ["export", str(tiny_experiment), str(model)]))
    assert runner.invoke(app, ["export", str(tiny_experiment), str(model), "--force"]).exit_code == 0
    assert "no experiment" in one_error_line(runner.invoke(app, ["export", str(tmp_path / "missing"), str(tmp_path / "m.pt")]))

    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "--model", str(model), str(out), "--n", "1", "--size", "16", "--frames", "2"])
    assert result.exit_code == 0, result.output
    assert read_tiff(SequenceDir(out / "seq_000").mask(1))[0].max() == 255


def test_ship_exports_every_line_and_refuses_an_unfinished_training(tiny_model, tmp_path):  # noqa: F811
    model, factor = tiny_model
    finished = tiny_config().model_copy(update={"train": tiny_config().train.model_copy(update={"epochs": 1})})
    demo = tmp_path / "demo"
    for line in LINES:
        save_checkpoint(ExperimentDir(demo / line / "exp").checkpoint(1), checkpoint_state(model, factor, finished))
    target = tmp_path / "models"
    shipped = ship_demo_models(demo, target)
    assert sorted(shipped) == sorted(available(target)) == sorted(shipped_name(line) for line in LINES)
    sums = read_checksums(target)
    assert {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in ((p.name, p) for p in shipped.values())} == sums

    save_checkpoint(ExperimentDir(demo / "cele" / "exp").checkpoint(1), checkpoint_state(model, factor))  # 1 of 15000
    before = (target / "demo-plat.pt").stat().st_mtime_ns
    with pytest.raises(CheckpointError, match="cele demo training is not finished"):
        ship_demo_models(demo, target)
    assert (target / "demo-plat.pt").stat().st_mtime_ns == before  # nothing replaced


# --------------------------------------------------------------------------------------------
# Determinism of the real training path
# --------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_trainings_give_identical_tensors_and_export_bytes(ray_local, tmp_path):
    from cellgen.train.ray_job import train_experiment
    from cellgen.train.synthetic import write_sphere_dataset

    data = write_sphere_dataset(tmp_path / "data", n_sequences=4, frames=3, size=16, shards=2).root
    config = load_config(None, [
        "model.latent_dim=8", "model.hidden_dims=[32,32,32]", "model.latent_in=[2]", "train.epochs=4",
        "train.opt_rot_epochs=2", "train.code_reg_ramp=2", "train.frames_per_batch=2", "train.checkpoint_every=4",
        "train.workers=2", "train.lr_decoder=5e-4",
    ])
    states, exported = [], []
    for run in ("a", "b"):
        outcome = train_experiment(config, tmp_path / run, data)
        assert outcome.epoch == 4
        states.append(load_checkpoint(outcome.checkpoint))
        exported.append(export_model(tmp_path / run, tmp_path / f"{run}.pt").read_bytes())
    first, second = states
    assert first["model"].keys() == second["model"].keys()
    for name in first["model"]:
        assert torch.equal(first["model"][name], second["model"][name]), name
    for slot, values in first["optimizer"]["state"].items():  # Adam moments as well
        for key, value in values.items():
            assert torch.equal(value, second["optimizer"]["state"][slot][key]), (slot, key)
    assert exported[0] == exported[1]
