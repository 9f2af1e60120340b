"""The progress bar on stderr (only when stderr is a terminal)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from ._report import Report

__all__ = ["ProgressBar"]


class ProgressBar:
    """Rows done / total, rows/s, ETA, and the decisions so far."""

    def __init__(self, console: Console | None = None) -> None:
        self._bar = RichProgress(
            TextColumn("[bold]recovering"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console or Console(stderr=True),
            transient=True,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def start(self, total: int) -> None:
        self._task = self._bar.add_task("recover", total=total, rate="-", counts="")

    def update(self, report: Report) -> None:
        if self._task is None:
            return
        task = self._bar.tasks[0]
        rate = task.speed
        self._bar.update(
            self._task,
            completed=report.scanned,
            rate=f"{rate:,.0f}" if rate else "-",
            counts=(
                f"completed {report.completed:,} · cleared {report.cleared_missing:,}"
                f" · unresolved {report.unresolved:,}"
            ),
        )
