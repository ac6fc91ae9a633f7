"""The run-directory lock: a second holder fails at once naming the first; the lock goes with its holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferpack.errors import FleetError
from inferpack.fleet.lock import run_lock


def test_second_holder_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    with run_lock(tmp_path, "inferpack up --plan new.json"):
        with pytest.raises(FleetError) as caught, run_lock(tmp_path, "inferpack down"):
            pass
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and "inferpack up --plan new.json" in message
        assert "wait for it to finish" in message
    with run_lock(tmp_path, "inferpack down"):  # released when the block ends
        pass


def test_lock_held_by_another_process_and_released_when_it_exits(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from inferpack.fleet.lock import run_lock\n"
            "with run_lock(pathlib.Path(sys.argv[1]), 'inferpack restart'):\n"
            "    print('held', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FleetError, match=f"pid {holder.pid} \\(`inferpack restart`"), run_lock(tmp_path):
            pass
    finally:
        holder.kill()  # however it ends, the kernel drops its lock
        holder.wait()
    with run_lock(tmp_path):
        pass
