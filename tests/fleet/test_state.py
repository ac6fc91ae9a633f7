"""Run state: atomic save/load, process identity (pid + start time), stale detection, backoff."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferpack.errors import ConfigError
from inferpack.fleet.state import (
    FleetState,
    ProcessState,
    RunDir,
    is_alive,
    is_stale,
    leftover_processes,
    load_state,
    save_state,
    start_time,
)
from inferpack.fleet.supervisor import STABLE_AFTER_S, next_backoff


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _state(supervisor_pid: int | None, created: float | None) -> FleetState:
    return FleetState(
        phase="running",
        supervisor=ProcessState(
            name="supervisor", role="supervisor", pid=supervisor_pid, create_time=created
        ),
        router=ProcessState(name="router", role="router", port=8100),
        servers=[ProcessState(name="server-0", role="server", port=8101, models=["m0", "m1"], threads=1)],
    )


def test_save_load_roundtrip(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert load_state(run) is None
    state = _state(os.getpid(), start_time(os.getpid()))
    save_state(run, state)
    loaded = load_state(run)
    assert loaded == state
    assert loaded is not None and loaded.server("server-0").url == "http://127.0.0.1:8101"
    assert [p.name for p in run.root.iterdir()] == ["state.json"]  # no temporary file left behind
    with pytest.raises(ConfigError, match="no server named"):
        loaded.server("server-9")


def test_corrupt_state_is_reported(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.state_file.write_text("{not json")
    with pytest.raises(ConfigError, match="not a fleet state file"):
        load_state(run)


def test_identity_needs_pid_and_start_time() -> None:
    me = os.getpid()
    assert is_alive(me, start_time(me))
    assert not is_alive(me, (start_time(me) or 0.0) - 1000.0)  # same pid, another process (reused pid)
    assert not is_alive(_dead_pid(), None)
    assert not is_alive(None, None)


def test_stale_when_the_supervisor_is_gone() -> None:
    me = os.getpid()
    assert not is_stale(_state(me, start_time(me)))
    gone = _state(_dead_pid(), 1.0)
    assert is_stale(gone)
    gone.phase = "stopped"
    assert not is_stale(gone)


def test_leftovers_are_only_matching_live_processes() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = _state(_dead_pid(), 1.0)
        state.servers[0].pid, state.servers[0].create_time = child.pid, start_time(child.pid)
        state.router.pid, state.router.create_time = child.pid, 1.0  # wrong start time: not ours
        assert [p.name for p in leftover_processes(state)] == ["server-0"]
    finally:
        child.kill()
        child.wait()


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run() -> None:
    delays = []
    previous = None
    for _ in range(8):
        previous = next_backoff(previous, uptime_s=1.0, initial_s=0.5, max_s=10.0)
        delays.append(previous)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert next_backoff(10.0, uptime_s=STABLE_AFTER_S, initial_s=0.5, max_s=10.0) == 0.5
