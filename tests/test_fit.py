"""`cellgen fit`: codes (and rotations) of mask sequences fitted to a frozen decoder. A tiny model
is trained in-process (cellgen.train.loop, no Ray) on two ellipsoid sequences prepared by the
real ``prepare``; fitting them again must recover them, and a rotated copy needs the rotation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.config import DataConfig, load_config
from cellgen.data.masks import discover_sequences
from cellgen.data.prepare import prepare
from cellgen.data.shards import ShardReader
from cellgen.io import read_tiff, sha256_file, write_mask_tiff
from cellgen.layout import ExperimentDir
from cellgen.model.autodecoder import AutoDecoder
from cellgen.train.checkpoint import load_trained_model, save_checkpoint
from cellgen.train.experiment import checkpoint_state, plan_training, write_run_files
from cellgen.train.fit import (
    FitSettings,
    data_config,
    fit_generator,
    fit_latent,
    fit_sequences,
    predict,
    prepare_target,
    start_pool,
)
from cellgen.train.loop import build_optimizer, train_epoch

runner = CliRunner()

GRID = 20
FRAMES = 3
EPOCHS = 60
SEMI_AXES = {"cell_a": (8.0, 5.0, 4.5), "cell_b": (5.0, 5.0, 8.0)}  # (x, y, z) in voxels
TINY = [
    "model.latent_dim=8", "model.hidden_dims=[48,48,48]", "model.latent_in=[2]", "model.omega=30",
    "train.workers=1", f"train.epochs={EPOCHS}", "train.lr_decoder=1e-3", "train.lr_codes=5e-3",
    "train.lr_step=1000", "train.opt_rot_epochs=10", "train.code_reg_ramp=10",
]


def ellipsoid(semi_axes: tuple[float, float, float], frame: int, degrees: float = 0.0) -> np.ndarray:
    """A (Z, Y, X) mask growing 10 % per frame, optionally turned about the z axis."""
    z, y, x = np.meshgrid(*(np.arange(GRID) - (GRID - 1) / 2,) * 3, indexing="ij")
    angle = np.deg2rad(degrees)
    u, v = np.cos(angle) * x - np.sin(angle) * y, np.sin(angle) * x + np.cos(angle) * y
    a, b, c = (s * (1 + 0.1 * frame) for s in semi_axes)
    return (u / a) ** 2 + (v / b) ** 2 + (z / c) ** 2 <= 1


def write_sequence(folder: Path, semi_axes: tuple[float, float, float], degrees: float = 0.0) -> None:
    for f in range(FRAMES):
        write_mask_tiff(folder / f"mask_t{f:03d}.tif", ellipsoid(semi_axes, f, degrees))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Masks -> prepare -> a tiny SIREN auto-decoder with rotations, trained in this process."""
    root = tmp_path_factory.mktemp("fit")
    masks, data, exp = root / "masks", root / "data", root / "exp"
    for name, axes in SEMI_AXES.items():
        write_sequence(masks / name, axes)
    prepare(masks, data, DataConfig(size=GRID, clamp=4, sample_fraction=0.3, shards=1), progress=False)
    config = load_config("demo", TINY)
    plan = plan_training(config, exp, data, False)
    write_run_files(plan)
    torch.manual_seed(0)
    model = AutoDecoder(config.model, len(SEMI_AXES))
    optimizer = build_optimizer(model, config.train)
    batches = list(ShardReader(plan.data.shards).iter_batches(1, 0))  # one frame per step
    for epoch in range(EPOCHS):
        train_epoch(model, optimizer, batches, epoch, config.train)
    save_checkpoint(ExperimentDir(exp).checkpoint(EPOCHS),
                    checkpoint_state(plan, EPOCHS, model.state_dict(), optimizer.state_dict()))
    return {"root": root, "masks": masks, "data": data, "exp": exp}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("cellgen: error:"), result.output
    return lines[0]


# --------------------------------------------------------------------------------------------
# The stage, end to end
# --------------------------------------------------------------------------------------------


