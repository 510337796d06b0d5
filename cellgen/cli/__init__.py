"""Command-line interface: one small module per stage; no math, no paths, no Ray here."""

from __future__ import annotations

from cellgen.cli.app import app

# Importing the stage modules registers their commands on ``app``.
from cellgen.cli import stages  # noqa: F401,E402


def main() -> None:
    app(prog_name="cellgen")


__all__ = ["app", "main"]
