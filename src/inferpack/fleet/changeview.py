"""What `inferpack up --plan` (on a running fleet) and `inferpack restart` show: a live line while the
supervisor works, then a table of every action with its timing."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from inferpack.errors import FleetError
from inferpack.fleet.change import ActionRecord, ChangeReport

console = Console(stderr=True)
out = Console()
_COLOUR = {"done": "green", "failed": "red", "undone": "yellow", "running": "cyan", "pending": "dim"}


def with_progress(run: Callable[[Callable[[ChangeReport], None]], ChangeReport]) -> ChangeReport:
    """Call `run(on_progress)` with a status line naming the action in progress."""
    with console.status("handing the change to the supervisor") as status:

        def show(report: ChangeReport) -> None:
            active = [a for a in report.actions if a.status == "running"]
            if active:
                status.update(f"phase {active[0].phase}: {', '.join(_label(a) for a in active[:4])}")

        return run(show)


def _label(action: ActionRecord) -> str:
    return " ".join(x for x in (action.kind, action.server, action.model) if x)


def print_report(report: ChangeReport, title: str) -> None:
    """The actions with their timing, the notes, and the outcome; FleetError when the change failed."""
    table = Table(title=title)
    for col in ("phase", "action", "server", "model / detail", "status", "at s", "took s"):
        table.add_column(col, justify="right" if col in ("phase", "at s", "took s") else "left")
    for a in report.actions:
        table.add_row(
            str(a.phase),
            a.kind,
            a.server or "",
            escape(a.model or a.detail),
            f"[{_COLOUR[a.status]}]{a.status}[/]",
            f"{a.started_s:.1f}" if a.started_s is not None else "-",
            f"{a.duration_s:.1f}" if a.duration_s is not None else "-",
        )
    if report.actions:
        out.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    took = f" in {report.duration_s:.1f} s" if report.duration_s is not None else ""
    if report.status == "failed":
        raise FleetError(
            f"the change failed{took}: {report.message}",
            hint="the fleet keeps serving (`inferpack status`); fix the cause and run the command again",
        )
    if not report.actions:
        console.print("nothing to change: the fleet already runs this plan")
    else:
        console.print(f"[green]done[/]{took}: {len(report.actions)} action(s)")
