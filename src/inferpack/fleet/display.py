"""What the fleet commands show while a fleet starts: a live line per process, then a summary table.

Shared by `inferpack up` (`fleet.cli`) and `inferpack demo` (`fleet.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from inferpack.errors import FleetError
from inferpack.fleet import ops
from inferpack.fleet.state import FleetState
from inferpack.plan import Plan
from inferpack.settings import Settings

console = Console(stderr=True)
out = Console()


def print_failure(exc: FleetError) -> None:
    """Print the failing process's log tail (markup-free: logs contain brackets) before the error."""
    if exc.log_tail:
        console.rule("log tail")
        console.print(escape(exc.log_tail), highlight=False)
        console.rule()


def start_with_progress(settings: Settings, config: Path | None, plan: Plan | None = None) -> FleetState:
    """`ops.up` with a live line per process; the failing log tail is printed on failure."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks: dict[str, Any] = {}

        def show(state: FleetState) -> None:
            for p in [*state.servers, state.router]:
                if p.name not in tasks:
                    tasks[p.name] = progress.add_task("", total=1)
                label = f"{p.name:<10} :{p.port}  {len(p.models) or '-':>4} models  {p.status}"
                progress.update(tasks[p.name], description=label, completed=p.status == "ready")

        try:
            return ops.up(settings, plan, config=config, on_progress=show)
        except FleetError as exc:
            progress.stop()
            print_failure(exc)
            raise


def print_summary(state: FleetState, run_dir: Path) -> None:
    """One line per server and the router's URL."""
    table = Table(title="inferpack fleet")
    for col in ("server", "pid", "url", "models", "threads"):
        table.add_column(col)
    for s in state.servers:
        table.add_row(s.name, str(s.pid), s.url or "-", str(len(s.models)), str(s.threads))
    out.print(table)
    out.print(
        f"router: [bold]{state.router.url}[/]   (run dir {run_dir}; `inferpack status`, `inferpack down`)"
    )
