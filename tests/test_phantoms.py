"""Procedural phantoms: each line's defining property, determinism, files, reruns, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.morphology import ball
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.data.phantoms import LINES, RECORD_NAME, Grid, make_phantom, phantom_sequence, write_phantoms
from cellgen.errors import ConfigError, OutputError
from cellgen.layout import SequenceDir, sequence_name

FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity: the strictest test of "apart"


def components(mask: np.ndarray) -> int:
    return ndimage.label(mask, structure=FULL)[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def opened_away(mask: np.ndarray, radius: int = 3) -> float:
    """Share of the voxels a morphological opening with a ball of ``radius`` removes."""
    return 1 - ndimage.binary_opening(mask, ball(radius)).sum() / mask.sum()


# ------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [12, 32, 48, 96])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_cele_divides_from_one_cell_into_two(size, index):
    frames = list(phantom_sequence("cele", index, 5, (size, size, size), seed=0))
    assert components(frames[0]) == 1
    assert components(frames[-1]) == 2


@pytest.mark.parametrize("index", [0, 1, 2])
def test_filo_has_thin_protrusions_that_plat_lacks(index):
    filo = list(phantom_sequence("filo", index, 2, (48, 48, 48), seed=0))[-1]
    plat = list(phantom_sequence("plat", index, 2, (48, 48, 48), seed=0))[-1]
    assert opened_away(filo) > 0.1
    assert opened_away(plat) < 0.03
    assert components(filo) == 1  # filopodia and their branches stay attached


def test_filopodia_grow():
    frames = list(phantom_sequence("filo", 0, 6, (48, 48, 48), seed=0))
    thin = [f & ~ndimage.binary_opening(f, ball(3)) for f in frames]
    assert thin[-1].sum() > 1.5 * thin[0].sum()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_plat_changes_shape_smoothly(index):
    frames = list(phantom_sequence("plat", index, 12, (48, 48, 48), seed=0))
    consecutive = [dice(a, b) for a, b in zip(frames[:-1], frames[1:])]
    assert dice(frames[0], frames[-1]) < 0.95
    assert min(consecutive) > 0.85
    assert all(components(f) == 1 for f in frames)


@pytest.mark.parametrize("line", LINES)
def test_every_line_moves_smoothly_between_frames(line):
    frames = list(phantom_sequence(line, 3, 12, (40, 40, 40), seed=1))
    assert min(dice(a, b) for a, b in zip(frames[:-1], frames[1:])) > 0.75


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("size", [(32, 32, 32), (24, 48, 40), (64, 48, 56)])
def test_every_frame_is_non_empty_and_inside_the_central_box(line, size):
    extent = np.array(size)
    half = (extent - 1) / 2
    for index in range(3):
        for mask in phantom_sequence(line, index, 4, size, seed=5):
            assert mask.shape == size and mask.dtype == bool
            inside = np.argwhere(mask)
            assert len(inside) > 0
            # within the central 70 % of every axis (half a voxel for rounding) ...
            assert (np.abs(inside - half) <= 0.7 * half + 0.5).all()
            # ... so, in particular, nothing touches the border
            assert inside.min() > 0 and (inside.max(axis=0) < extent - 1).all()


@pytest.mark.parametrize("line", LINES)
def test_same_seed_same_cells_other_index_or_seed_other_cells(line):
    size = (32, 32, 32)
    first = np.stack(list(phantom_sequence(line, 2, 3, size, seed=7)))
    again = np.stack(list(phantom_sequence(line, 2, 3, size, seed=7)))
    other_index = np.stack(list(phantom_sequence(line, 3, 3, size, seed=7)))
    other_seed = np.stack(list(phantom_sequence(line, 2, 3, size, seed=8)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_index)
    assert not np.array_equal(first, other_seed)


def test_a_single_frame_is_the_start_of_the_sequence():
    only = next(phantom_sequence("cele", 0, 1, (32, 32, 32), seed=0))
    first = next(phantom_sequence("cele", 0, 7, (32, 32, 32), seed=0))
    assert np.array_equal(only, first)


@pytest.mark.parametrize(
    "line, n, frames, size, seed",
    [
        ("axon", 1, 1, (32, 32, 32), 0),
        ("plat", 0, 1, (32, 32, 32), 0),
        ("plat", 1, 0, (32, 32, 32), 0),
        ("plat", 1, 1, (32, 7, 32), 0),
        ("cele", 1, 1, (11, 32, 32), 0),
        ("plat", 1, 1, (32, 32, 32), -1),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, line, n, frames, size, seed):
    with pytest.raises(ConfigError):
        write_phantoms(tmp_path / "out", line, n, frames, size, seed)
    assert not (tmp_path / "out" / RECORD_NAME).exists()


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


def test_files_read_back_as_published_masks(tmp_path):
    size = (24, 32, 40)
    folders = write_phantoms(tmp_path, "filo", 2, 3, size, seed=4, voxel_size=(2.0, 0.5, 0.25))
    assert folders == [tmp_path / sequence_name(i) for i in range(2)]
    for index, folder in enumerate(folders):
        expected = list(phantom_sequence("filo", index, 3, size, seed=4))
        for frame, mask in enumerate(expected):
            with tifffile.TiffFile(SequenceDir(folder).mask(frame)) as tif:
                data = tif.asarray()
                assert tif.is_imagej and tif.series[0].axes == "ZYX"
                assert tif.imagej_metadata["spacing"] == pytest.approx(2.0)
                num, den = tif.pages[0].tags["XResolution"].value
                assert den / num == pytest.approx(0.25)
                num, den = tif.pages[0].tags["YResolution"].value
                assert den / num == pytest.approx(0.5)
            assert data.dtype == np.uint8 and data.shape == size
            assert set(np.unique(data)) == {0, 255}
            assert np.array_equal(data == 255, mask)
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert record["line"] == "filo" and record["n"] == 2 and record["frames"] == 3
    assert record["size"] == list(size) and record["seed"] == 4
    assert record["voxel_size"] == [2.0, 0.5, 0.25] and "cellgen_version" in record


def test_rerun_writes_only_what_is_missing(tmp_path):
    folders = write_phantoms(tmp_path, "plat", 2, 3, (24, 24, 24), seed=0)
    kept = SequenceDir(folders[0]).mask(1)
    lost = SequenceDir(folders[1]).mask(2)
    reference = lost.read_bytes()
    lost.unlink()
    kept.write_bytes(b"marker: a finished frame is never recomputed")
    messages = []
    write_phantoms(tmp_path, "plat", 2, 3, (24, 24, 24), seed=0, report=messages.append)
    assert kept.read_bytes().startswith(b"marker")
    assert lost.read_bytes() == reference
    assert any("1 of 2 sequences already complete" in m for m in messages)


def test_parallel_workers_write_the_same_files(tmp_path):
    write_phantoms(tmp_path / "serial", "cele", 3, 2, (20, 20, 20), seed=1)
    write_phantoms(tmp_path / "parallel", "cele", 3, 2, (20, 20, 20), seed=1, workers=2)
    for index in range(3):
        for frame in range(2):
            name = f"{sequence_name(index)}/mask_t{frame:03d}.tif"
            a = tifffile.imread(tmp_path / "serial" / name)
            b = tifffile.imread(tmp_path / "parallel" / name)
            assert np.array_equal(a, b)


def test_other_settings_are_refused_unless_forced(tmp_path):
    write_phantoms(tmp_path, "plat", 3, 3, (20, 20, 20), seed=0)
    with pytest.raises(OutputError, match="other settings"):
        write_phantoms(tmp_path, "plat", 3, 3, (20, 20, 20), seed=1)
    with pytest.raises(OutputError, match="frames 3 -> 2"):
        write_phantoms(tmp_path, "plat", 3, 2, (20, 20, 20), seed=0)
    write_phantoms(tmp_path, "cele", 2, 2, (20, 20, 20), seed=0, force=True)
    # --force leaves no mask of the old settings behind
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tif")) == [
        "seq_000/mask_t000.tif",
        "seq_000/mask_t001.tif",
        "seq_001/mask_t000.tif",
        "seq_001/mask_t001.tif",
    ]
    assert json.loads((tmp_path / RECORD_NAME).read_text())["line"] == "cele"


def test_foreign_mask_folders_are_not_overwritten(tmp_path):
    foreign = tmp_path / "seq_000" / "mask_t000.tif"
    foreign.parent.mkdir()
    foreign.write_bytes(b"someone's real data")
    with pytest.raises(OutputError, match="no phantoms.json"):
        write_phantoms(tmp_path, "plat", 1, 1, (16, 16, 16), seed=0)
    assert foreign.read_bytes() == b"someone's real data"


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_writes_phantoms(tmp_path):
    out = tmp_path / "cells"
    args = ["phantoms", str(out), "--line", "cele", "--n", "2", "--frames", "2", "--size", "16,20,24"]
    result = runner.invoke(app, [*args, "--seed", "3", "--voxel-size", "2"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    data = tifffile.imread(out / "seq_001" / "mask_t001.tif")
    assert data.shape == (16, 20, 24)
    assert json.loads((out / RECORD_NAME).read_text())["voxel_size"] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--line", "axon"], "unknown cell line"),
        (["--line", "plat", "--n", "0"], "number of sequences"),
        (["--line", "plat", "--frames", "0"], "number of frames"),
        (["--line", "plat", "--size", "7"], "at least 8 voxels"),
        (["--line", "plat", "--size", "32,32"], "--size must be one number or three"),
        (["--line", "plat", "--size", "big"], "--size must be one number or three"),
        (["--line", "plat", "--voxel-size", "1,0,1"], "voxel size must be 3 positive numbers"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, options, message):
    result = runner.invoke(app, ["phantoms", str(tmp_path / "out"), "--n", "1", "--frames", "1", *options])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = ["phantoms", str(blocker / "out"), "--line", "plat", "--n", "1", "--frames", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "cannot create output folder" in result.stderr


def test_cli_refuses_other_settings_without_force(tmp_path):
    base = ["phantoms", str(tmp_path), "--line", "plat", "--n", "1", "--frames", "2", "--size", "16"]
    assert runner.invoke(app, base).exit_code == 0
    refused = runner.invoke(app, [*base[:-1], "20"])
    assert refused.exit_code == 2 and "other settings" in refused.stderr
    assert runner.invoke(app, [*base[:-1], "20", "--force"]).exit_code == 0
    assert tifffile.imread(tmp_path / "seq_000" / "mask_t000.tif").shape == (20, 20, 20)


@pytest.mark.parametrize("line", LINES)
def test_bounding_boxes_cut_nothing_off(line):
    """Evaluating each primitive only in its box gives the same mask as the whole grid."""
    size = (28, 36, 32)
    for index in range(6):
        cell = make_phantom(line, index, size, seed=2)
        for tau in np.linspace(0, 1, 6):
            assert np.array_equal(cell.render(Grid(size), tau), cell.render(Grid(size, restrict=False), tau))
