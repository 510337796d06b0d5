"""The demo command end to end on a tiny setting (real phantoms, prepare, Ray Train, generate, evaluate)."""

from __future__ import annotations

import pytest
import tifffile
from typer.testing import CliRunner

from cellgen.cli import app

TINY = [
    "--set", "data.size=24", "--set", "data.clamp=4", "--set", "data.shards=2",
    "--set", "train.epochs=3", "--set", "train.checkpoint_every=3",
    "--set", "model.hidden_dims=[32,32,32]", "--set", "model.latent_in=[2]",
    "--set", "generate.size=24", "--set", "generate.n=2", "--set", "generate.frames=2",
]


@pytest.mark.ray
def test_demo_runs_the_whole_chain_and_reruns_as_a_no_op(ray_local, tmp_path):
    out = tmp_path / "demo"
    args = ["demo", str(out), "--lines", "cele", "--sequences", "2", "--frames", "3", *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    line = out / "cele"
    assert len(list((line / "masks").glob("seq_*/mask_t*.tif"))) == 6
    assert (line / "data" / "manifest.json").is_file()
    assert (line / "exp" / "checkpoints" / "epoch_000003.pt").is_file()
    assert len(list((line / "reconstructions").glob("seq_*/mask_t*.tif"))) == 6
    masks = sorted((line / "synthetic").glob("seq_*/mask_t*.tif"))
    assert len(masks) == 4
    assert tifffile.imread(masks[0]).shape == (24, 24, 24)
    assert (line / "synthetic" / "seq_000" / "preview.gif").is_file()
    assert (line / "report" / "report.md").is_file()
    summary = (out / "SUMMARY.md").read_text()
    assert "| cele | 3 |" in summary
    assert "reconstruction Dice" in result.output

    # A rerun finds everything done: no retraining, same checkpoint file.
    before = (line / "exp" / "checkpoints" / "epoch_000003.pt").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already trained" in again.output
    assert (line / "exp" / "checkpoints" / "epoch_000003.pt").stat().st_mtime_ns == before


def test_demo_rejects_unknown_line(tmp_path):
    result = CliRunner().invoke(app, ["demo", str(tmp_path), "--lines", "yeast"])
    assert result.exit_code == 2
    assert "unknown cell line" in result.output


def test_demo_draws_each_line_as_its_preset_does_unless_told_otherwise(tmp_path):
    from cellgen.config import load_config
    from cellgen.demo import DemoRequest, line_config

    for line in ("plat", "cele", "filo"):
        preset, demo = load_config(line).generate, line_config(DemoRequest(out=tmp_path), line).generate
        assert (demo.strategy, demo.sigma) == (preset.strategy, preset.sigma)
        assert demo.size == (48, 48, 48)  # everything else stays the demo's
    told = line_config(DemoRequest(out=tmp_path, overrides=["generate.strategy=noise"]), "plat").generate
    assert (told.strategy, told.sigma) == ("noise", None)  # the preset's sigma does not leak into another strategy
    spaced = line_config(DemoRequest(out=tmp_path, overrides=[" generate.strategy = noise"]), "plat").generate
    assert (spaced.strategy, spaced.sigma) == ("noise", None)  # recognised as --set parses it
