from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from cellgen import __version__
from cellgen.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_stages():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_console_script_user_error_is_one_line_without_traceback(tmp_path):
    """A user error through the real entry point: one line on stderr, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", "from cellgen.cli import main; main()", "prepare", str(tmp_path / "missing"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
