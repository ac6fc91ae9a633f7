"""The supervisor's handling of hung processes, with real processes and a real hung peer (a listening
socket nobody reads: connections are accepted by the kernel, requests never answered, as with a SIGSTOPped
server), driven tick by tick."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inferpack.fleet.state import RunDir
from inferpack.fleet.supervisor import LaunchSpec, ServerLaunch, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def hung_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def _supervisor(tmp_path: Path, port: int, **spec: float) -> Supervisor:
    launch = LaunchSpec(
        repository=str(tmp_path),
        servers=[ServerLaunch(name="server-0", port=port, models=["m"], threads=1)],
        router_port=port,
        **spec,  # type: ignore[arg-type]
    )
    sup = Supervisor(RunDir(tmp_path / "run"), launch)
    sup.servers[0].cmd = SLEEPER  # a live process that never answers anything: hung from the start
    return sup


@contextmanager
def _stopping(sup: Supervisor) -> Iterator[None]:
    """Leave no process behind."""
    try:
        yield
    finally:
        sup.prober.close()
        for c in sup._children():
            if c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()


def _tick_until(sup: Supervisor, condition: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        sup.tick(time.monotonic())
        time.sleep(0.02)


def test_ready_process_failing_liveness_is_killed_and_restarted(tmp_path: Path, hung_port: int) -> None:
    sup = _supervisor(
        tmp_path, hung_port, liveness_interval_s=0.1, liveness_timeout_s=0.2, liveness_failures=3
    )
    child = sup.servers[0]
    with _stopping(sup):
        sup._start(child)
        first = child.proc
        assert first is not None
        child.record.status = "ready"  # as if it had answered its readiness probe, then hung
        _tick_until(sup, lambda: child.record.status == "restarting")
        assert first.poll() == -9  # SIGKILL
        reason = child.record.last_restart_reason
        assert reason is not None and "liveness probe failed 3 times in a row" in reason
        assert child.record.message is not None and child.record.message.startswith(reason)
        _tick_until(sup, lambda: child.record.restarts == 1)
        assert child.proc is not None and child.proc.pid != first.pid and child.proc.poll() is None
        assert child.record.status == "starting" and child.liveness.consecutive == 0


def test_restarted_process_not_ready_in_time_is_killed(tmp_path: Path, hung_port: int) -> None:
    sup = _supervisor(tmp_path, hung_port, ready_timeout_s=0.5, supervisor_ready_probe_s=0.05)
    child = sup.servers[0]
    with _stopping(sup):
        sup._start(child)
        first = child.proc
        assert first is not None
        _tick_until(sup, lambda: child.record.status == "restarting")
        assert first.poll() == -9
        assert child.record.last_restart_reason == "not ready within 0.5 s of its start"
