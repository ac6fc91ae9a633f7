"""The one progress bar of the commands that count steps (models made, compiled, profiled)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def counting_progress(console: Console | None = None) -> Progress:
    """A bar with its description, done/total and elapsed time; use as a context manager."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
