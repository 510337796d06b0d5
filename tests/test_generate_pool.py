"""The Ray actor pool: two actors on local Ray give exactly the in-process result, and a sequence
whose actor dies mid-run is retried elsewhere with no file missing or duplicated."""

from __future__ import annotations

import numpy as np
import pytest
from test_generate_fixtures import tiny_experiment, tiny_model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from cellgen.cli import app
from cellgen.generate.sequence import TEST_KILL_MARKER_ENV
from cellgen.io import read_tiff

runner = CliRunner()
ARGS = ("--n", 3, "--frames", 2, "--size", 16, "--seed", 9)


def generate(exp, out, *args):
    result = runner.invoke(app, ["generate", str(exp), str(out), *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def files_of(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def volumes(out):
    return {str(p.relative_to(out)): read_tiff(p)[0] for p in sorted(out.rglob("*.tif"))}


@pytest.fixture(scope="module")
def reference(tiny_experiment, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("reference") / "out"
    generate(tiny_experiment, out, *ARGS)
    return out


@pytest.mark.ray
def test_two_actors_on_local_ray_match_the_in_process_run(ray_local, reference, tiny_experiment, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    generate(tiny_experiment, out, *ARGS, "--workers", 2)
    assert files_of(out) == files_of(reference)
    expected = volumes(reference)
    assert all(np.array_equal(v, expected[k]) for k, v in volumes(out).items())
    assert ray_local.is_initialized()  # a runtime the caller started is reused, not shut down


@pytest.mark.ray
def test_a_killed_actor_loses_no_sequence(ray_local, reference, tiny_experiment, tmp_path, monkeypatch):  # noqa: F811
    marker = tmp_path / "killed"
    monkeypatch.setenv(TEST_KILL_MARKER_ENV, str(marker))
    out = tmp_path / "out"
    generate(tiny_experiment, out, *ARGS, "--workers", 2)
    assert marker.exists()  # one actor really died (os._exit after writing its first frame)
    assert files_of(out) == files_of(reference)  # nothing missing, nothing extra, no temporaries
    expected = volumes(reference)
    assert all(np.array_equal(v, expected[k]) for k, v in volumes(out).items())
