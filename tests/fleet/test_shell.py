"""`inferpack exec`: a real command run in a fleet process's environment and run directory. A stand-in
process with its own environment plays the server (the whole fleet is exercised in test_fleet_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferpack.errors import ConfigError
from inferpack.fleet.shell import exec_spec
from inferpack.fleet.state import FleetState, ProcessState, RunDir, save_state, start_time

CLI = [sys.executable, "-m", "inferpack.cli"]
SHOW = 'echo "$MARKER|$(pwd)|$INFERPACK_EXEC_PROCESS|$INFERPACK_EXEC_URL|$INFERPACK_EXEC_PID|$INFERPACK_ROUTER_URL"'


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    """A long-lived process with an environment of its own (MARKER), as a supervisor-started server has."""
    env = {**os.environ, "MARKER": "from-the-server", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _fleet(run: RunDir, pid: int | None) -> FleetState:
    state = FleetState(
        phase="running",
        supervisor=ProcessState(name="supervisor", role="supervisor"),
        router=ProcessState(name="router", role="router", port=8100),
        servers=[
            ProcessState(
                name="server-0",
                role="server",
                port=8101,
                models=["m0", "m1"],
                threads=1,
                pid=pid,
                create_time=start_time(pid) if pid else None,
            )
        ],
    )
    run.prepare()
    save_state(run, state)
    return state


def _exec(run: RunDir, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "exec", *args[:1], "--run-dir", str(run.root), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_exec_runs_in_the_live_servers_environment_and_run_dir(
    tmp_path: Path, server: subprocess.Popen[bytes]
) -> None:
    run = RunDir(tmp_path / "run")
    _fleet(run, server.pid)
    done = _exec(run, "server-0", "--", "sh", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "|".join(
        [
            "from-the-server",
            str(run.root.resolve()),
            "server-0",
            "http://127.0.0.1:8101",
            str(server.pid),
            "http://127.0.0.1:8100",
        ]
    )
    # the command's exit status is exec's
    assert _exec(run, "server-0", "--", "sh", "-c", "exit 5").returncode == 5


def test_exec_in_a_server_that_is_not_running(tmp_path: Path) -> None:
    """A crashed server's environment is the one the supervisor would start it with."""
    run = RunDir(tmp_path / "run")
    _fleet(run, None)
    done = _exec(
        run, "server-0", "--", "sh", "-c", 'echo "$HF_HUB_OFFLINE $OMP_NUM_THREADS [$INFERPACK_EXEC_PID]"'
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 1 []"
    spec = exec_spec(run, _fleet(run, None), "router")
    assert spec.env["INFERPACK_EXEC_URL"] == "http://127.0.0.1:8100" and not spec.live
    assert spec.argv == [os.environ.get("SHELL") or "/bin/sh"]


def test_exec_errors_are_clear(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    state = _fleet(run, None)
    with pytest.raises(ConfigError, match="no fleet process named 'server-9'"):
        exec_spec(run, state, "server-9")
    unknown = _exec(run, "server-9", "--", "true")
    assert unknown.returncode == 2 and "server-0, router" in " ".join(unknown.stderr.split())
    missing = _exec(run, "server-0", "--", "no-such-command-here")
    assert missing.returncode == 2 and "cannot run no-such-command-here" in " ".join(missing.stderr.split())
    nothing = _exec(RunDir(tmp_path / "none"), "server-0", "--", "true")
    assert nothing.returncode == 2 and "no fleet state" in nothing.stderr
