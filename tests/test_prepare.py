"""``cellgen prepare`` end to end: masks on disk -> sdf files, point shards, manifest (via the CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.data.masks import discover_sequences, select_frames
from cellgen.data.sdf import frame_time
from cellgen.data.shards import ShardReader, read_frames_table
from cellgen.errors import InputDataError
from cellgen.io import write_mask_tiff
from cellgen.layout import DataDir

runner = CliRunner()

N_SEQ, N_FRAMES, SIDE, GRID = 3, 4, 24, 32
OPTIONS = ["--size", str(GRID), "--clamp", "4", "--shards", "2", "--set", "data.sample_fraction=0.05"]
POINTS_PER_FRAME = round(0.05 * GRID**3)


def ellipsoid(seq: int, frame: int, side: int = SIDE) -> np.ndarray:
    """A cell that moves and grows a little from frame to frame; each sequence differs."""
    z, y, x = np.ogrid[:side, :side, :side]
    cz, cy, cx = 10 + seq, 11 + 0.5 * frame, 12 - seq
    return (z - cz) ** 2 / 25 + (y - cy) ** 2 / 36 + (x - cx) ** 2 / (16 + 2 * frame + seq) < 1


def write_masks(root: Path, n_seq: int = N_SEQ, n_frames: int = N_FRAMES, voxel_size=(1.0, 1.0, 1.0)) -> Path:
    for s in range(n_seq):
        for f in range(n_frames):
            write_mask_tiff(root / f"seq_{s:03d}" / f"mask_t{f:03d}.tif", ellipsoid(s, f), voxel_size)
    return root


def run(masks: Path, data: Path, *extra: str):
    return runner.invoke(app, ["prepare", str(masks), str(data), *OPTIONS, *extra])


def mtimes(paths) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prepared")
    masks = write_masks(root / "masks")
    result = run(masks, root / "data")
    assert result.exit_code == 0, result.output
    return masks, root / "data"


# --------------------------------------------------------------------------------------------
# What prepare writes
# --------------------------------------------------------------------------------------------


def test_sdf_files_hold_one_gzip_chunk_per_frame_and_their_provenance(prepared):
    masks, data = prepared
    layout = DataDir(data)
    for s in range(N_SEQ):
        with h5py.File(layout.sdf_file(f"seq_{s:03d}"), "r") as h5:
            vid = h5["sdf_vid"]
            assert vid.shape == (N_FRAMES, GRID, GRID, GRID) and vid.dtype == np.float32
            assert vid.chunks == (1, GRID, GRID, GRID) and vid.compression == "gzip"
            assert json.loads(h5.attrs["sources"]) == [
                str(masks / f"seq_{s:03d}" / f"mask_t{f:03d}.tif") for f in range(N_FRAMES)
            ]
            assert h5.attrs["clamp"] == 4.0 and h5.attrs["normalisation"] == "frame"
            assert len(h5.attrs["norm_factors"]) == N_FRAMES
            assert json.loads(h5.attrs["voxel_size"]) == [1.0, 1.0, 1.0]
            for f in range(N_FRAMES):
                sdf = vid[f]
                assert np.abs(sdf).max() == pytest.approx(1.0)
                inside = sdf <= 0
                assert inside.sum() == ellipsoid(s, f).sum()  # nothing lost, nothing added
                centre = np.array(ndimage.center_of_mass(inside))
                np.testing.assert_allclose(centre, (GRID - 1) / 2, atol=0.5)


def test_manifest_describes_sequences_and_shards(prepared):
    masks, data = prepared
    manifest = json.loads(DataDir(data).manifest.read_text())
    assert manifest["format"] == 1 and manifest["size"] == [GRID] * 3
    assert manifest["settings"]["clamp"] == 4.0 and isinstance(manifest["settings_hash"], str)
    assert [s["name"] for s in manifest["sequences"]] == ["seq_000", "seq_001", "seq_002"]
    for entry in manifest["sequences"]:
        assert entry["frames"] == N_FRAMES and len(entry["norm_factors"]) == N_FRAMES
        assert entry["source_shape"] == [SIDE] * 3 and entry["voxel_size"] == [1.0, 1.0, 1.0]
        assert (data / entry["sdf_file"]).is_file() and len(entry["sources"]) == N_FRAMES
    factors = [f for s in manifest["sequences"] for f in s["norm_factors"]]
    assert manifest["sdf_factor_min"] == min(factors) and manifest["sdf_factor_max"] == max(factors)
    assert manifest["n_points"] == N_SEQ * N_FRAMES * POINTS_PER_FRAME
    frames = [s["frames"] for s in manifest["shards"]]
    assert sum(frames) == N_SEQ * N_FRAMES and max(frames) - min(frames) <= 1
    assert sum(s["points"] for s in manifest["shards"]) == manifest["n_points"]
    # Nothing temporary is left behind.
    leftovers = [p for p in data.rglob("*") if p.is_file() and (p.name.startswith(".") or ".samples" in p.parts)]
    assert leftovers == []


def test_shards_hold_every_frame_exactly_once_across_sequences(prepared):
    _, data = prepared
    shards = DataDir(data).shard_files()
    assert [p.name for p in shards] == ["shard_000.h5", "shard_001.h5"]
    tables = [read_frames_table(p) for p in shards]
    seen = sorted((int(s), int(f)) for t in tables for s, f, _, _ in t)
    assert seen == [(s, f) for s in range(N_SEQ) for f in range(N_FRAMES)]
    assert all(len(set(t[:, 0])) == N_SEQ for t in tables)  # every shard mixes sequences
    reader = ShardReader(shards)
    batch = next(reader.iter_batches(frames_per_batch=2, epoch=0))
    assert batch.n_points == 2 * POINTS_PER_FRAME


def test_points_carry_their_voxels_sdf_and_frame_time(prepared):
    _, data = prepared
    layout = DataDir(data)
    with h5py.File(layout.shard_file(1), "r") as shard:
        table = shard["frames"][...]
        for seq, frame, start, count in table:
            xyzt = shard["xyzt"][start : start + count]
            values = shard["sdf"][start : start + count]
            assert np.all(shard["sequence"][start : start + count] == seq)
            assert np.all(xyzt[:, 3] == np.float32(frame_time(frame, N_FRAMES)))
            i, j, k = (np.rint((xyzt[:, a] + 1) / 2 * (GRID - 1)).astype(int) for a in range(3))
            with h5py.File(layout.sdf_file(f"seq_{seq:03d}"), "r") as h5:
                volume = h5["sdf_vid"][frame]
            np.testing.assert_array_equal(values, volume[k, j, i])
            assert np.count_nonzero(values <= 0.3) == round(0.7 * count)


# --------------------------------------------------------------------------------------------
# Other inputs
# --------------------------------------------------------------------------------------------


def test_a_4d_tiff_gives_the_same_volumes_as_a_folder_of_frames(prepared, tmp_path):
    _, data = prepared
    stack = np.stack([ellipsoid(0, f) for f in range(N_FRAMES)]).astype(np.uint8) * 255
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "masks" / "seq_000.tif", stack, imagej=True, metadata={"axes": "TZYX"}, compression="zlib")
    result = run(tmp_path / "masks", tmp_path / "data")
    assert result.exit_code == 0, result.output
    with h5py.File(DataDir(tmp_path / "data").sdf_file("seq_000"), "r") as a, h5py.File(
        DataDir(data).sdf_file("seq_000"), "r"
    ) as b:
        np.testing.assert_array_equal(a["sdf_vid"][...], b["sdf_vid"][...])


def test_single_frame_sequence_has_time_zero(tmp_path):
    write_mask_tiff(tmp_path / "masks" / "cell" / "mask_t000.tif", ellipsoid(1, 2))
    result = run(tmp_path / "masks", tmp_path / "data")
    assert result.exit_code == 0, result.output
    shards = DataDir(tmp_path / "data").shard_files()
    assert len(shards) == 1  # never more shards than frames
    with h5py.File(shards[0], "r") as h5:
        assert h5["xyzt"].shape == (POINTS_PER_FRAME, 4)
        assert np.all(h5["xyzt"][:, 3] == 0.0)


def test_voxel_size_from_metadata_makes_voxels_isotropic(tmp_path):
    write_mask_tiff(tmp_path / "masks" / "cell" / "mask_t000.tif", ellipsoid(0, 0), voxel_size=(2.0, 1.0, 1.0))
    result = run(tmp_path / "masks", tmp_path / "data")
    assert result.exit_code == 0, result.output
    manifest = json.loads(DataDir(tmp_path / "data").manifest.read_text())
    assert manifest["sequences"][0]["voxel_size"] == [2.0, 1.0, 1.0]
    with h5py.File(DataDir(tmp_path / "data").sdf_file("cell"), "r") as h5:
        inside = h5["sdf_vid"][0] <= 0
    assert inside.sum() == 2 * ellipsoid(0, 0).sum()  # every z slice doubled


def test_parallel_workers_give_identical_data(prepared, tmp_path):
    masks, data = prepared
    result = run(masks, tmp_path / "data", "--workers", "2")
    assert result.exit_code == 0, result.output
    for name in ("sdf/seq_001.h5", "points/shard_000.h5", "points/shard_001.h5"):
        with h5py.File(data / name, "r") as a, h5py.File(tmp_path / "data" / name, "r") as b:
            for key in a:
                np.testing.assert_array_equal(a[key][...], b[key][...])


def test_phantom_cells_keep_both_daughters_unless_largest_only(tmp_path):
    from cellgen.data.phantoms import write_phantoms

    write_phantoms(tmp_path / "masks", "cele", n=1, frames=2, size=(32, 32, 32), seed=0)
    components = {}
    for flag in ([], ["--largest-only"]):
        data = tmp_path / f"data{len(flag)}"
        result = run(tmp_path / "masks", data, *flag)
        assert result.exit_code == 0, result.output
        with h5py.File(DataDir(data).sdf_file("seq_000"), "r") as h5:
            last = h5["sdf_vid"][-1] <= 0
        components[bool(flag)] = ndimage.label(last, np.ones((3, 3, 3)))[1]
    assert components == {False: 2, True: 1}


def test_discovery_orders_frames_by_time_number_and_skips_projections(tmp_path):
    for f in (0, 2, 10):
        write_mask_tiff(tmp_path / "cell" / f"mask_t{f}.tif", ellipsoid(0, f % 4))
        write_mask_tiff(tmp_path / "cell" / f"mip_t{f}.tif", ellipsoid(0, 0).max(axis=0))
    (sequence,) = discover_sequences(tmp_path)
    assert [p.name for p in sequence.sources] == ["mask_t0.tif", "mask_t2.tif", "mask_t10.tif"]
    assert sequence.frame_shape == (SIDE, SIDE, SIDE) and sequence.voxel_size == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(sequence.read_frame(2) > 0, ellipsoid(0, 2))
    with pytest.raises(InputDataError, match="ONE sequence"):
        discover_sequences(tmp_path / "cell")


def test_max_frames_subsamples_evenly(tmp_path):
    masks = write_masks(tmp_path / "masks", n_seq=1, n_frames=7)
    result = run(masks, tmp_path / "data", "--set", "data.max_frames=3")
    assert result.exit_code == 0, result.output
    entry = json.loads(DataDir(tmp_path / "data").manifest.read_text())["sequences"][0]
    assert entry["frames"] == 3 and entry["source_frames"] == [0, 3, 6]
    assert select_frames(5, None) == [0, 1, 2, 3, 4] and select_frames(5, 1) == [0]


# --------------------------------------------------------------------------------------------
# Reruns
# --------------------------------------------------------------------------------------------


def test_rerun_skips_finished_work_and_force_redoes_it(tmp_path):
    masks = write_masks(tmp_path / "masks", n_seq=2, n_frames=3)
    data = DataDir(tmp_path / "data")
    assert run(masks, data.root).exit_code == 0
    sdf_files = sorted(data.sdf_dir.glob("*.h5"))
    before = mtimes([*sdf_files, *data.shard_files(), data.manifest])

    again = run(masks, data.root)
    assert again.exit_code == 0 and "up to date" in again.output
    assert mtimes([*sdf_files, *data.shard_files(), data.manifest]) == before

    # Another shard count rebuilds the shards (re-sampled from the sdf files), not the volumes.
    three = run(masks, data.root, "--shards", "3")
    assert three.exit_code == 0, three.output
    assert mtimes(sdf_files) == {str(p): before[str(p)] for p in sdf_files}
    assert len(data.shard_files()) == 3
    assert run(masks, data.root).exit_code == 0
    assert [p.name for p in data.shard_files()] == ["shard_000.h5", "shard_001.h5"]  # the stale one is gone
    with h5py.File(data.shard_file(0), "r") as h5, h5py.File(data.shard_file(1), "r") as h6:
        assert h5["frames"].shape[0] + h6["frames"].shape[0] == 6

    forced = run(masks, data.root, "--force")
    assert forced.exit_code == 0, forced.output
    assert all(p.stat().st_mtime_ns != before[str(p)] for p in sdf_files)


def test_rerun_with_other_settings_is_refused_without_force(tmp_path):
    masks = write_masks(tmp_path / "masks", n_seq=1, n_frames=2)
    data = DataDir(tmp_path / "data")
    assert run(masks, data.root).exit_code == 0
    before = mtimes([*data.sdf_dir.glob("*.h5"), *data.shard_files(), data.manifest])
    result = run(masks, data.root, "--clamp", "6")
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "clamp" in lines[0] and "--force" in lines[0]
    assert mtimes([*data.sdf_dir.glob("*.h5"), *data.shard_files(), data.manifest]) == before
    # Changed input is caught too.
    os.utime(masks / "seq_000" / "mask_t001.tif", ns=(1, 1))
    changed = run(masks, data.root)
    assert changed.exit_code != 0 and "changed" in changed.stderr


# --------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing half-written
# --------------------------------------------------------------------------------------------


def _corrupt(masks: Path) -> str:
    (masks / "seq_001" / "mask_t002.tif").write_bytes(b"II*\x00 this is not a tiff at all")
    return "mask_t002.tif"


def _truncated(masks: Path) -> str:
    path = masks / "seq_001" / "mask_t002.tif"
    write_mask_tiff(path, np.random.default_rng(0).random((SIDE, SIDE, SIDE)) > 0.5)
    path.write_bytes(path.read_bytes()[:-3000])
    return "mask_t002.tif"


def _garbled(masks: Path) -> str:
    """A sound header over corrupt pixel data: found only when the frame is read, mid-sequence."""
    path = masks / "seq_001" / "mask_t002.tif"
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[SIDE // 2].dataoffsets[0], tif.pages[SIDE // 2].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = bytes(count)
    path.write_bytes(bytes(raw))
    return "mask_t002.tif"


def _empty_frame(masks: Path) -> str:
    write_mask_tiff(masks / "seq_001" / "mask_t002.tif", np.zeros((SIDE, SIDE, SIDE), bool))
    return "no foreground"


def _two_d(masks: Path) -> str:
    write_mask_tiff(masks / "seq_001" / "mask_t002.tif", np.ones((SIDE, SIDE), bool))
    return "2D"


def _shapes_differ(masks: Path) -> str:
    write_mask_tiff(masks / "seq_001" / "mask_t002.tif", np.ones((SIDE, SIDE, SIDE + 2), bool))
    return "different shapes"


def _too_large(masks: Path) -> str:
    big = np.zeros((40, 40, 40), bool)
    big[2:38, 10:30, 10:30] = True
    for f in range(N_FRAMES):
        write_mask_tiff(masks / "seq_001" / f"mask_t{f:03d}.tif", big)
    return "--scale"


def _empty_folder(masks: Path) -> str:
    shutil.rmtree(masks)
    masks.mkdir()
    return "no mask sequences"


BAD_INPUTS = {
    "corrupt": _corrupt,
    "truncated": _truncated,
    "garbled": _garbled,
    "empty-frame": _empty_frame,
    "2d-image": _two_d,
    "shapes-differ": _shapes_differ,
    "cell-too-large": _too_large,
    "empty-folder": _empty_folder,
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_leaves_nothing_half_written(tmp_path, case):
    masks = write_masks(tmp_path / "masks", n_seq=2)
    expected = BAD_INPUTS[case](masks)
    data = DataDir(tmp_path / "data")
    result = run(masks, data.root)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and expected in lines[0]
    assert not data.manifest.exists() and data.shard_files() == []
    assert not data.sdf_file("seq_001").exists()
    if data.root.exists():
        assert [p for p in data.root.rglob("*.tmp")] == []


def test_unwritable_output_is_one_line(tmp_path):
    masks = write_masks(tmp_path / "masks", n_seq=1, n_frames=1)
    (tmp_path / "blocker").write_text("a file where the data folder's parent should be")
    result = run(masks, tmp_path / "blocker" / "data")
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "blocker" in lines[0] and "Traceback" not in result.output


def test_real_entry_point_prints_one_line_for_a_corrupt_tiff(tmp_path):
    """Through the console entry point, with its logging set up: tifffile's own complaints stay quiet."""
    masks = write_masks(tmp_path / "masks", n_seq=2, n_frames=3)
    _corrupt(masks)
    proc = subprocess.run(
        [sys.executable, "-c", "from cellgen.cli import main; main()", "prepare", str(masks), str(tmp_path / "data")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mask_t002.tif" in lines[0], proc.stderr
