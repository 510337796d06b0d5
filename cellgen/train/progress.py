"""Training progress on the driver, read from EXP/metrics.csv (written by rank 0): works the same
whether the workers run on this machine or on other nodes of a shared file system."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from cellgen.train.experiment import read_metrics


class ProgressWatcher:
    """A rich progress bar on a terminal, otherwise one line every ``~total/10`` epochs."""

    def __init__(self, metrics: Path, total_epochs: int, start_epoch: int = 0, poll_s: float = 1.0):
        self.metrics = metrics
        self.total = total_epochs
        self.start_epoch = start_epoch
        self.poll_s = poll_s
        self.line_every = max(1, (total_epochs - start_epoch) // 10)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cellgen-progress")
        self._shown = start_epoch

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _latest(self) -> dict[str, str] | None:
        """The newest complete row, or None (the file may be mid-write: try again next poll)."""
        try:
            rows = read_metrics(self.metrics)
            if not rows:
                return None
            row = rows[-1]
            for key in ("epoch", "sdf_loss", "code_loss", "points_per_s"):
                float(row[key])
            return row
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def describe(row: dict[str, str]) -> str:
        return (f"sdf_loss {float(row['sdf_loss']):.4g}  code {float(row['code_loss']):.3g}  "
                f"{float(row['points_per_s']):,.0f} points/s")

    def _run(self) -> None:
        if sys.stderr.isatty():
            self._run_bar()
        else:
            self._run_lines()

    def _run_lines(self) -> None:
        while True:
            stopping = self._stop.wait(self.poll_s)
            row = self._latest()
            if row is not None:
                epoch = int(row["epoch"])
                if epoch > self._shown and (epoch - self._shown >= self.line_every or epoch == self.total or stopping):
                    print(f"cellgen: epoch {epoch}/{self.total}  {self.describe(row)}", file=sys.stderr, flush=True)
                    self._shown = epoch
            if stopping:
                return

    def _run_bar(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.description}"))
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("starting Ray workers...", total=self.total, completed=self.start_epoch)
            while True:
                stopping = self._stop.wait(self.poll_s)
                row = self._latest()
                if row is not None:
                    bar.update(task, completed=int(row["epoch"]), description=self.describe(row))
                if stopping:
                    return
