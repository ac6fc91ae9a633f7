"""Adopting a dead supervisor's processes: a new supervisor watches them instead of restarting them.

When the supervisor dies (SIGKILL, OOM kill, a crash), its servers and router keep serving; nothing
watches them any more. The next `inferpack up` on the same run directory and plan starts a supervisor that
takes them over (`Supervisor(previous=...)`): a recorded process that is still alive (same pid *and* start
time) and still runs what the launch spec says (same name, port and models) is adopted, not started
again, so no model goes dark. Being the child of init now, not of the new supervisor, it cannot be
`wait()`ed on: `AdoptedProcess` gives it the few `Popen` methods the supervisor and the runners use,
learning of its death by polling pid + start time (psutil) and signalling it only while that identity
holds (a reused pid is never signalled). Its exit status is unknown (init reaps it, not us):
`UNKNOWN_EXIT` stands for it. Only host processes are adopted; containers are started again (see
`docs/fleet.md`).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import psutil

from inferpack.fleet.state import FleetState, ProcessState, is_alive, leftover_processes

# What `AdoptedProcess.poll()` answers once the process is gone: never a real status (an exit status is
# 0..255, a signal death -1..-64), so it is recognisable, and recorded as an unknown exit (None).
UNKNOWN_EXIT: Final = -1000


class AdoptedProcess:
    """A process another (dead) supervisor started, watched by pid and start time.

    The subset of `subprocess.Popen` the supervisor, the runners and the fleet actions use: `pid`,
    `returncode`, `poll`, `wait`, `kill`, `terminate`, `send_signal`."""

    def __init__(self, pid: int, create_time: float | None) -> None:
        self.pid = pid
        self.create_time = create_time
        self.returncode: int | None = None
        try:
            self._proc: psutil.Process | None = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._proc = None

    def _alive(self) -> bool:
        return self._proc is not None and is_alive(self.pid, self.create_time)

    def poll(self) -> int | None:
        """None while it runs (same pid and start time, not a zombie), else `UNKNOWN_EXIT`."""
        if self.returncode is None and not self._alive():
            self.returncode = UNKNOWN_EXIT
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it is gone (`subprocess.TimeoutExpired` after `timeout` seconds)."""
        if self.poll() is not None:
            return UNKNOWN_EXIT
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except psutil.TimeoutExpired as exc:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0) from exc
        except psutil.NoSuchProcess:
            pass
        self.returncode = UNKNOWN_EXIT
        return UNKNOWN_EXIT

    def send_signal(self, sig: int) -> None:
        """Signal it while it is still the recorded process (psutil refuses a reused pid)."""
        if self.poll() is not None or self._proc is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            self._proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM (it drains)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)


@dataclass(frozen=True)
class Leftovers:
    """A stale fleet's live processes, sorted against the launch a new supervisor runs."""

    adopt: list[ProcessState]  # alive and as launched: the new supervisor takes them over
    strays: list[ProcessState]  # alive but not part of the launch (any more): stopped, as before


def sort_leftovers(
    previous: FleetState, router_port: int, servers: Mapping[str, tuple[int, Sequence[str]]]
) -> Leftovers:
    """Which live processes of `previous` (pid and start time match) the launch of `router_port` and
    `servers` (name -> port, models) can adopt: the router on the same port; a server of the same name,
    port and models (what it was asked to hold; a re-plan updates both the record and the launch). Any
    other live process is a stray. A record without a start time cannot prove it is still the same
    process: never adopted."""
    adopt: list[ProcessState] = []
    strays: list[ProcessState] = []
    for p in leftover_processes(previous):
        if p.create_time is None:
            same = False
        elif p.role == "router":
            same = p.port == router_port
        else:
            want = servers.get(p.name)
            same = want is not None and p.port == want[0] and list(p.models) == list(want[1])
        (adopt if same else strays).append(p)
    return Leftovers(adopt, strays)
