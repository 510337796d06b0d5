"""Real-vs-synthetic comparison (pure functions) and the ``cellgen evaluate`` stage end to end."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.errors import InputDataError
from cellgen.evaluate import compare
from cellgen.evaluate.compare import CompactSequence
from cellgen.evaluate.descriptors import FRAME_DESCRIPTORS, SEQUENCE_DESCRIPTORS
from cellgen.evaluate.overlap import PAIR_METRICS
from cellgen.evaluate.report import evaluate, run_parallel
from cellgen.io import write_mask_tiff
from cellgen.layout import SequenceDir, sequence_name

runner = CliRunner()


# --------------------------------------------------------------------------------------------
# Helpers: small growing / dividing blobs written in the published layout
# --------------------------------------------------------------------------------------------


def blob_frames(index: int, frames: int, n: int = 20, divide: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(index)
    z, y, x = np.ogrid[:n, :n, :n]
    c = (n - 1) / 2 + rng.uniform(-1, 1, 3)
    r0 = rng.uniform(3.5, 5.0)
    out = []
    for t in range(frames):
        r = r0 + 0.4 * t
        if divide and t == frames - 1:
            gap = r + 1.5
            m = ((z - c[0]) ** 2 + (y - c[1] + gap) ** 2 + (x - c[2]) ** 2 <= (0.8 * r) ** 2) | (
                (z - c[0]) ** 2 + (y - c[1] - gap) ** 2 + (x - c[2]) ** 2 <= (0.8 * r) ** 2
            )
        else:
            m = (z - c[0]) ** 2 + ((y - c[1]) / 1.3) ** 2 + (x - c[2]) ** 2 <= r**2
        out.append(m)
    return out


def write_set(root: Path, seeds, frames: int = 3, n: int = 20, divide: bool = False) -> Path:
    for i, seed in enumerate(seeds):
        seq = SequenceDir(root / sequence_name(i))
        for t, mask in enumerate(blob_frames(seed, frames, n, divide)):
            write_mask_tiff(seq.mask(t), mask)
    return root


def run_cli(*args: str):
    result = runner.invoke(app, ["evaluate", *args])
    return result, (result.stderr if hasattr(result, "stderr") else result.output).strip()


def assert_one_line_error(result, text: str, needle: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cellgen: error:"), text
    assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def test_identical_sets_are_zero_apart():
    values = np.random.default_rng(0).normal(5, 2, 200)
    assert compare.normalised_wasserstein(values, values.copy()) == (0.0, 0.0)
    ks, p = compare.ks_statistic(values, values[::-1])
    assert ks == 0.0 and p == pytest.approx(1.0)


def test_wasserstein_is_in_units_of_the_real_spread():
    rng = np.random.default_rng(1)
    real = rng.normal(0, 2, 4000)
    _, shifted = compare.normalised_wasserstein(real, real + 2.0)  # one real std away
    assert shifted == pytest.approx(1.0, rel=0.02)
    ks, _ = compare.ks_statistic(real, real + 100)
    assert ks == 1.0
    # Constant real values fall back to the pooled spread; NaNs are ignored.
    w, w_norm = compare.normalised_wasserstein([1, 1, 1, math.nan], [1, 2])
    assert w == pytest.approx(0.5) and math.isfinite(w_norm) and w_norm > 0
    assert compare.normalised_wasserstein([3, 3], [3, 3, 3]) == (0.0, 0.0)
    assert all(math.isnan(v) for v in compare.normalised_wasserstein([], [1.0]))


def test_compare_distributions_keys():
    out = compare.compare_distributions({"volume": [1, 2, 3]}, {"volume": [1, 2, 3]})
    assert set(out["volume"]) == {"real", "synthetic", "wasserstein", "wasserstein_normalised", "ks", "ks_pvalue"}
    assert out["volume"]["ks"] == 0.0 and out["volume"]["real"]["mean"] == 2.0


# --------------------------------------------------------------------------------------------
# Memorisation and diversity
# --------------------------------------------------------------------------------------------


def compact(name: str, frames: list[np.ndarray], grid=(20, 20, 20)) -> CompactSequence:
    return CompactSequence.from_frames(name, frames, grid)


def test_nearest_neighbour_flags_an_exact_copy_only():
    real = [compact(f"r{i}", blob_frames(i, 5)) for i in range(4)]
    copy = compact("copy_of_r2", blob_frames(2, 5))
    subsampled = compact("r1_every_other_frame", blob_frames(1, 5)[::2])  # 3 of 5 frames
    novel = compact("novel", blob_frames(99, 5))
    matrix = compare.dice_matrix([copy, subsampled, novel], real)
    nearest = compare.nearest_real(matrix)
    assert nearest[0] == {"index": 2, "dice": 1.0, "near_copy": True}
    assert nearest[1]["index"] == 1 and nearest[1]["dice"] == pytest.approx(1.0) and nearest[1]["near_copy"]
    assert not nearest[2]["near_copy"] and nearest[2]["dice"] < 0.95


def asymmetric_cell(t: int, n: int = 32, arm: float = 9.0) -> np.ndarray:
    """An ellipsoid body with one growing arm and a bump on its side: no symmetry left."""
    z, y, x = np.indices((n, n, n)).astype(float) - (n - 1) / 2
    body = (z / 5) ** 2 + (y / 6) ** 2 + (x / 8) ** 2 <= 1
    length = arm + t
    on_arm = (x >= 0) & (x <= length) & ((z - 3) ** 2 + (y - 2) ** 2 <= 2.2**2)
    bump = (z + 4) ** 2 + (y + 4) ** 2 + (x + 3) ** 2 <= 3**2
    return body | on_arm | bump


def turned(mask: np.ndarray, matrix: np.ndarray, shift) -> np.ndarray:
    """``mask`` rotated by ``matrix`` about the grid centre and shifted (voxels), nearest voxel."""
    from scipy import ndimage

    centre = (np.array(mask.shape) - 1) / 2
    offset = centre - matrix @ (centre + np.asarray(shift, float))
    return ndimage.affine_transform(mask.astype(np.float32), matrix, offset, order=1) >= 0.5


def posed(name: str, frames: list[np.ndarray]) -> CompactSequence:
    return CompactSequence.from_frames(name, compare.to_pose(np.stack(frames)), frames[0].shape)


def test_principal_pose_puts_the_largest_spread_along_x():
    z, y, x = np.indices((24, 28, 32)).astype(float)
    ellipsoid = ((z - 11) / 4) ** 2 + ((y - 14) / 7) ** 2 + ((x - 17) / 11) ** 2 <= 1
    centroid, rotation = compare.principal_pose(ellipsoid)
    np.testing.assert_allclose(centroid, [11, 14, 17], atol=1e-6)
    np.testing.assert_allclose(np.abs(rotation), np.eye(3), atol=1e-6)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    # An ellipsoid turned off the axes comes back onto them, centred.
    from scipy.spatial.transform import Rotation

    matrix = Rotation.from_euler("zyx", [40, 25, -60], degrees=True).as_matrix()
    cube = np.zeros((40, 40, 40), bool)
    cube[8:32, 6:34, 4:36] = ellipsoid
    back = compare.to_pose(turned(cube, matrix, (1, -2, 2))[None])[0]
    reference = compare.to_pose(cube[None])[0]
    assert dice(back, reference) > 0.9  # two trilinear resamplings of a small shape


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_memorisation_sees_a_copy_through_a_rotation_and_a_shift():
    from scipy.spatial.transform import Rotation

    frames = [asymmetric_cell(t) for t in range(3)]
    matrix = Rotation.from_euler("zyx", [70, -35, 120], degrees=True).as_matrix()
    copy = [turned(f, matrix, (2, -3, 1)) for f in frames]
    other = [asymmetric_cell(t, arm=2.0) | turned(asymmetric_cell(t, arm=2.0), np.diag([1.0, -1.0, -1.0]), (0, 0, 0))
             for t in range(3)]
    grid = frames[0].shape
    as_given = compare.dice_matrix([compact("copy", copy, grid)], [compact("real", frames, grid)])[0, 0]
    matrix_posed = compare.dice_matrix([posed("copy", copy), posed("other", other)], [posed("real", frames)])
    assert as_given < 0.7  # orientation-bound comparison misses the copy ...
    assert matrix_posed[0, 0] > 0.9  # ... the posed one finds it
    assert matrix_posed[1, 0] < matrix_posed[0, 0] - 0.1  # and another shape stays apart


def test_compact_sequences_round_trip_and_resample():
    frames = blob_frames(3, 2, n=24)
    seq = compact("s", frames, (24, 24, 24))
    assert np.array_equal(seq.frames(), np.stack(frames))
    assert seq.counts.tolist() == [int(f.sum()) for f in frames]
    small = seq.resampled((12, 12, 12))
    assert small.shape == (12, 12, 12) and small.n_frames == 2
    # Nearest sampling on the shared [-1, 1] grid: corners map to corners.
    assert np.array_equal(compare.nearest_indices(24, 12)[[0, -1]], [0, 23])
    assert compare.compare_grid([(256, 256, 32), (64, 64, 64)], 64) == (64, 64, 32)


def test_diversity():
    seqs = [compact(f"s{i}", blob_frames(i, 3)) for i in range(3)]
    same = [compact(f"c{i}", blob_frames(0, 3)) for i in range(3)]
    assert compare.diversity(compare.dice_matrix(same, same)) == 0.0
    div = compare.diversity(compare.dice_matrix(seqs, seqs))
    assert 0.0 < div < 1.0
    assert math.isnan(compare.diversity(np.ones((1, 1))))
    assert compare.nearest_other(np.array([[1.0, 0.3], [0.3, 1.0]])).tolist() == [0.3, 0.3]


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_end_to_end(tmp_path):
    real = write_set(tmp_path / "real", [0, 1, 2], frames=3, divide=True)
    synth = tmp_path / "synth"
    shutil.copytree(real / "seq_001", synth / "seq_000")  # a memorised training sequence
    write_set(synth / "_tmp", [7, 8], frames=4)
    for i, folder in enumerate(sorted((synth / "_tmp").iterdir()), start=1):
        folder.rename(synth / sequence_name(i))
    (synth / "_tmp").rmdir()
    out = tmp_path / "report"

    result, text = run_cli("--real", str(real), "--synthetic", str(synth), "-o", str(out), "--workers", "2")
    assert result.exit_code == 0, text

    rows = read_csv(out / "descriptors.csv")
    assert list(rows[0]) == ["set", "sequence", "frame", "time", *FRAME_DESCRIPTORS]
    assert len(rows) == 3 * 3 + 3 + 2 * 4
    assert {r["set"] for r in rows} == {"real", "synthetic"}
    last_real = [r for r in rows if r["set"] == "real" and r["frame"] == "2"]
    assert all(r["components"] == "2" for r in last_real)  # every real cell divided
    sequences = read_csv(out / "sequences.csv")
    assert list(sequences[0]) == ["set", "sequence", "frames", *SEQUENCE_DESCRIPTORS]
    assert [r["divisions"] for r in sequences if r["set"] == "real"] == ["1", "1", "1"]

    summary = json.loads((out / "summary.json").read_text())
    assert {"real", "synthetic", "descriptors", "sequence_descriptors", "memorisation", "diversity"} <= set(summary)
    assert set(summary["descriptors"]) == set(FRAME_DESCRIPTORS)
    memo = summary["memorisation"]
    assert memo["near_copies"] == 1
    copy = next(n for n in memo["nearest"] if n["synthetic"] == "seq_000")
    assert copy == {"synthetic": "seq_000", "real": "seq_001", "dice": 1.0, "near_copy": True}
    assert 0 < summary["diversity"]["real"] < 1 and 0 < summary["diversity"]["synthetic"] < 1

    report = (out / "report.md").read_text()
    import matplotlib.image

    for png in ("distributions.png", "over_time.png", "nearest.png"):
        assert f"]({png})" in report
        image = matplotlib.image.imread(out / png)
        assert image.ndim == 3 and image.shape[0] > 100
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind


def test_identical_sets_and_pairs(tmp_path):
    real = write_set(tmp_path / "real", [0, 1], frames=3)
    out = tmp_path / "report"
    summary = evaluate(real, real, out, pairs=True, voxel_size=(2.0, 1.0, 1.0))
    for name, c in summary["descriptors"].items():
        assert c["wasserstein"] == 0.0 and c["ks"] == 0.0, name
    assert summary["memorisation"]["near_copies"] == 2
    assert summary["real"]["voxel_sizes"] == [[2.0, 1.0, 1.0]]
    pairs = read_csv(out / "pairs.csv")
    assert list(pairs[0]) == ["sequence", "frame", *PAIR_METRICS] and len(pairs) == 6
    assert all(float(p["dice"]) == 1.0 and float(p["hausdorff"]) == 0.0 for p in pairs)
    assert summary["pairs"]["dice"]["mean"] == 1.0
    assert (out / "pairs.png").is_file() and "](pairs.png)" in (out / "report.md").read_text()
    # Volumes honour --voxel-size.
    first = read_csv(out / "descriptors.csv")[0]
    assert float(first["volume"]) == 2.0 * blob_frames(0, 1)[0].sum()


def test_4d_tiff_input_and_rerun_uses_the_cache(tmp_path):
    real = write_set(tmp_path / "real", [0, 1], frames=3)
    synth = tmp_path / "synth"
    synth.mkdir()
    stack = np.stack(blob_frames(5, 3)).astype(np.uint8) * 255
    tifffile.imwrite(synth / "cell_a.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    out = tmp_path / "report"
    first = evaluate(real, synth, out)
    assert first["synthetic"]["sequences"] == 1 and first["synthetic"]["frames"] == 3
    cache = sorted((out / "cache").rglob("*.npz"))
    assert len(cache) == 3
    stamps = [p.stat().st_mtime_ns for p in cache]
    second = evaluate(real, synth, out)
    assert [p.stat().st_mtime_ns for p in cache] == stamps  # nothing recomputed
    assert json.dumps(second, default=str) == json.dumps(first, default=str)
    # A changed input file is recomputed; the others are still taken from the cache.
    target = real / "seq_000" / "mask_t000.tif"
    write_mask_tiff(target, np.roll(blob_frames(0, 1)[0], 1, axis=0))
    os.utime(target, ns=(stamps[0] + 10**9, stamps[0] + 10**9))
    evaluate(real, synth, out)
    changed = [p.stat().st_mtime_ns != s for p, s in zip(cache, stamps)]
    assert changed == [True, False, False]


def test_parallel_results_keep_task_order():
    assert run_parallel(abs, [-3, 1, -2, 0], 2, [1, 1, 1, 1], "test") == [3, 1, 2, 0]


def test_a_corrupt_frame_read_in_a_worker_is_one_user_error(tmp_path):
    real = write_set(tmp_path / "real", [0, 1], frames=3)
    broken = real / "seq_001" / "mask_t001.tif"
    data = bytearray(broken.read_bytes())
    middle = len(data) // 2  # the compressed pixels; the header still reads fine
    data[middle : middle + 64] = bytes(64)
    broken.write_bytes(bytes(data))
    with pytest.raises(InputDataError, match="mask_t001.tif"):
        evaluate(real, real, tmp_path / "out", workers=2)
    assert not (tmp_path / "out" / "summary.json").exists()


# --------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no traceback
# --------------------------------------------------------------------------------------------


def test_cli_bad_inputs(tmp_path):
    real = write_set(tmp_path / "real", [0, 1], frames=3)
    out = str(tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_sequences = tmp_path / "no_sequences"
    (no_sequences / "notes").mkdir(parents=True)
    (no_sequences / "readme.txt").write_text("nothing here")

    cases = [
        (["--real", str(tmp_path / "missing"), "--synthetic", str(real)], "not found"),
        (["--real", str(real), "--synthetic", str(empty)], "no mask sequences found"),
        (["--real", str(no_sequences), "--synthetic", str(real)], "no mask sequences found"),
        (["--real", str(real), "--synthetic", str(real), "--voxel-size", "1,2"], "--voxel-size"),
    ]
    renamed = write_set(tmp_path / "renamed", [0, 1], frames=3)
    (renamed / "seq_001").rename(renamed / "cell_b")
    cases.append((["--real", str(real), "--synthetic", str(renamed), "--pairs"], "same sequence names"))
    shorter = write_set(tmp_path / "shorter", [0, 1], frames=2)
    cases.append((["--real", str(real), "--synthetic", str(shorter), "--pairs"], "same number of frames"))
    bigger = write_set(tmp_path / "bigger", [0, 1], frames=3, n=24)
    cases.append((["--real", str(real), "--synthetic", str(bigger), "--pairs"], "same grid"))

    for args, needle in cases:
        result, text = run_cli(*args, "-o", out)
        assert_one_line_error(result, text, needle)
    assert not (tmp_path / "out" / "summary.json").exists()