def test_fit_recovers_the_training_sequences(trained, tmp_path):
    out = tmp_path / "fit"
    checkpoint = ExperimentDir(trained["exp"]).latest_checkpoint()
    before = sha256_file(checkpoint)
    result = runner.invoke(app, ["fit", str(trained["exp"]), str(trained["masks"]), str(out), "--iterations", "100"])
    assert result.exit_code == 0, result.output
    assert "mean dice" in result.output and "cell_a" in result.output

    rows = read_csv(out / "fit.csv")
    assert [(r["sequence"], r["name"]) for r in rows] == [("seq_000", "cell_a"), ("seq_001", "cell_b"), ("mean", "")]
    assert all(float(r["dice"]) >= 0.9 for r in rows), rows  # 0.976 / 0.970 measured
    record = json.loads((out / "fit.json").read_text())
    assert record["settings"]["rotations"] is True and record["data_settings_from"].endswith("manifest.json")
    model = load_trained_model(trained["exp"]).model
    for s, entry in enumerate(record["sequences"]):
        assert entry["sequence"] == f"seq_{s:03d}" and entry["frames"] == FRAMES
        assert len(entry["dice_per_frame"]) == FRAMES and len(entry["loss_curve"]) == 100
        assert np.array(entry["rotation"]) @ np.array(entry["rotation"]).T == pytest.approx(np.eye(3), abs=1e-5)
        # The fit lands where training put this sequence: its own code, not the other one's.
        distances = (model.latent_codes() - torch.tensor(entry["code"])).norm(dim=1)
        assert int(distances.argmin()) == s, distances
    for s in range(2):
        for f in range(FRAMES):
            mask, _ = read_tiff(out / f"seq_{s:03d}" / f"mask_t{f:03d}.tif")
            assert mask.shape == (GRID,) * 3 and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert sha256_file(checkpoint) == before  # the decoder is frozen

    # A rerun skips finished sequences; other settings are refused unless --force.
    stamp = (out / "seq_001" / "mask_t002.tif").stat().st_mtime_ns
    again = runner.invoke(app, ["fit", str(trained["exp"]), str(trained["masks"]), str(out), "--iterations", "100"])
    assert again.exit_code == 0 and "0 sequence(s) fitted, 2 already done" in again.output, again.output
    assert (out / "seq_001" / "mask_t002.tif").stat().st_mtime_ns == stamp
    refused = runner.invoke(app, ["fit", str(trained["exp"]), str(trained["masks"]), str(out), "--iterations", "7"])
    assert "--force" in one_line_error(refused)


def test_rotation_is_needed_for_a_rotated_copy(trained, tmp_path):
    turned = tmp_path / "turned"
    write_sequence(turned / "cell_a_turned", SEMI_AXES["cell_a"], degrees=40)
    settings = dict(iterations=100)
    with_rotation = fit_sequences(trained["exp"], turned, tmp_path / "rot", FitSettings(**settings), progress=False)
    without = fit_sequences(trained["exp"], turned, tmp_path / "norot", FitSettings(rotations=False, **settings),
                            progress=False)
    rotated, fixed = with_rotation.records[0], without.records[0]
    assert rotated["dice"] >= 0.9, rotated["dice"]  # 0.97 measured
    assert rotated["dice"] > fixed["dice"] + 0.05, (rotated["dice"], fixed["dice"])  # 0.80 measured without
    assert rotated["loss"] < fixed["loss"]
    assert np.allclose(fixed["rotation"], np.eye(3))


def test_seeded_runs_are_identical_and_size_sets_the_output_grid(trained, tmp_path):
    settings = FitSettings(iterations=15, restarts=2, random_rotations=3, points_per_step=1024, seed=5)
    first = fit_sequences(trained["exp"], trained["masks"], tmp_path / "a", settings, size=(10, 12, 14), progress=False)
    second = fit_sequences(trained["exp"], trained["masks"], tmp_path / "b", settings, size=(10, 12, 14), progress=False)
    for a, b in zip(first.records, second.records):
        assert a["code"] == b["code"] and a["rotation"] == b["rotation"] and a["loss_curve"] == b["loss_curve"]
        assert a["dice"] == b["dice"]
    mask = read_tiff(tmp_path / "a" / "seq_001" / "mask_t001.tif")[0]
    assert mask.shape == (10, 12, 14)
    assert np.array_equal(mask, read_tiff(tmp_path / "b" / "seq_001" / "mask_t001.tif")[0])
    other = fit_sequences(trained["exp"], trained["masks"], tmp_path / "c",
                          FitSettings(iterations=15, restarts=2, random_rotations=3, points_per_step=1024, seed=6),
                          size=(10, 12, 14), progress=False)
    assert other.records[0]["loss_curve"] != first.records[0]["loss_curve"]


# --------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------


def test_unseen_masks_are_prepared_exactly_as_prepare_did(trained):
    """The fit's targets are the very points prepare wrote for training (same SDF, sampling, seed)."""
    trained_model = load_trained_model(trained["exp"])
    cfg, source = data_config(trained_model, trained["exp"])
    assert source.endswith("manifest.json") and cfg.size == (GRID,) * 3 and cfg.clamp == 4
    shard = ShardReader(sorted((trained["data"] / "points").glob("shard_*.h5")))
    batch = next(iter(shard.iter_batches(shard.n_frames, 0)))
    for s, sequence in enumerate(discover_sequences(trained["masks"])):
        target = prepare_target(sequence, cfg, s)
        mine = batch.sequence == s
        expected = np.lexsort(np.c_[batch.xyzt[mine], batch.sdf[mine]].T)
        got = np.lexsort(np.c_[target.xyzt, target.sdf].T)
        assert np.array_equal(target.xyzt[got], batch.xyzt[mine][expected])
        assert np.array_equal(target.sdf[got], batch.sdf[mine][expected])
        assert target.truth_mask(0).sum() == ellipsoid(SEMI_AXES[sequence.name], 0).sum()


