"""Adopting a dead supervisor's processes: a new supervisor watches them instead of restarting them.

When the supervisor dies (SIGKILL, OOM kill, a crash), its servers and router keep serving; nothing
watches them any more. The next `inferpack up` on the same run directory and plan starts a supervisor that
takes them over (`Supervisor(previous=...)`), in two steps shared by every runtime:

1. `sort_leftovers`: of the records the runner says still run (`ProcessRunner.leftovers`: a host process
   with the recorded pid *and* start time; a container of the fleet's name, running), those the launch
   still asks for (same name, port and models) are to be adopted, the others are strays;
2. the runner takes each over (`ProcessRunner.adopt`) if it still runs what the launch would start:

- a host process (`AdoptedProcess`) is the child of init now, not of the new supervisor, so it cannot be
  `wait()`ed on: the handle learns of its death by polling pid + start time (psutil) and signals it only
  while that identity holds (a reused pid is never signalled). Its exit status is unknown (init reaps it,
  not us): `UNKNOWN_EXIT` stands for it;
- a container (`AdoptedContainer`) is adopted when `inspect` shows it running, in the fleet's network
  holder's namespace, with the fleet's label, the launch's image and exactly the command the launch
  would give it (`container_mismatch`); the handle is a `TOOL wait` child of the new supervisor, which
  ends with the container and prints its exit status, and signals go through `TOOL kill`.

Either way it is watched, probed, killed when hung and stopped like the supervisor's own children, and
started again as its own child when it dies, so no model goes dark.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psutil

from inferpack.fleet.state import ProcessState, is_alive

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
    live: Sequence[ProcessState], router_port: int, servers: Mapping[str, tuple[int, Sequence[str]]]
) -> Leftovers:
    """Which of a dead supervisor's records that still run (`live`: `ProcessRunner.leftovers`) the launch
    of `router_port` and `servers` (name -> port, models) can adopt: the router on the same port; a server
    of the same name, port and models (what it was asked to hold; a re-plan updates both the record and
    the launch). Any other is a stray. A record without a start time was never seen running by its
    supervisor (a pid alone cannot prove it is still the same process): never adopted."""
    adopt: list[ProcessState] = []
    strays: list[ProcessState] = []
    for p in live:
        if p.create_time is None:
            same = False
        elif p.role == "router":
            same = p.port == router_port
        else:
            want = servers.get(p.name)
            same = want is not None and p.port == want[0] and list(p.models) == list(want[1])
        (adopt if same else strays).append(p)
    return Leftovers(adopt, strays)


class AdoptedContainer:
    """A running container another (dead) supervisor started, watched through `waiter`: a `TOOL wait ID`
    child of this supervisor, which ends when the container does and prints its exit status (the same
    status a `TOOL run` client exits with, so a SIGKILLed container reads 137 either way). `pid` is the
    container's main process as the host sees it (what `status` checks and measures).

    The `subprocess.Popen` subset of `AdoptedProcess`; `signal_container(sig)` delivers a signal to the
    container itself (`TOOL kill --signal`), never to the waiter."""

    def __init__(
        self,
        pid: int,
        create_time: float | None,
        waiter: subprocess.Popen[bytes],
        signal_container: Callable[[int], None],
    ) -> None:
        self.pid = pid
        self.create_time = create_time
        self.returncode: int | None = None
        self._waiter = waiter
        self._signal = signal_container

    def _done(self, code: int) -> int:
        out = self._waiter.stdout.read() if self._waiter.stdout is not None else b""
        if self._waiter.stdout is not None:
            self._waiter.stdout.close()
        try:  # the waiter failed (the container was gone before it asked): the status is unknown
            self.returncode = int(out.split()[-1]) if code == 0 else UNKNOWN_EXIT
        except (ValueError, IndexError):
            self.returncode = UNKNOWN_EXIT
        return self.returncode

    def poll(self) -> int | None:
        """None while the container runs, else its exit status (`UNKNOWN_EXIT` when the runtime could
        not say)."""
        if self.returncode is None and (code := self._waiter.poll()) is not None:
            self._done(code)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the container is gone (`subprocess.TimeoutExpired` after `timeout` seconds)."""
        if self.returncode is None:
            self._done(self._waiter.wait(timeout))
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the container while it runs."""
        if self.poll() is None:
            self._signal(sig)

    def terminate(self) -> None:
        """SIGTERM (it drains)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)


def container_mismatch(
    inspected: Mapping[str, Any],
    *,
    cmd: Sequence[str],
    image_id: str,
    labels: Mapping[str, str],
    networks: Collection[str],
) -> str | None:
    """Why the container `inspected` (one object of `TOOL inspect`, podman's or docker's) is not what a
    launch would run, or None when it is: running, with `labels`, in one of the network modes `networks`
    (the fleet's holder: `container:ID` or `container:NAME`), of image `image_id` (the id the launch's
    image name has now: an image rebuilt under that name since is another launch), with exactly `cmd` as
    its command (every setting of a server or router is on it: port, models, threads, device, execution)."""
    state, config = inspected.get("State") or {}, inspected.get("Config") or {}
    if not state.get("Running"):
        return f"not running ({state.get('Status', 'unknown')})"
    have = config.get("Labels") or {}
    if any(have.get(k) != v for k, v in labels.items()):
        return f"labels {have} lack {dict(labels)}"
    mode = (inspected.get("HostConfig") or {}).get("NetworkMode")
    if mode not in networks:
        return f"network {mode}, not the fleet's holder"
    if inspected.get("Image") != image_id:
        return f"image {inspected.get('Image')}, not {image_id}"
    if list(config.get("Cmd") or []) != list(cmd):
        return f"command {config.get('Cmd')}, not {list(cmd)}"
    return None
