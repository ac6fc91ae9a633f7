"""The run-directory lock: one change to a fleet at a time (`up`, `restart`, `down`).

An exclusive `flock` on `RUN_DIR/lock`, taken without waiting: a second command fails at once and names
the holder (pid, command line, since when), read from the lock file, which the holder rewrites when it
takes the lock. The kernel drops the lock when its holder exits, however it exits, so a crashed command
never leaves a stale lock behind. The supervisor does not hold it: it is long-running and applies the
changes these commands hand it, one at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from inferpack.errors import FleetError

LOCK_NAME = "lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    since = info.get("since")
    ago = f", for {time.time() - float(since):.0f} s" if isinstance(since, int | float) else ""
    return f"pid {info['pid']} (`{info.get('command', '?')}`{ago})"


@contextlib.contextmanager
def run_lock(root: Path, command: str | None = None) -> Iterator[None]:
    """Hold the lock of run directory `root` for the `with` block; FleetError at once when another
    process holds it. `command` is what the holder is doing (default: this process's argv)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    what = command or " ".join(["inferpack", *sys.argv[1:]])
    f: IO[str] = path.open("a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetError(
                f"another command is changing the fleet in {root}: {_holder(path)}",
                hint="wait for it to finish (it releases the lock when it exits), then run yours again; "
                "`inferpack status` shows the fleet meanwhile",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "command": what, "since": time.time()}) + "\n")
        f.flush()
        yield
    finally:
        f.close()  # closing drops the lock
