"""The supervisor: the background process `inferpack up` starts (`inferpack fleet supervise`).

It owns the fleet: it starts every server, waits for each to be ready, then starts the router; it restarts
a process that dies (doubling backoff, reset after a stable run) and records everything in the run
directory's state file. A process that is alive but hung never dies by itself: a ready process whose
liveness probe fails `liveness_failures` times in a row, or a restarted one not ready within the ready
timeout, is killed with SIGKILL (SIGTERM does nothing to a stopped process) and so restarted; the state
(`last_restart_reason`) and the log say why. On SIGTERM (`inferpack down`) it stops the router, then the
servers (SIGTERM, drain, SIGKILL after the timeout), records phase "stopped" and exits. Being the
servers' parent, it learns of a death at once (`poll`) and leaves no zombies.

Started with the state of a supervisor that died (`previous`), it first adopts that supervisor's live
processes or containers that still match its launch (`fleet.adoption`, through its runner): they keep
running and serving, and are watched, probed, killed when hung and stopped like its own children; one
that dies is started again as its own child. Init, not this supervisor, reaps an adopted host process
that exits. Under a container runtime the fleet's network holder is kept when anything is adopted.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil
from pydantic import Field, ValidationError

from inferpack import processes as P
from inferpack.errors import ConfigError, FleetError
from inferpack.fleet.adoption import UNKNOWN_EXIT, sort_leftovers
from inferpack.fleet.liveness import LivenessProber, LivenessTracker
from inferpack.fleet.runners import ChildProcess, ProcessRunner, Runtime, config_mounts, make_runner
from inferpack.fleet.state import (
    FleetState,
    ProcessState,
    RunDir,
    is_stale,
    load_state,
    save_state,
    start_time,
)
from inferpack.jsonfile import StrictModel
from inferpack.plan import Execution
from inferpack.settings import DEFAULT_IMAGE

log = logging.getLogger("inferpack.fleet.supervisor")
TICK_S = 0.1
# A process that stayed up this long before dying gets the initial backoff again (it was not crash-looping).
STABLE_AFTER_S = 30.0


class ServerLaunch(StrictModel):
    """One server to run."""

    name: str
    port: int
    models: list[str]
    threads: int
    device: str = "cpu"
    execution: Execution | None = None  # the plan group's costed settings, applied as they are
    latency_objective_ms: float | None = None  # a configured objective: the default deadline of requests
    memory_budget_mb: float | None = None  # over the configured one: room for a traced group's graphs


class LaunchSpec(StrictModel):
    """Everything the supervisor needs, written by `up` into the run directory (launch.json)."""

    repository: str
    config: str | None = None
    servers: list[ServerLaunch]
    router_port: int
    ready_timeout_s: float = 180.0
    stop_timeout_s: float = 20.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    upstream_timeout_s: float = 60.0
    log_level: str = "info"
    supervisor_ready_probe_s: float = Field(default=0.5, gt=0)
    liveness_interval_s: float = Field(default=2.0, gt=0)
    liveness_timeout_s: float = Field(default=2.0, gt=0)
    liveness_failures: int = Field(default=3, ge=1)
    runtime: Runtime = "host"
    image: str = DEFAULT_IMAGE


def launch_file(run: RunDir) -> Path:
    """Where `up` writes the launch spec."""
    return run.root / "launch.json"


def load_launch(run: RunDir) -> LaunchSpec:
    """Read the launch spec of a run directory."""
    try:
        return LaunchSpec.model_validate(json.loads(launch_file(run).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, ValidationError) as exc:
        raise ConfigError(f"{launch_file(run)} is missing or invalid: {exc}") from exc


def launch_runner(run: RunDir, spec: LaunchSpec) -> ProcessRunner:
    """The runner that starts the processes of a launch spec (host processes or containers)."""
    config = Path(spec.config) if spec.config else None
    return make_runner(
        spec.runtime,
        image=spec.image,
        run_root=run.root,
        ports=[*(s.port for s in spec.servers), spec.router_port],
        mounts=config_mounts(spec.repository, run.root, config),
    )


def next_backoff(previous_s: float | None, uptime_s: float, initial_s: float, max_s: float) -> float:
    """Delay before restarting a process that died after `uptime_s` of running: the initial delay for a
    first death or after a stable run, otherwise double the previous delay, capped."""
    if previous_s is None or uptime_s >= STABLE_AFTER_S:
        return initial_s
    return min(previous_s * 2.0, max_s)


@dataclass
class _Child:
    """A supervised process: its record in the state, its command and its restart bookkeeping."""

    record: ProcessState
    cmd: list[str]
    env: dict[str, str]
    liveness: LivenessTracker
    proc: ChildProcess | None = None
    started: float = 0.0
    backoff_s: float | None = None
    restart_at: float | None = None
    ready_by: float = field(default=0.0)
    probe: Future[bool] | None = None  # the liveness probe in flight
    kill_reason: str | None = None  # set when the supervisor killed it (the exit is then ours)


class Supervisor:
    """Runs and watches the fleet described by a run directory."""

    def __init__(
        self,
        run: RunDir,
        spec: LaunchSpec,
        runner: ProcessRunner | None = None,
        previous: FleetState | None = None,
    ) -> None:
        self.run = run
        self.spec = spec
        # the state a dead supervisor left: its live processes that match `spec` are adopted at start
        self.previous = previous
        self.runner = runner if runner is not None else launch_runner(run, spec)
        self.stop_requested = threading.Event()
        host, cli = self.runner.bind_host, self.runner.cli
        # called after each supervision tick (a change to apply: `fleet.apply`)
        self.on_tick: Callable[[], None] | None = None
        self.servers = [self.server_child(s) for s in spec.servers]
        self.router = _Child(
            ProcessState(name="router", role="router", port=spec.router_port),
            P.router_command(
                plan=run.plan_file,
                endpoints=run.endpoints_file,
                port=spec.router_port,
                upstream_timeout_s=spec.upstream_timeout_s,
                log_level="warning",
                host=host,
                cli=cli,
                config=Path(spec.config) if spec.config else None,  # [router], and the servers' auth
            ),
            P.child_env(),
            self._tracker(),
        )
        # servers may be added by a re-plan: room for a few more probes at once than today's processes
        self.prober = LivenessProber(len(self.servers) + 4, spec.liveness_timeout_s)
        me = psutil.Process()
        self.state = FleetState(
            supervisor=ProcessState(
                name="supervisor", role="supervisor", pid=me.pid, create_time=me.create_time()
            ),
            router=self.router.record,
            servers=[c.record for c in self.servers],
        )

    # --- helpers ------------------------------------------------------------------------------------------
    def _tracker(self) -> LivenessTracker:
        return LivenessTracker(interval_s=self.spec.liveness_interval_s, failures=self.spec.liveness_failures)

    def server_child(self, s: ServerLaunch) -> _Child:
        """A (not yet started) server process of the spec."""
        spec = self.spec
        return _Child(
            ProcessState(name=s.name, role="server", port=s.port, models=s.models, threads=s.threads),
            P.server_command(
                repository=spec.repository,
                models=s.models,
                port=s.port,
                threads=s.threads,
                device=s.device,
                config=Path(spec.config) if spec.config else None,
                log_level=spec.log_level,
                execution=s.execution,
                latency_objective_ms=s.latency_objective_ms,
                memory_budget_mb=s.memory_budget_mb,
                host=self.runner.bind_host,
                cli=self.runner.cli,
            ),
            P.child_env(s.threads, s.execution.intra_op_threads if s.execution else 1),
            self._tracker(),
        )

    def _save(self) -> None:
        save_state(self.run, self.state)

    def _start(self, child: _Child) -> None:
        name = child.record.name
        child.proc = self.runner.start(name, child.cmd, child.env, self.run.log_path(name))
        child.started = time.monotonic()
        child.ready_by = child.started + self.spec.ready_timeout_s
        child.restart_at = None
        child.probe, child.kill_reason = None, None
        child.liveness.reset()
        child.record.pid = child.proc.pid
        child.record.create_time = start_time(child.proc.pid)
        child.record.status = "starting"
        child.record.adopted = False
        log.info("started %s (pid %d)", child.record.name, child.proc.pid)

    def adopt(self) -> list[_Child]:
        """Take over the processes (or containers) of `previous` that still run what the launch would
        start (`sort_leftovers`, then the runner's own check). Returns the adopted children."""
        if self.previous is None:
            return []
        found = sort_leftovers(
            self.runner.leftovers(self.previous),
            self.spec.router_port,
            {s.name: (s.port, s.models) for s in self.spec.servers},
        )
        old = {p.name: p for p in found.adopt}
        adopted = []
        for child in self._children():
            was = old.get(child.record.name)
            proc = self.runner.adopt(child.record.name, was, child.cmd) if was is not None else None
            if was is None or proc is None:  # died since it was sorted, or runs something else
                continue
            child.proc = proc
            child.started = time.monotonic()
            child.ready_by = child.started + self.spec.ready_timeout_s
            rec = child.record
            rec.pid, rec.create_time, rec.status, rec.adopted = proc.pid, proc.create_time, "starting", True
            rec.restarts, rec.last_exit, rec.last_restart_reason = (
                was.restarts,
                was.last_exit,
                was.last_restart_reason,
            )
            rec.message = f"adopted from supervisor pid {self.previous.supervisor.pid} (which is gone)"
            log.info(
                "adopted %s (pid %d) from supervisor pid %s, which is gone",
                rec.name,
                proc.pid,
                self.previous.supervisor.pid,
            )
            adopted.append(child)
        for p in found.strays:
            log.warning("%s (pid %s) is not part of this launch: not adopted", p.name, p.pid)
        return adopted

    def _children(self) -> list[_Child]:
        return [*self.servers, self.router]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping the fleet", signum)
        self.stop_requested.set()

    # --- start-up -----------------------------------------------------------------------------------------
    def _await_ready(self, children: list[_Child]) -> bool:
        """Wait for `children` to answer their readiness probe; False (state says why) if one dies or
        times out, or a stop is requested."""
        pending = list(children)
        while pending:
            if self.stop_requested.is_set():
                self.state.message = "stop requested during start-up"
                return False
            for child in list(pending):
                assert child.proc is not None and child.record.url is not None
                code = child.proc.poll()
                if code is not None:
                    child.record.status = "failed"
                    child.record.last_exit = _status(code)
                    self.state.message = f"{child.record.name} {_exited(code)} during start-up"
                    return False
                if time.monotonic() > child.ready_by:
                    child.record.status = "failed"
                    self.state.message = (
                        f"{child.record.name} was not ready within {self.spec.ready_timeout_s:g} s"
                    )
                    return False
                ok, failed = P.probe_readiness(child.record.url, self.spec.supervisor_ready_probe_s)
                if failed:  # a required model failed: waiting out the timeout would not help
                    child.record.status = "failed"
                    self.state.message = P.failed_models_message(child.record.name, failed)
                    return False
                if ok:
                    child.record.status = "ready"
                    pending.remove(child)
                    self._save()
            self.stop_requested.wait(TICK_S)
        return True

    def start_fleet(self) -> bool:
        """Servers first (all at once), then the router once every server is ready."""
        self._save()
        adopted = self.adopt()  # first: what is adopted keeps what it runs in (a container's network)
        try:
            self.runner.open(keep=[c.record.name for c in adopted])
        except (ConfigError, FleetError) as exc:
            self.state.message = str(exc)
            return False
        for child in self.servers:
            if child not in adopted:
                self._start(child)
        self._save()
        if not self._await_ready(self.servers):
            return False
        if self.router not in adopted:
            self._start(self.router)
        self._save()
        if not self._await_ready([self.router]):
            return False
        self.state.phase = "running"
        self.state.message = None
        self._save()
        return True

    # --- supervision --------------------------------------------------------------------------------------
    def tick(self, now: float) -> bool:
        """One supervision pass; True when the state changed."""
        changed = False
        for child in self._children():
            rec = child.record
            if child.proc is not None and rec.status in ("starting", "ready"):
                code = child.proc.poll()
                if code is not None:
                    uptime = now - child.started
                    child.backoff_s = next_backoff(
                        child.backoff_s, uptime, self.spec.restart_backoff_s, self.spec.restart_backoff_max_s
                    )
                    child.restart_at = now + child.backoff_s
                    reason = child.kill_reason or _exited(code)
                    rec.status, rec.last_exit, rec.pid, rec.create_time = (
                        "restarting",
                        _status(code),
                        None,
                        None,
                    )
                    rec.last_restart_reason = reason
                    rec.message = f"{reason} after {uptime:.1f} s; restart in {child.backoff_s:g} s"
                    log.warning("%s %s", rec.name, rec.message)
                    changed = True
                    continue
            if rec.status == "restarting" and child.restart_at is not None and now >= child.restart_at:
                rec.restarts += 1
                self._start(child)
                changed = True
            elif rec.status == "starting" and now > child.ready_by and child.kill_reason is None:
                self._kill(child, f"not ready within {self.spec.ready_timeout_s:g} s of its start")
            elif (
                rec.status == "starting"
                and rec.url is not None
                and P.probe_ready(rec.url, self.spec.supervisor_ready_probe_s)
            ):
                rec.status, rec.message = "ready", None
                log.info("%s is ready again (restart %d)", rec.name, rec.restarts)
                changed = True
            elif rec.status == "ready":
                self._check_liveness(child)
        return changed

    def _check_liveness(self, child: _Child) -> None:
        """Collect a finished liveness probe (kill after too many failures in a row) or send a due one."""
        url = child.record.url
        if url is None or child.kill_reason is not None:
            return
        if child.probe is not None:
            if not child.probe.done():
                return
            ok = child.probe.result()
            child.probe = None
            if not ok:
                log.warning(
                    "%s: liveness probe failed (%d in a row)",
                    child.record.name,
                    child.liveness.consecutive + 1,
                )
            if child.liveness.result(ok):
                self._kill(
                    child,
                    f"killed (SIGKILL): liveness probe failed {child.liveness.failures} times in a row "
                    f"(timeout {self.spec.liveness_timeout_s:g} s, "
                    f"every {self.spec.liveness_interval_s:g} s)",
                )
        elif child.liveness.due():
            child.liveness.sent()
            child.probe = self.prober.submit(url)

    def _kill(self, child: _Child, reason: str) -> None:
        """SIGKILL a hung process (a stopped one ignores SIGTERM); the next pass sees it exit and restarts it,
        recording `reason`."""
        child.kill_reason = reason
        log.warning("%s (pid %s): %s", child.record.name, child.record.pid, reason)
        if child.proc is not None:
            self.runner.kill(child.record.name, child.proc)

    def stop_fleet(self) -> None:
        """Router first (no new traffic), then the servers in parallel; record phase "stopped"."""
        self.state.phase = "stopping"
        self._save()
        self.prober.close()
        for group in ([self.router], self.servers):
            running = [(c.record.name, c.proc) for c in group if c.proc is not None]
            killed = self.runner.stop(running, self.spec.stop_timeout_s)
            for child in group:
                if child.proc is not None:
                    child.record.last_exit = _status(child.proc.returncode)
                if child.record.status != "failed":  # keep which process made start-up fail
                    child.record.status = "stopped"
                child.record.pid = child.record.create_time = None
            for name in killed:
                log.warning("%s did not stop within %g s: killed", name, self.spec.stop_timeout_s)
        self.runner.close()
        self.state.phase = "stopped"
        log.info("fleet stopped")
        self._save()

    def run_forever(self) -> int:
        """Start, supervise until SIGTERM/SIGINT, stop. Exit status 1 when start-up failed."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        ok = self.start_fleet()
        if not ok:
            failure = self.state.message
            self.stop_fleet()
            self.state.phase = "failed" if not self.stop_requested.is_set() else "stopped"
            self.state.message = failure
            self._save()
            return 1 if self.state.phase == "failed" else 0
        log.info("fleet running: %d servers, router on port %d", len(self.servers), self.spec.router_port)
        while not self.stop_requested.wait(TICK_S):
            if self.tick(time.monotonic()):
                self._save()
            if self.on_tick is not None:
                self.on_tick()
        self.stop_fleet()
        return 0


def _status(code: int | None) -> int | None:
    """An exit status to record: None when it is unknown (an adopted process, which init reaps)."""
    return None if code == UNKNOWN_EXIT else code


def _exited(code: int) -> str:
    if code == UNKNOWN_EXIT:
        return "exited (adopted, so its exit status is unknown)"
    return f"exited with status {code}"


def supervise(
    run_dir: Path, attach: Callable[[Supervisor], None] | None = None, *, adopt: bool = False
) -> int:
    """Entry point of `inferpack fleet supervise`: run the fleet of `run_dir` until told to stop.
    `attach` gets the supervisor before it starts (to set `on_tick`). With `adopt`, the live processes of
    the state a dead supervisor left in the run directory are taken over rather than started again."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness probe is noise
    run = RunDir(run_dir)
    previous = load_state(run) if adopt else None
    if previous is not None and previous.phase != "stopped" and not is_stale(previous):
        raise FleetError(f"the fleet of {run.root} has a live supervisor (pid {previous.supervisor.pid})")
    supervisor = Supervisor(run, load_launch(run), previous=previous)
    if attach is not None:
        attach(supervisor)
    return supervisor.run_forever()