def test_data_config_falls_back_to_the_checkpoint(trained, tmp_path):
    trained_model = load_trained_model(trained["exp"])
    cfg, source = data_config(trained_model, None)  # a bare checkpoint file: no data folder known
    assert source.startswith("checkpoint") and cfg.size == (GRID,) * 3 and cfg.normalisation == "frame"
    assert trained_model.config.data.size != (GRID,) * 3  # the demo preset's grid was not used
    elsewhere = tmp_path / "exp"
    (elsewhere).mkdir()
    (elsewhere / "data.json").write_text(json.dumps({"data": str(tmp_path / "gone")}))
    assert data_config(trained_model, elsewhere)[1].startswith("checkpoint")


def test_predict_matches_the_auto_decoder_and_fit_leaves_it_untouched(trained):
    model = load_trained_model(trained["exp"]).model
    xyzt = torch.rand(2, 50, 4) * 2 - 1
    codes, rotations = model.latent_codes(), model.rotation_matrices()
    with torch.no_grad():
        batched = predict(model.decoder, codes, rotations, xyzt)
        for s in range(2):
            direct = model(torch.full((50,), s), xyzt[s])
            assert torch.allclose(batched[s], direct, atol=1e-5)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    pool = start_pool(codes, rotations, ["cell_a", "cell_b"], True, 2, 0, 0)
    points = xyzt.reshape(-1, 4)
    fit = fit_latent(model.decoder, points, torch.zeros(len(points)), pool,
                     FitSettings(iterations=3, restarts=2, points_per_step=64), load_config("demo").train, True,
                     fit_generator(0, 0))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert len(fit.screen_losses) == len(pool) == 5 and len(fit.restarts) == 2 and len(fit.loss_curve) == 3


def test_start_pool():
    codes = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    learned = torch.stack([torch.eye(3), torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])])
    pool = start_pool(codes, learned, ["a", "b"], rotate=True, random=3, seed=0, sequence=4)
    assert pool.labels == ["mean code", "code of a", "code of b", *(f"mean code, random rotation {i}" for i in range(3))]
    assert torch.equal(pool.codes[0], torch.tensor([2.0, 1.0])) and torch.equal(pool.codes[2], codes[1])
    assert torch.equal(pool.rotations[2], learned[1]) and torch.equal(pool.rotations[0], torch.eye(3))
    identity = torch.eye(3).expand(len(pool), 3, 3)
    assert torch.allclose(pool.rotations @ pool.rotations.transpose(1, 2), identity, atol=1e-6)
    assert torch.allclose(torch.linalg.det(pool.rotations), torch.ones(len(pool)))
    assert torch.equal(pool.rotations, start_pool(codes, learned, ["a", "b"], True, 3, 0, 4).rotations)
    assert not torch.equal(pool.rotations[3:], start_pool(codes, learned, ["a", "b"], True, 3, 0, 5).rotations[3:])
    fixed = start_pool(codes, learned, ["a", "b"], rotate=False, random=3, seed=0, sequence=4)
    assert len(fixed) == 3 and torch.equal(fixed.rotations, torch.eye(3).expand(3, 3, 3))


# --------------------------------------------------------------------------------------------
# Bad input: one line each, nothing computed
# --------------------------------------------------------------------------------------------


def test_bad_input_is_one_line(trained, tmp_path):
    exp, masks = str(trained["exp"]), str(trained["masks"])
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases = {
        "no experiment": ["fit", str(tmp_path / "nope"), masks, str(tmp_path / "o1")],
        "no checkpoint": ["fit", exp, masks, str(tmp_path / "o2"), "--checkpoint", str(tmp_path / "none.pt")],
        "no masks": ["fit", exp, str(tmp_path / "missing"), str(tmp_path / "o3")],
        "empty masks": ["fit", exp, str(empty), str(tmp_path / "o4")],
        "unwritable out": ["fit", exp, masks, str(blocker / "out")],
        "bad lr": ["fit", exp, masks, str(tmp_path / "o5"), "--lr", "0"],
    }
    for what, args in cases.items():
        line = one_line_error(runner.invoke(app, args))
        assert what and line
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
