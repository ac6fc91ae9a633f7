"""`python -m inferpack ...`: the same command line as the `inferpack` console script (for environments
where the script is not on PATH, e.g. a virtual environment that is not activated)."""

from __future__ import annotations

from inferpack.cli import main

if __name__ == "__main__":
    main()
