"""The Python API behind `inferpack up`, `status`, `logs` and `down`.

`up` prepares the run directory (plan, endpoints, launch spec) and starts the supervisor detached (its own
session, so closing the shell does not stop the fleet); every later command reads the state file the
supervisor keeps, so they work from any shell. On a run directory whose supervisor died while its
processes (or containers) kept serving, `up` with the same launch adopts them (`adoptable`,
`fleet.adoption`) instead of stopping and starting them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from inferpack import processes as P
from inferpack.endpoints import ServerEndpoints, save_endpoints
from inferpack.errors import ConfigError, FleetError, InferpackError, PlanError
from inferpack.fleet import journal
from inferpack.fleet.adoption import Leftovers, sort_leftovers
from inferpack.fleet.lock import run_lock
from inferpack.fleet.runners import HostRunner, ProcessRunner
from inferpack.fleet.state import (
    FleetState,
    ProcessState,
    RunDir,
    is_alive,
    is_stale,
    leftover_processes,
    load_state,
    save_state,
)
from inferpack.fleet.supervisor import LaunchSpec, ServerLaunch, launch_file, launch_runner, load_launch
from inferpack.plan import Plan, ServerGroup, ServerPlan, load_plan, save_plan, traced_memory_budget_mb
from inferpack.planner.inputs import model_memory_mb
from inferpack.planner.naive import local_simple_plan
from inferpack.repository.local import LocalRepository
from inferpack.runtime.devices import DeviceKind, probe_devices
from inferpack.runtime.hardware import usable_cores
from inferpack.runtime.targets import group_devices, host_device_kinds
from inferpack.settings import Settings

POLL_S = 0.1
log = logging.getLogger("inferpack.fleet")


def local_plan(repository: Path, servers: int, copies: int) -> Plan:
    """The simple plan for this machine (`inferpack plan --simple`): every model of the repository dealt
    over `servers` local servers, `copies` copies each (at most one per server), the cores split evenly,
    memory sized from the models each server holds."""
    repo = LocalRepository(repository)
    ids = repo.model_ids()
    if not ids:
        raise PlanError(f"no models in {repository}", hint="create some with `inferpack models demo`")
    memory = {model_id: model_memory_mb(repo, model_id) for model_id in ids}
    return local_simple_plan(memory, servers, copies, repository=str(repository))


def threads_per_server(configured: int, servers: int) -> int:
    """Inference threads of each server: as configured, else the cores split evenly (at least one)."""
    return configured or max(1, usable_cores() // max(servers, 1))


def _ports(base_port: int, router_port: int, n: int) -> tuple[int, list[int]]:
    """Router port and server ports: fixed (checked free) or picked by the OS when 0."""
    router = router_port or P.free_port()
    if base_port:
        servers = [base_port + i for i in range(n)]
    else:
        servers = []
        while len(servers) < n:
            port = P.free_port()
            if port != router and port not in servers:
                servers.append(port)
    busy = [p for p in [router, *servers] if P.port_in_use(p)]
    if busy:
        raise ConfigError(
            f"port(s) {busy} already in use on 127.0.0.1",
            hint="stop what listens there, or set fleet.base_port / fleet.router_port (0 picks free ports)",
        )
    return router, servers


def prepare(settings: Settings, plan: Plan, config: Path | None) -> tuple[RunDir, LaunchSpec]:
    """Check the run directory is free and write plan.json, endpoints.json and launch.json into it."""
    fleet = settings.fleet
    run = RunDir(fleet.run_dir.resolve())
    existing = load_state(run)
    if existing is not None and existing.phase != "stopped":
        if not is_stale(existing):
            raise FleetError(
                f"a fleet is already running from {run.root} (supervisor pid {existing.supervisor.pid})",
                hint="`inferpack up --plan NEW` changes it in place; `inferpack down` stops it "
                "(or choose another fleet.run_dir)",
            )
        cleanup_stale(existing)
    servers = checked_servers(settings, plan)
    router_port, ports = _ports(fleet.base_port, fleet.router_port, len(servers))
    kept, spec = launch_spec(settings, plan, config, router_port, ports)
    run.prepare()
    save_plan(kept, run.plan_file)
    save_endpoints(
        ServerEndpoints(servers={s.name: f"http://127.0.0.1:{s.port}" for s in spec.servers}),
        run.endpoints_file,
    )
    launch_file(run).write_text(spec.model_dump_json(indent=1) + "\n")
    run.state_file.unlink(missing_ok=True)
    return run, spec


def checked_servers(settings: Settings, plan: Plan) -> list[ServerPlan]:
    """The plan's servers that hold a model; PlanError when it names a model the repository lacks or
    holds nothing."""
    repository = Path(plan.repository or settings.server.repository)
    known = set(LocalRepository(repository).model_ids())
    if unknown := sorted(set(plan.models()) - known):
        raise PlanError(f"the plan holds {len(unknown)} model(s) not in {repository}, e.g. {unknown[:3]}")
    servers = [s for s in plan.servers() if s.models]
    if not servers:
        raise PlanError("the plan has no server holding a model")
    return servers


def launch_spec(
    settings: Settings, plan: Plan, config: Path | None, router_port: int, ports: list[int]
) -> tuple[Plan, LaunchSpec]:
    """The plan without its empty servers (the router and the state only know servers that run) and the
    launch spec of its servers on `ports` (in plan order)."""
    fleet = settings.fleet
    repository = Path(plan.repository or settings.server.repository)
    servers = [s for s in plan.servers() if s.models]
    threads = threads_per_server(fleet.threads_per_server, len(servers))
    devices = plan_devices(plan, fleet.allow_cpu_fallback)
    if fleet.threads_per_server and any(g.execution is not None for g in plan.groups):
        log.warning(
            "warning: the plan's groups set their own threads (as costed); --threads applies only to "
            "groups without an execution"
        )
    used = {s.name for s in servers}
    groups = [g.model_copy(update={"servers": [s for s in g.servers if s.name in used]}) for g in plan.groups]
    kept = plan.model_copy(update={"groups": [g for g in groups if g.servers]})
    spec = LaunchSpec(
        repository=str(repository.resolve()),
        config=str(config.resolve()) if config is not None else None,
        servers=[
            server_launch(
                s.name,
                p,
                s.models,
                plan.group_of(s.name),
                devices,
                threads,
                fleet.threads_per_server,
                objective_ms=plan.server_objective_ms(settings.server),
                memory_budget_mb=traced_memory_budget_mb(plan.group_of(s.name), settings.server),
            )
            for s, p in zip(servers, ports, strict=True)
        ],
        router_port=router_port,
        ready_timeout_s=fleet.ready_timeout_s,
        stop_timeout_s=fleet.stop_timeout_s,
        restart_backoff_s=fleet.restart_backoff_s,
        restart_backoff_max_s=fleet.restart_backoff_max_s,
        upstream_timeout_s=settings.router.upstream_timeout_s,
        liveness_interval_s=fleet.liveness_interval_s,
        liveness_timeout_s=fleet.liveness_timeout_s,
        liveness_failures=fleet.liveness_failures,
        runtime=fleet.runtime,
        image=fleet.image,
    )
    return kept, spec


def server_launch(
    name: str,
    port: int,
    models: list[str],
    group: ServerGroup,
    devices: dict[str, str],
    cpu_threads: int,
    configured_threads: int,
    *,
    objective_ms: float | None = None,
    memory_budget_mb: float | None = None,
) -> ServerLaunch:
    """How one plan server runs here: what `plan.served_settings` gives a Kubernetes pod. A group with an
    `execution` runs exactly it (the settings the plan was costed with) when its device is here, and the
    latency objective `objective_ms` (`Plan.server_objective_ms`: a configured one, never the plan's
    P90), and `memory_budget_mb` when it must replace the configured budget (`plan.traced_memory_budget_mb`:
    a traced group's servers must have room for the graphs the plan counted on). Without an execution the
    threads
    are the split of this machine's cores (CPU) or the device's default (0, unless threads are
    configured). Fallen back to the CPU, a group runs the server's defaults: neither its execution nor
    the objective, which were sized for its own processor."""
    device = devices[group.name]
    objective = objective_ms if device == group.target else None
    if group.execution is not None and device == group.execution.device:
        ex = group.execution
        return ServerLaunch(
            name=name,
            port=port,
            models=models,
            threads=ex.inference_threads,
            device=device,
            execution=ex,
            latency_objective_ms=objective,
            memory_budget_mb=memory_budget_mb,
        )
    threads = cpu_threads if device == "cpu" else configured_threads
    return ServerLaunch(
        name=name, port=port, models=models, threads=threads, device=device, latency_objective_ms=objective
    )


def plan_devices(plan: Plan, allow_cpu_fallback: bool) -> dict[str, str]:
    """Group name -> the `--device` its servers run with here: the group's processor, which this host must
    have (DeviceUnavailable), or the CPU with a warning under `allow_cpu_fallback`."""
    targets = {g.name: g.target for g in plan.groups}
    available: set[DeviceKind] = {"cpu"}
    if any(t != "cpu" for t in targets.values()):  # probing imports torch: only when a group needs it
        available = host_device_kinds(probe_devices(neuron="neuron" in targets.values()))
    devices, fallbacks = group_devices(targets, available, allow_cpu_fallback=allow_cpu_fallback)
    for warning in fallbacks:
        log.warning("warning: %s", warning)
    return devices


def up(
    settings: Settings,
    plan: Plan | None = None,
    *,
    config: Path | None = None,
    on_progress: Callable[[FleetState], None] | None = None,
) -> FleetState:
    """Start the fleet and return its state once every server and the router are ready.

    Without a plan: `fleet.plan` when set, else the simple plan of `fleet.servers` x `fleet.copies` over
    the repository. On a run directory whose supervisor died, with the same launch (`adoptable`), the new
    supervisor adopts the processes that still run instead of starting them again. Raises FleetError
    (with the failing process's log tail) when start-up fails, or at once when another command holds the
    run directory's lock.
    """
    plan = plan if plan is not None else settings_plan(settings)
    with run_lock(settings.fleet.run_dir.resolve()):
        run = RunDir(settings.fleet.run_dir.resolve())
        found = adoptable(settings, plan, config, run)
        if found is not None and found[1]:
            return _adopt(run, found[0], on_progress)
        return _start(settings, plan, config, on_progress)


def adopt_for_replan(
    settings: Settings,
    plan: Plan,
    config: Path | None = None,
    on_progress: Callable[[FleetState], None] | None = None,
) -> FleetState | None:
    """When the dead supervisor's fleet is adoptable but runs another launch than `plan`'s: adopt it on its
    recorded launch (so nothing stops) and return its state; the caller then moves it to `plan` by a
    re-plan (`change.apply_plan`), which keeps every model served. None (nothing done) otherwise: the
    same launch (`up` adopts it) or nothing to adopt (`up` starts afresh)."""
    with run_lock(settings.fleet.run_dir.resolve()):
        run = RunDir(settings.fleet.run_dir.resolve())
        found = adoptable(settings, plan, config, run)
        if found is None or found[1]:
            return None
        return _adopt(run, found[0], on_progress)


def adoptable_plan(settings: Settings, config: Path | None = None) -> Path | None:
    """The run directory's own plan file when its dead supervisor's fleet can be adopted on it: what
    `inferpack up` without a plan (nor `fleet.plan`, `--servers`, `--copies`) keeps, as the resume path
    keeps a cut-short re-plan's target, rather than moving the fleet to the simple plan. None otherwise."""
    run = RunDir(settings.fleet.run_dir.resolve())
    if not run.plan_file.is_file():
        return None
    try:
        plan = load_plan(run.plan_file)
        return run.plan_file if adoptable(settings, plan, config, run) is not None else None
    except InferpackError:  # an unreadable plan, or one naming models the repository lost: not this way
        return None


def adoptable(
    settings: Settings, plan: Plan, config: Path | None, run: RunDir
) -> tuple[Leftovers, bool] | None:
    """What a new supervisor can take over from the dead one of `run`, and whether `plan` is the plan it
    runs (the same launch: servers, ports, models and their settings); None when nothing is to be
    adopted: no stale fleet there, none of its processes (containers, under a container runtime: found
    by the fleet's names, with its network holder running) alive and as launched, a re-plan its
    supervisor's death cut short (the fleet is between two placements: `up` starts it on the target, as
    before), or ports, a repository, a runtime or an image other than the recorded ones asked for. The
    supervisor checks each container's command and image again before it adopts it."""
    existing = load_state(run)
    if existing is None or not is_stale(existing):
        return None
    record = journal.load_journal(run)
    if record is not None and record.half_done:
        return None
    try:
        recorded = load_launch(run)
    except ConfigError:
        return None
    fleet = settings.fleet
    if fleet.runtime != recorded.runtime or (fleet.runtime != "host" and fleet.image != recorded.image):
        return None
    if fleet.router_port and fleet.router_port != recorded.router_port:
        return None
    ports = {s.name: s.port for s in recorded.servers}
    if fleet.base_port and list(ports.values()) != [fleet.base_port + i for i in range(len(ports))]:
        return None
    if str(Path(plan.repository or settings.server.repository).resolve()) != recorded.repository:
        return None
    try:
        live = launch_runner(run, recorded).leftovers(existing)
    except ConfigError:  # the container runtime is gone
        return None
    found = sort_leftovers(live, recorded.router_port, {s.name: (s.port, s.models) for s in recorded.servers})
    if not found.adopt:
        return None
    servers = checked_servers(settings, plan)
    same = False
    if all(s.name in ports for s in servers):
        _, spec = launch_spec(settings, plan, config, recorded.router_port, [ports[s.name] for s in servers])
        same = spec == recorded
    return found, same


def _adopt(run: RunDir, found: Leftovers, on_progress: Callable[[FleetState], None] | None) -> FleetState:
    """Start a supervisor that adopts the live processes of the dead one (on the run directory's plan,
    endpoints and launch spec as they are); the strays it would not adopt are stopped first."""
    if found.strays:
        log.warning("stopping %s: not part of the fleet's launch", ", ".join(p.name for p in found.strays))
        # a container's recorded pid is its `run` client's, which may be gone: only a live one is signalled
        # (it passes SIGTERM on); the supervisor removes the stray containers themselves
        _terminate([p for p in found.strays if is_alive(p.pid, p.create_time)])
    return _run_supervisor(run, load_launch(run), on_progress, adopt=True)


def settings_plan(settings: Settings) -> Plan:
    """The plan the settings ask for: `fleet.plan` when set, else the simple plan."""
    fleet = settings.fleet
    if fleet.plan is not None:
        return load_plan(fleet.plan)
    return local_plan(Path(settings.server.repository), fleet.servers, fleet.copies)


def _start(
    settings: Settings, plan: Plan, config: Path | None, on_progress: Callable[[FleetState], None] | None
) -> FleetState:
    run, spec = prepare(settings, plan, config)
    launch_runner(run, spec).check()  # a missing container runtime or image: said now, not in a log
    return _run_supervisor(run, spec, on_progress)


def _run_supervisor(
    run: RunDir,
    spec: LaunchSpec,
    on_progress: Callable[[FleetState], None] | None,
    *,
    adopt: bool = False,
) -> FleetState:
    """Start the supervisor detached (`adopt`: taking over the dead one's live processes) and wait until
    it reports the fleet running (FleetError with the failing log's tail if it fails or times out; an
    interrupt stops it)."""
    supervisor = P.spawn(
        [*P.python_cli(), "fleet", "supervise", "--run-dir", str(run.root), *(["--adopt"] if adopt else [])],
        run.log_path("supervisor"),
        P.child_env(),
        new_session=True,
    )
    wait_s = spec.ready_timeout_s * 2 + 30  # servers, then the router, each within the ready timeout
    deadline = time.monotonic() + wait_s
    try:
        while True:
            state = load_state(run)
            if state is not None and state.supervisor.pid != supervisor.pid:
                state = None  # the dead supervisor's state, until this one writes its own
            if state is not None and on_progress is not None:
                on_progress(state)
            if state is not None and state.phase == "running":
                journal.retire(run)  # the fleet now runs on this plan: a cut-short re-plan is superseded
                return state
            code = supervisor.poll()
            if (state is not None and state.phase in ("failed", "stopped")) or code is not None:
                supervisor.wait()
                raise _start_failure(run, load_state(run) or state)
            if time.monotonic() > deadline:
                supervisor.terminate()
                supervisor.wait(spec.stop_timeout_s * 2 + 15)
                raise _start_failure(run, load_state(run), f"the fleet was not ready within {wait_s:.0f} s")
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        # An interrupted start-up stops what it started rather than leave half a fleet in the background.
        supervisor.terminate()
        supervisor.wait(spec.stop_timeout_s * 2 + 15)
        raise


def _start_failure(run: RunDir, state: FleetState | None, message: str | None = None) -> FleetError:
    failed = next((p for p in (state.processes() if state else []) if p.status == "failed"), None)
    name = failed.name if failed is not None else "supervisor"
    why = message or (state.message if state and state.message else "the supervisor exited")
    return FleetError(
        f"the fleet did not start: {why}",
        hint=f"full log: {run.log_path(name)}",
        log_tail=P.tail(run.log_path(name), 30),
    )


def cleanup_stale(state: FleetState) -> list[ProcessState]:
    """Stop what a dead supervisor left running (only processes whose pid and start time match)."""
    left = leftover_processes(state)
    _terminate(left)
    return left


def _terminate(processes: list[ProcessState]) -> None:
    """SIGTERM recorded processes (they drain), SIGKILL after 10 s."""
    procs = []
    for p in processes:
        assert p.pid is not None
        try:
            procs.append(psutil.Process(p.pid))
        except psutil.NoSuchProcess:
            continue
    P.terminate(procs, 10.0)


def read_state(run_dir: Path) -> tuple[RunDir, FleetState]:
    """The run directory and its state; FleetError when no fleet was started there."""
    run = RunDir(run_dir.resolve())
    state = load_state(run)
    if state is None:
        raise FleetError(f"no fleet state in {run.root}", hint="start one with `inferpack up`")
    return run, state


@dataclass(frozen=True)
class ProcessRow:
    """One line of `inferpack status`."""

    name: str
    role: str
    pid: int | None
    port: int | None
    models: list[str]
    status: str
    alive: bool
    ready: bool
    rss_mb: float | None
    requests: float | None
    restarts: int
    adopted: bool = False  # taken over from a supervisor that died (fleet.adoption)


def runner_of(run: RunDir) -> ProcessRunner:
    """The runner a run directory's fleet was started with (host processes when it has no launch spec)."""
    try:
        spec = load_launch(run)
    except ConfigError:
        return HostRunner()
    return launch_runner(run, spec)


def status_rows(
    state: FleetState, runner: ProcessRunner | None = None, metrics_token: str | None = None
) -> list[ProcessRow]:
    """Live facts about every process: alive (pid and start time match), ready (probe), RSS (of the
    server itself, inside its container under a container runtime), requests (scraped with
    `metrics_token` where the fleet's auth closes /metrics)."""
    runner = runner if runner is not None else HostRunner()
    rows = []
    for p in [*state.servers, state.router]:
        alive = is_alive(p.pid, p.create_time)
        rss = runner.memory_mb(p.name, p.pid) if alive else None
        ready = alive and p.url is not None and P.probe_ready(p.url)
        metric = "inferpack_router_requests_total" if p.role == "router" else "inferpack_requests_total"
        requests = P.scrape_requests(p.url, metric, token=metrics_token) if ready and p.url else None
        rows.append(
            ProcessRow(
                p.name,
                p.role,
                p.pid,
                p.port,
                p.models,
                p.status,
                alive,
                ready,
                rss,
                requests,
                p.restarts,
                p.adopted,
            )
        )
    return rows


def down(run_dir: Path, timeout_s: float | None = None) -> tuple[FleetState, list[ProcessState]]:
    """Stop the fleet: SIGTERM the supervisor (it drains the router and servers, then kills stragglers),
    wait for it; if it is gone or stuck, stop the recorded processes directly. Returns the final state and
    the processes that had to be stopped here (leftovers)."""
    read_state(run_dir)  # no fleet there: say so (and create nothing)
    with run_lock(run_dir.resolve()):
        return _down(run_dir, timeout_s)


def _down(run_dir: Path, timeout_s: float | None) -> tuple[FleetState, list[ProcessState]]:
    run, state = read_state(run_dir)
    sup = state.supervisor
    wait_s = timeout_s if timeout_s is not None else _stop_timeout(run) * 2 + 15
    if is_alive(sup.pid, sup.create_time):
        assert sup.pid is not None
        proc = psutil.Process(sup.pid)
        proc.terminate()
        try:
            proc.wait(wait_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    final = load_state(run) or state
    left = cleanup_stale(final)
    # Containers are found by their names, not pids: what a crash left (the supervisor never closed).
    removed = set(runner_of(run).cleanup())
    left += [p for p in final.processes() if p not in left and any(n.endswith(f"-{p.name}") for n in removed)]
    if final.phase != "stopped":
        final.phase = "stopped"
        final.message = "stopped by `inferpack down` (supervisor was not running)"
        for p in final.processes():
            p.status, p.pid, p.create_time = "stopped", None, None
        save_state(run, final)
    journal.retire(run)  # nothing is between two placements any more
    return final, left


def interrupted_change(run_dir: Path) -> tuple[journal.ReconcileJournal, bool] | None:
    """The latest re-plan of the run directory when it is half-done or in progress, with whether its
    supervisor is alive; None otherwise."""
    run = RunDir(run_dir.resolve())
    found = journal.load_journal(run)
    state = load_state(run)
    if found is None or state is None:
        return None
    alive = state.phase != "stopped" and not is_stale(state)
    if found.half_done or (found.status == "running" and alive):
        return found, alive
    return None


def resume_plan(run_dir: Path) -> Path | None:
    """The target plan of a re-plan its supervisor's crash cut short, when the fleet is not running: what
    `inferpack up` without `--plan` starts the fleet on."""
    found = interrupted_change(run_dir)
    target = journal.target_file(RunDir(run_dir.resolve()))
    if found is None or found[1] or found[0].status != "running" or not target.is_file():
        return None
    return target


def _stop_timeout(run: RunDir) -> float:
    try:
        return load_launch(run).stop_timeout_s
    except ConfigError:
        return 20.0


def log_files(run: RunDir, state: FleetState, name: str | None) -> list[tuple[str, Path]]:
    """(process name, log path) of one process, or of all of them (supervisor, router, servers)."""
    names = ["supervisor", "router", *(s.name for s in state.servers)]
    if name is not None:
        if name not in names:
            raise ConfigError(f"no process named {name!r}", hint=f"one of {', '.join(names)}")
        names = [name]
    return [(n, run.log_path(n)) for n in names]


def follow(paths: list[tuple[str, Path]], stop: Callable[[], bool]) -> Iterator[tuple[str, str]]:
    """Yield (process name, new line) as the log files grow, until `stop()` is true. Lines count from the
    moment of this call (not of the first `next`). A restarted process appends to its file, so offsets only
    grow; a truncated file is read again from its start; a partial last line waits for its newline."""
    offsets = {p: (p.stat().st_size if p.exists() else 0) for _, p in paths}
    return _follow(paths, offsets, stop)


def _follow(
    paths: list[tuple[str, Path]], offsets: dict[Path, int], stop: Callable[[], bool]
) -> Iterator[tuple[str, str]]:
    partial = dict.fromkeys(offsets, "")
    while not stop():
        quiet = True
        for name, path in paths:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offsets[path]:
                offsets[path] = 0
            if size == offsets[path]:
                continue
            quiet = False
            with path.open("rb") as f:
                f.seek(offsets[path])
                data = f.read()
            offsets[path] += len(data)
            text = partial[path] + data.decode("utf-8", "replace")
            *lines, partial[path] = text.split("\n")
            for line in lines:
                yield name, line
        if quiet:
            time.sleep(0.25)
