"""Changes to a running fleet, handed from a command (`up --plan`, `restart`) to the supervisor.

The command, holding the run-directory lock, writes `change.json` (a `ChangeRequest`); the supervisor
notices it between supervision ticks, applies it (`fleet.apply`) and keeps `change-report.json` (a
`ChangeReport`: every action with its status and timing) up to date; the command waits for the report of
its request to finish and prints it. Both files are written atomically.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from inferpack import processes as P
from inferpack.errors import ConfigError, FleetError
from inferpack.fleet import ops
from inferpack.fleet.lock import run_lock
from inferpack.fleet.state import FleetState, RunDir, is_alive, is_stale, load_state
from inferpack.fleet.supervisor import LaunchSpec, load_launch
from inferpack.jsonfile import StrictModel, write_atomic
from inferpack.plan import Plan
from inferpack.settings import Settings

POLL_S = 0.2
ActionStatus = Literal["pending", "running", "done", "failed", "undone"]


class ChangeRequest(StrictModel):
    """What a command asks the supervisor to do: move to a new plan, or restart servers one at a time."""

    id: str
    kind: Literal["plan", "restart"]
    requested_by: str = ""
    launch: LaunchSpec | None = None  # kind "plan": the new launch spec (every server of the new plan)
    plan: Plan | None = None  # kind "plan": the new plan (what plan.json holds afterwards)
    servers: list[str] = Field(default_factory=list)  # kind "restart": in this order
    force: bool = False  # kind "restart": allow a model's only copy to go dark meanwhile


class ActionRecord(StrictModel):
    """One action of a change as it went."""

    phase: int
    kind: str
    server: str | None = None
    model: str | None = None
    detail: str = ""
    status: ActionStatus = "pending"
    started_s: float | None = None  # since the change began
    duration_s: float | None = None
    message: str | None = None


class ChangeReport(StrictModel):
    """The supervisor's account of a change: running, done or failed, with every action."""

    id: str
    kind: Literal["plan", "restart"]
    status: Literal["running", "done", "failed"] = "running"
    message: str | None = None
    notes: list[str] = Field(default_factory=list)
    duration_s: float | None = None
    actions: list[ActionRecord] = Field(default_factory=list)


def request_file(run: RunDir) -> Path:
    """Where a command puts its request."""
    return run.root / "change.json"


def report_file(run: RunDir) -> Path:
    """Where the supervisor reports on the latest request."""
    return run.root / "change-report.json"


def _read(path: Path, model: type[ChangeRequest] | type[ChangeReport]) -> ChangeRequest | ChangeReport | None:
    try:
        return model.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ConfigError(f"{path} is not a valid change file: {exc}") from exc


def load_request(run: RunDir) -> ChangeRequest | None:
    """The pending or latest request, if any."""
    found = _read(request_file(run), ChangeRequest)
    assert found is None or isinstance(found, ChangeRequest)
    return found


def load_report(run: RunDir) -> ChangeReport | None:
    """The report on the latest request, if any."""
    found = _read(report_file(run), ChangeReport)
    assert found is None or isinstance(found, ChangeReport)
    return found


def new_request(kind: Literal["plan", "restart"], **fields: object) -> ChangeRequest:
    """A request with a fresh id, naming this process as its author."""
    return ChangeRequest.model_validate(
        {"id": uuid.uuid4().hex, "kind": kind, "requested_by": f"pid {os.getpid()}", **fields}
    )


