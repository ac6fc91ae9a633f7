"""The command line: the only place that reads argv. Each command parses flags, builds settings, calls one
function of the Python API, and turns InferpackError into a clear message and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from inferpack import __version__
from inferpack.errors import InferpackError
from inferpack.loadtest.cli import app as bench_app

app = typer.Typer(
    name="inferpack",
    help="Serve thousands of unique PyTorch models cheaply: server, fleet, planner, load tests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: ./inferpack.toml).")
]


@app.command()
def version() -> None:
    """Print the inferpack version."""
    print(__version__)


def main() -> None:
    """Entry point: run the app, mapping InferpackError to a one-line message and exit status 2."""
    try:
        app()
    except InferpackError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"[yellow]next:[/] {exc.hint}")
        sys.exit(2)


if __name__ == "__main__":
    main()
