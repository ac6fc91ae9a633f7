"""`python -m inferpack.loadtest worker ...`: the bench commands without the rest of the CLI.

Local worker processes start this way because `inferpack.cli` imports every subsystem (torch included,
seconds of start-up); `inferpack bench worker ...` runs the very same command.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from inferpack.errors import InferpackError
from inferpack.loadtest.cli import app


def main() -> None:
    """Run the bench app; InferpackError becomes a one-line message and exit status 2."""
    try:
        app()
    except InferpackError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}")  # brackets are not markup
        sys.exit(2)


if __name__ == "__main__":
    main()
