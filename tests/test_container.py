"""Apptainer cannot run here: parse the definition file and check what it would build."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEF = ROOT / "containers" / "cellgen.def"

spython = pytest.importorskip("spython.main.parse.parsers")


@pytest.fixture(scope="module")
def recipe():
    parser = spython.SingularityParser(str(DEF))
    recipes = parser.recipe
    assert len(recipes) == 1
    return next(iter(recipes.values()))


def test_cuda_base_image(recipe):
    assert recipe.fromHeader.startswith("nvidia/cuda:"), recipe.fromHeader
    assert "cudnn" in recipe.fromHeader


def test_runscript_runs_cellgen(recipe):
    # spython maps %runscript to the recipe's cmd
    assert re.search(r'exec cellgen "\$@"', recipe.cmd or "")


def test_test_section_runs_version(recipe):
    # spython turns %test into /tests.sh, written by lines appended to the install steps
    assert recipe.test == "/bin/bash /tests.sh"
    assert 'echo "cellgen --version" >> /tests.sh' in recipe.install


def test_labels(recipe):
    labels = dict(label.split(" ", 1) for label in recipe.labels)
    assert labels["org.opencontainers.image.title"] == "cellgen"
    from cellgen import __version__

    assert labels["org.opencontainers.image.version"] == __version__


def test_installs_exactly_the_project_pins(recipe):
    post = "\n".join(recipe.install)
    pip_lines = [l for l in post.splitlines() if "pip install" in l and "/opt/cellgen" in l]
    assert len(pip_lines) == 1, pip_lines
    line = pip_lines[0]
    # The one constraints file, copied into the image, and no versions pinned on the side.
    assert "-c /opt/cellgen/constraints.txt" in line
    assert not re.search(r"[a-zA-Z_-]+(==|>=|<=)\d", line)
    copied = dict(entry.split(" ", 1) for entry in recipe.files)
    assert copied.get("constraints.txt") == "/opt/cellgen/constraints.txt"
    assert copied.get("cellgen") == "/opt/cellgen/cellgen"
    assert copied.get("configs") == "/opt/cellgen/configs"


def test_constraints_pin_every_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0].lower() for d in deps}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line is not an exact pin: {line}"
            pins[name.lower()] = version
    missing = names - set(pins)
    assert not missing, f"dependencies without a pin in constraints.txt: {sorted(missing)}"