def submit(
    run: RunDir,
    request: ChangeRequest,
    timeout_s: float,
    on_progress: Callable[[ChangeReport], None] | None = None,
) -> ChangeReport:
    """Hand `request` to the running supervisor and wait for its report to finish (done or failed).
    FleetError when the supervisor is gone or the change is not over within `timeout_s` (the supervisor
    then carries on; `inferpack status` shows where it is)."""
    write_atomic(request_file(run), request.model_dump_json(indent=1) + "\n")
    deadline = time.monotonic() + timeout_s
    while True:
        report = load_report(run)
        if report is not None and report.id == request.id:
            if on_progress is not None:
                on_progress(report)
            if report.status != "running":
                return report
        state = load_state(run)
        if state is None or not is_alive(state.supervisor.pid, state.supervisor.create_time):
            raise FleetError(
                "the fleet's supervisor is not running: the change was not applied",
                hint=f"see {run.log_path('supervisor')}; `inferpack down` then `inferpack up` starts afresh",
            )
        if time.monotonic() > deadline:
            raise FleetError(
                f"the change was not over within {timeout_s:.0f} s; the supervisor carries on with it",
                hint=f"`inferpack status` shows the fleet; {report_file(run)} lists every action",
            )
        time.sleep(POLL_S)


# --- the commands' side -------------------------------------------------------------------------------------
def running_state(run: RunDir) -> FleetState:
    """The state of the fleet running from `run`; FleetError when none is running (or it is stale)."""
    state = load_state(run)
    if state is None or state.phase != "running" or is_stale(state):
        phase = "none" if state is None else ("stale" if is_stale(state) else state.phase)
        raise FleetError(
            f"no running fleet in {run.root} (state: {phase})",
            hint="`inferpack up` starts one; `inferpack status` shows what is there",
        )
    return state


def is_running(run_dir: Path) -> bool:
    """True when a fleet runs from `run_dir` (its supervisor is alive and start-up is over)."""
    state = load_state(RunDir(run_dir.resolve()))
    return state is not None and state.phase == "running" and not is_stale(state)


def _new_ports(taken: set[int], n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = P.free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


def apply_plan(
    settings: Settings,
    plan: Plan,
    *,
    config: Path | None = None,
    on_progress: Callable[[ChangeReport], None] | None = None,
) -> ChangeReport:
    """Move the running fleet of `fleet.run_dir` to `plan` without a model going dark (`fleet.reconcile`):
    servers that stay keep their ports, new ones get free ports. Returns the supervisor's report (status
    "failed" with its message when it could not; the fleet then stays on its old placement)."""
    run = RunDir(settings.fleet.run_dir.resolve())
    with run_lock(run.root):
        running_state(run)
        current = load_launch(run)
        servers = ops.checked_servers(settings, plan)
        have = {s.name: s.port for s in current.servers}
        added = sorted(s.name for s in servers if s.name not in have)
        if added and current.runtime != "host":
            # containers publish their ports once, at `up`, through the fleet's network container
            raise FleetError(
                f"the new plan adds servers ({', '.join(added[:3])}) to a fleet running in "
                f"{current.runtime} containers, whose ports are fixed at start",
                hint="re-plan onto the running servers' names, or `inferpack down` then `inferpack up`",
            )
        fresh = iter(
            _new_ports({current.router_port, *have.values()}, sum(s.name not in have for s in servers))
        )
        ports = [have[s.name] if s.name in have else next(fresh) for s in servers]
        kept, spec = ops.launch_spec(settings, plan, config, current.router_port, ports)
        request = new_request("plan", launch=spec, plan=kept)
        timeout = 3 * spec.ready_timeout_s + 2 * spec.stop_timeout_s + 60
        return submit(run, request, timeout, on_progress)


def restart(
    run_dir: Path,
    servers: list[str],
    *,
    force: bool = False,
    on_progress: Callable[[ChangeReport], None] | None = None,
) -> ChangeReport:
    """Rolling restart of `servers` (all when empty), one at a time, each ready before the next; a server
    whose models have no other ready copy is refused unless `force` (the report's message names them)."""
    run = RunDir(run_dir.resolve())
    running_state(run)
    with run_lock(run.root):
        state = running_state(run)
        for name in servers:
            state.server(name)  # ConfigError naming the servers there are
        spec = load_launch(run)
        count = len(servers) or len(state.servers)
        timeout = count * (2 * spec.ready_timeout_s + spec.stop_timeout_s + 30) + 60
        return submit(run, new_request("restart", servers=servers, force=force), timeout, on_progress)
