"""The one family of user-facing errors.

Every error a user can cause (bad input, bad config, missing files) is raised as a
``CellgenError``. The CLI catches the family at its boundary and prints one line:
what failed, the offending value, and how to fix it, then exits non-zero with no traceback.
Programming errors are *not* CellgenErrors and keep their tracebacks.
"""

from __future__ import annotations


class CellgenError(Exception):
    """A user error: ``what`` failed, on ``value``, and ``fix`` says what to do."""

    exit_code = 2

    def __init__(self, what: str, value: object | None = None, fix: str | None = None):
        self.what = what
        self.value = value
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.what
        if self.value is not None:
            text += f": {self.value}"
        if self.fix:
            text += f" ({self.fix})"
        # One line, always: fold any newline a caller let through.
        return " ".join(text.split())

    @property
    def user_line(self) -> str:
        """The line a user sees on stderr, the same from every entry point."""
        return f"cellgen: error: {self.message}"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class ConfigError(CellgenError):
    """Invalid configuration: unknown key, wrong type, bad override."""


class InputDataError(CellgenError):
    """Input masks or prepared data that cannot be used."""


class OutputError(CellgenError):
    """An output location that cannot be written, or that holds conflicting results."""


class CheckpointError(CellgenError):
    """A missing, corrupt or incompatible checkpoint."""


class ClusterError(CellgenError):
    """Ray cluster could not be reached or started."""
