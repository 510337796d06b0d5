"""``cellgen generate`` end to end in-process: every output format read back, the manifest,
seeding, resuming, refusing, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_generate_fixtures import TRAIN_SIZE, tiny_experiment, tiny_model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.generate.writers import read_ply, read_sdf_video
from cellgen.io import read_tiff
from cellgen.layout import SequenceDir
from cellgen.train.checkpoint import load_trained_model

runner = CliRunner()


def generate(exp, out, *args):
    return runner.invoke(app, ["generate", str(exp), str(out), *map(str, args)])


def masks(out, sequences, frames):
    return {
        (s, f): read_tiff(SequenceDir(out / f"seq_{s:03d}").mask(f))[0] for s in range(sequences) for f in range(frames)
    }


def one_error_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("cellgen: error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def full_run(tiny_experiment, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("gen") / "out"
    result = generate(tiny_experiment, out, "--n", 2, "--frames", 3, "--size", "20,16,12", "--sdf", "--mesh", "--seed", 4)
    assert result.exit_code == 0, result.output
    return out


def test_outputs_read_back_with_shape_dtype_values_and_metadata(full_run):
    out = full_run
    for s in range(2):
        seq = SequenceDir(out / f"seq_{s:03d}")
        projections = []
        for f in range(3):
            mask, voxel_size = read_tiff(seq.mask(f))
            assert mask.shape == (20, 16, 12) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
            # Both grids span the training box: (24 - 1) / (n - 1) training voxels per output voxel.
            assert voxel_size == pytest.approx(((TRAIN_SIZE - 1) / 19, (TRAIN_SIZE - 1) / 15, (TRAIN_SIZE - 1) / 11))
            mip, _ = read_tiff(seq.mip(f))
            assert mip.shape == (16, 12) and mip.dtype == np.uint8
            assert np.array_equal(mip, mask.max(axis=0))
            projections.append(mip)
            vertices, faces = read_ply(seq.root / f"mesh_t{f:03d}.ply")
            assert len(faces) > 20 and faces.max() < len(vertices)
            extent = np.array([11, 15, 19]) * np.array(voxel_size[::-1])  # (x, y, z) box of the grid
            assert (vertices >= -1e-4).all() and (vertices <= extent + 1e-4).all()
        sdf = read_sdf_video(seq.root / "sdf.h5")
        assert sdf.shape == (3, 20, 16, 12) and sdf.dtype == np.float32
        for f in range(3):
            assert np.array_equal(sdf[f] <= 0, read_tiff(seq.mask(f))[0] > 0)
        import imageio.v3 as iio

        gif = iio.imread(seq.preview, index=None, extension=".gif")
        assert gif.shape[0] == 3
        assert np.array_equal(gif[..., 0] if gif.ndim == 4 else gif, np.stack(projections))
    assert not list(out.rglob(".*.tmp"))


def test_manifest_records_what_reproduces_each_sequence(full_run, tiny_experiment):  # noqa: F811
    manifest = json.loads((full_run / "manifest.json").read_text())
    trained = load_trained_model(tiny_experiment)
    assert manifest["checkpoint"]["sha256"] and manifest["checkpoint"]["path"].endswith(".pt")
    settings = manifest["settings"]
    assert settings["strategy"] == "local" and settings["sigma"] == 0.5 and settings["seed"] == 4 and settings["voxelizer"] == "adaptive"
    assert settings["size"] == [20, 16, 12] and settings["times"] == [-1.0, 0.0, 1.0]
    assert settings["debris_fraction"] == 0.2
    assert manifest["config"]["model"]["latent_dim"] == 8
    assert manifest["outputs"] == {"sdf": True, "mesh": True}
    assert len(manifest["sequences"]) == 2
    for record in manifest["sequences"]:
        assert record["seed"] == [4, record["index"]]
        assert len(record["code"]) == trained.model.latent_codes().shape[1]
        matrix = np.array(record["rotation"]["matrix"])
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-9)
        assert len(record["rotation"]["quaternion_wxyz"]) == 4


def test_same_seed_gives_identical_volumes_and_another_seed_does_not(full_run, tiny_experiment, tmp_path):  # noqa: F811
    again = tmp_path / "again"
    assert generate(tiny_experiment, again, "--n", 2, "--frames", 3, "--size", "20,16,12", "--seed", 4).exit_code == 0
    first, second = masks(full_run, 2, 3), masks(again, 2, 3)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    other = tmp_path / "other"
    assert generate(tiny_experiment, other, "--n", 2, "--frames", 3, "--size", "20,16,12", "--seed", 5).exit_code == 0
    assert not all(np.array_equal(first[k], v) for k, v in masks(other, 2, 3).items())


def test_rerun_completes_only_what_is_missing(tiny_experiment, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = ("--n", 2, "--frames", 2, "--size", 16)
    assert generate(tiny_experiment, out, *args).exit_code == 0
    before = masks(out, 2, 2)
    seq1 = SequenceDir(out / "seq_001")
    seq1.mask(1).unlink()
    seq1.preview.unlink()
    untouched = SequenceDir(out / "seq_000").mask(0)
    stamp = untouched.stat().st_mtime_ns
    result = generate(tiny_experiment, out, *args)
    assert result.exit_code == 0, result.output
    assert "1 sequence(s), 1 frame(s) rendered" in result.output
    assert untouched.stat().st_mtime_ns == stamp
    assert seq1.preview.exists()
    after = masks(out, 2, 2)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_other_settings_into_a_used_folder_are_refused_unless_forced(tiny_experiment, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert generate(tiny_experiment, out, "--n", 1, "--frames", 1, "--size", 12).exit_code == 0
    line = one_error_line(generate(tiny_experiment, out, "--n", 1, "--frames", 2, "--size", 12))
    assert "other settings" in line and "frames" in line and "--force" in line
    forced = generate(tiny_experiment, out, "--n", 1, "--frames", 2, "--size", 12, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "manifest.json").read_text())["settings"]["frames"] == 2
    assert SequenceDir(out / "seq_000").mask(1).exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not empty" in one_error_line(generate(tiny_experiment, foreign, "--n", 1, "--frames", 1, "--size", 12))


def test_non_cubic_grid_one_frame_no_rotation_dense(tiny_experiment, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = generate(tiny_experiment, out, "--n", 1, "--frames", 1, "--size", "8,24,16", "--no-rotate", "--voxelizer", "dense")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["times"] == [0.0]
    assert manifest["sequences"][0]["rotation"]["matrix"] == np.eye(3).tolist()
    mask, voxel_size = read_tiff(SequenceDir(out / "seq_000").mask(0))
    assert mask.shape == (8, 24, 16)
    assert voxel_size[0] > voxel_size[2] > voxel_size[1]  # fewer slices: thicker voxels


def test_interpolation_between_learned_sequences(tiny_experiment, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = generate(tiny_experiment, out, "--between", 0, 2, "--steps", 3, "--frames", 1, "--size", 12)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    learned = load_trained_model(tiny_experiment).model.latent_codes().numpy()
    records = manifest["sequences"]
    assert manifest["settings"]["strategy"] == "interpolate" and len(records) == 3
    np.testing.assert_allclose(records[0]["code"], learned[0], rtol=1e-6)
    np.testing.assert_allclose(records[2]["code"], learned[2], rtol=1e-6)
    assert records[0]["rotation"] == records[2]["rotation"]  # one orientation along the morph
    assert "disagree" in one_error_line(
        generate(tiny_experiment, tmp_path / "o2", "--between", 0, 2, "--steps", 3, "--n", 4)
    )
    assert "did not learn" in one_error_line(
        generate(tiny_experiment, tmp_path / "o3", "--between", 0, 7, "--steps", 3)
    )


def test_local_strategy_starts_from_learned_codes(tiny_experiment, tmp_path):  # noqa: F811
    learned = load_trained_model(tiny_experiment).model.latent_codes().numpy()
    runs = {}
    for sigma in (0.0, 0.5):
        out = tmp_path / f"local_{sigma}"
        result = generate(tiny_experiment, out, "--strategy", "local", "--sigma", sigma, "--n", 2, "--frames", 1, "--size", 12)
        assert result.exit_code == 0, result.output
        runs[sigma] = json.loads((out / "manifest.json").read_text())["sequences"]
    for copy, moved in zip(runs[0.0], runs[0.5]):
        base = copy["source"]["base_code"]
        assert moved["source"]["base_code"] == base  # same seed: same base, only the offset grows
        np.testing.assert_allclose(copy["code"], learned[base], rtol=1e-6)
        assert not np.allclose(moved["code"], learned[base], atol=1e-3)


def test_bad_input_gives_one_clear_line(tiny_experiment, tmp_path):  # noqa: F811
    assert "experiment folder not found" in one_error_line(generate(tmp_path / "missing", tmp_path / "o"))
    empty_exp = tmp_path / "empty_exp"
    empty_exp.mkdir()
    assert "no checkpoint" in one_error_line(generate(empty_exp, tmp_path / "o"))
    line = one_error_line(generate(tiny_experiment, tmp_path / "o", "--checkpoint", tmp_path / "nope.pt"))
    assert "nope.pt" in line
    assert "generate.n" in one_error_line(generate(tiny_experiment, tmp_path / "o", "--n", 0))
    assert "generate.size" in one_error_line(generate(tiny_experiment, tmp_path / "o", "--size", "16,0,16"))
    assert "--sigma" in one_error_line(generate(tiny_experiment, tmp_path / "o", "--sigma", -1))
    assert "generate.strategy" in one_error_line(generate(tiny_experiment, tmp_path / "o", "--strategy", "magic"))
    assert "at most 0.5" in one_error_line(generate(tiny_experiment, tmp_path / "o", "--strategy", "mix", "--sigma", 0.7))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "cannot create output folder" in one_error_line(generate(tiny_experiment, a_file / "out", "--n", 1))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in one_error_line(generate(tiny_experiment, tmp_path / "o", "--checkpoint", corrupt))
