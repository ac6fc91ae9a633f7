"""The run directory of a local fleet and its JSON state, so `status`, `logs` and `down` work from any shell.

Layout of a run directory:

    state.json        this module's FleetState; written only by the supervisor (atomically)
    plan.json         the placement in force (the shared plan format, `inferpack.plan`)
    endpoints.json    server name -> URL (the format of `inferpack.endpoints`, read by the router)
    logs/NAME.log     one log per server, plus router.log and supervisor.log (appended across restarts)

A process is identified by its pid *and* its start time: a pid alone may have been reused by an unrelated
process after a crash, and `down` must never signal a stranger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import psutil
from pydantic import Field, ValidationError

from inferpack.errors import ConfigError
from inferpack.jsonfile import StrictModel

STATE_FORMAT_VERSION: Literal[1] = 1
Role = Literal["server", "router", "supervisor"]
ProcStatus = Literal["starting", "ready", "restarting", "failed", "stopped"]
Phase = Literal["starting", "running", "failed", "stopping", "stopped"]


class ProcessState(StrictModel):
    """One process of the fleet as the supervisor last saw it."""

    name: str
    role: Role
    port: int | None = None
    pid: int | None = None
    create_time: float | None = Field(default=None, description="psutil start time: guards pid reuse.")
    models: list[str] = Field(default_factory=list)
    threads: int | None = None
    status: ProcStatus = "starting"
    restarts: int = 0
    last_exit: int | None = None
    last_restart_reason: str | None = Field(
        default=None, description="Why it was last restarted: its exit, or the supervisor's kill and why."
    )
    adopted: bool = Field(
        default=False,
        description="Started by an earlier supervisor that died and taken over by this one (not its child).",
    )
    message: str | None = None

    @property
    def url(self) -> str | None:
        """Loopback base URL, when the process listens on a port."""
        return None if self.port is None else f"http://127.0.0.1:{self.port}"


class FleetState(StrictModel):
    """The whole fleet: supervisor, router and servers."""

    format_version: Literal[1] = STATE_FORMAT_VERSION
    phase: Phase = "starting"
    message: str | None = None
    supervisor: ProcessState
    router: ProcessState
    servers: list[ProcessState]

    def server(self, name: str) -> ProcessState:
        """The named server (ConfigError if the fleet has none of that name)."""
        for s in self.servers:
            if s.name == name:
                return s
        raise ConfigError(f"no server named {name!r}", hint=f"servers: {[s.name for s in self.servers]}")

    def processes(self) -> list[ProcessState]:
        """Router and servers (the processes the supervisor owns)."""
        return [self.router, *self.servers]


class RunDir:
    """Paths of one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def state_file(self) -> Path:
        """The JSON state."""
        return self.root / "state.json"

    @property
    def plan_file(self) -> Path:
        """The plan in force."""
        return self.root / "plan.json"

    @property
    def endpoints_file(self) -> Path:
        """Server name -> URL, for the router (and for `inferpack bench --endpoints`)."""
        return self.root / "endpoints.json"

    @property
    def logs_dir(self) -> Path:
        """Where every process logs."""
        return self.root / "logs"

    def log_path(self, name: str) -> Path:
        """Log file of one process (server name, `router` or `supervisor`)."""
        return self.logs_dir / f"{name}.log"

    def prepare(self) -> None:
        """Create the directory and its logs folder."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)


def save_state(run: RunDir, state: FleetState) -> None:
    """Write the state atomically: readers in other shells never see half a file."""
    run.root.mkdir(parents=True, exist_ok=True)
    tmp = run.state_file.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(state.model_dump_json(indent=1) + "\n")
    os.replace(tmp, run.state_file)


def load_state(run: RunDir) -> FleetState | None:
    """The saved state, or None when no fleet was ever started in this run directory."""
    try:
        text = run.state_file.read_text()
    except FileNotFoundError:
        return None
    try:
        return FleetState.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ConfigError(
            f"{run.state_file} is not a fleet state file: {exc}",
            hint="if no fleet is running, delete the run directory",
        ) from exc


def start_time(pid: int) -> float | None:
    """The process's start time (psutil), or None when no such process exists."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(pid: int | None, create_time: float | None) -> bool:
    """True when `pid` runs and is the same process that was recorded (same start time), not a zombie."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # create_time is rounded differently by different calls; a reused pid differs by far more.
    return create_time is None or abs(started - create_time) < 0.5


def is_stale(state: FleetState) -> bool:
    """A state that claims a live fleet whose supervisor is gone (crashed, killed, machine rebooted)."""
    if state.phase == "stopped":
        return False
    return not is_alive(state.supervisor.pid, state.supervisor.create_time)


def leftover_processes(state: FleetState) -> list[ProcessState]:
    """Recorded processes still alive (same pid and start time): what a stale fleet left behind."""
    return [p for p in state.processes() if is_alive(p.pid, p.create_time)]
