"""Adopting a dead supervisor's processes, without a fleet: the adopted-process handle on real sleeper
processes, which leftovers a launch adopts, the supervisor taking over, watching, restarting and stopping
them tick by tick, and when `up` adopts rather than starts afresh (`ops.adoptable`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferpack.errors import FleetError
from inferpack.fleet import journal, ops
from inferpack.fleet.adoption import UNKNOWN_EXIT, AdoptedProcess, sort_leftovers
from inferpack.fleet.runners import HostRunner
from inferpack.fleet.state import FleetState, ProcessState, RunDir, save_state, start_time
from inferpack.fleet.supervisor import LaunchSpec, ServerLaunch, Supervisor, load_launch, supervise
from inferpack.processes import free_port
from inferpack.settings import Settings, load_settings
from tests.fleet.test_liveness import SLEEPER, _stopping, _tick_until


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Live processes standing for a dead supervisor's servers; all reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _sleeper(procs: list[subprocess.Popen[bytes]], on_term: Path | None = None) -> subprocess.Popen[bytes]:
    """A live process; with `on_term`, one that writes that file when SIGTERMed (drains), then exits."""
    cmd = SLEEPER
    if on_term is not None:
        cmd = [
            sys.executable,
            "-c",
            "import pathlib, signal, sys, time\n"
            f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(on_term)!r}).touch(), sys.exit(0)))\n"
            "time.sleep(120)",
        ]
    proc = subprocess.Popen(cmd)
    procs.append(proc)
    return proc


def _handles_term(pid: int) -> bool:
    """True once process `pid` catches SIGTERM (its signal-catch mask has bit 15)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    return False


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _record(name: str, pid: int | None, port: int, models: list[str] | None = None) -> ProcessState:
    role = "router" if name == "router" else "server"
    created = start_time(pid) if pid is not None else None
    return ProcessState(
        name=name, role=role, pid=pid, create_time=created, port=port, models=models or [], status="ready"
    )


def _stale(router: ProcessState, *servers: ProcessState) -> FleetState:
    return FleetState(
        phase="running",
        supervisor=ProcessState(name="supervisor", role="supervisor", pid=_dead_pid(), create_time=1.0),
        router=router,
        servers=list(servers),
    )


# --- the handle --------------------------------------------------------------------------------------------
def test_an_adopted_process_is_watched_by_pid_and_start_time(sleepers: list[subprocess.Popen[bytes]]) -> None:
    proc = _sleeper(sleepers)
    adopted = AdoptedProcess(proc.pid, start_time(proc.pid))
    assert adopted.poll() is None and adopted.returncode is None
    with pytest.raises(subprocess.TimeoutExpired):
        adopted.wait(0.05)
    adopted.kill()
    # a zombie (it is this test's child, not yet reaped) counts as gone, as it does for init's orphans
    assert adopted.wait(10) == UNKNOWN_EXIT and adopted.poll() == UNKNOWN_EXIT
    assert start_time(proc.pid) is None  # gone (psutil's wait reaped this test's child)


def test_a_reused_pid_is_never_signalled(sleepers: list[subprocess.Popen[bytes]]) -> None:
    proc = _sleeper(sleepers)
    created = start_time(proc.pid)
    assert created is not None
    stranger = AdoptedProcess(proc.pid, created - 100.0)  # the recorded process was another one
    assert stranger.poll() == UNKNOWN_EXIT
    stranger.kill()
    stranger.send_signal(15)
    assert proc.poll() is None


def test_leftovers_are_adopted_only_as_launched() -> None:
    me = os.getpid()  # alive: stands for every live leftover
    state = _stale(
        _record("router", me, 8100),
        _record("server-0", me, 8101, ["m0"]),
        _record("server-1", me, 8102, ["m1"]),  # holds another model than the launch asks
        _record("server-2", me, 8109, ["m2"]),  # on another port
        _record("server-3", _dead_pid(), 8104, ["m3"]),  # dead: started again, neither adopted nor stopped
        _record("server-4", me, 8105, ["m4"]),  # not in the launch
    )
    state.servers.append(ProcessState(name="server-5", role="server", pid=me, port=8106, models=["m5"]))
    launch = {f"server-{i}": (8101 + i, [f"m{i}"]) for i in range(4)}
    launch["server-1"] = (8102, ["m1", "m9"])
    launch["server-5"] = (8106, ["m5"])
    live = HostRunner().leftovers(state)
    assert [p.name for p in live] == ["router", "server-0", "server-1", "server-2", "server-4", "server-5"]
    found = sort_leftovers(live, 8100, launch)
    assert [p.name for p in found.adopt] == ["router", "server-0"]
    # server-5 has no start time: it cannot be told from a process that reused its pid
    assert [p.name for p in found.strays] == ["server-1", "server-2", "server-4", "server-5"]
    assert next(p.name for p in sort_leftovers(live, 9999, launch).strays) == "router"


# --- the supervisor ----------------------------------------------------------------------------------------
# Ports nothing listens on (readiness probes are refused at once): the fixed defaults might be in use.
ROUTER, SERVER = free_port(), free_port()


def _spec(tmp_path: Path, **fields: object) -> LaunchSpec:
    return LaunchSpec.model_validate(
        {
            "repository": str(tmp_path),
            "servers": [ServerLaunch(name="server-0", port=SERVER, models=["m0"], threads=1)],
            "router_port": ROUTER,
            "restart_backoff_s": 0.05,
            **fields,
        }
    )


def test_the_supervisor_adopts_watches_and_restarts_a_dead_supervisors_server(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    server, router = _sleeper(sleepers), _sleeper(sleepers)
    old = _record("server-0", server.pid, SERVER, ["m0"])
    old.restarts, old.last_restart_reason = 2, "exited with status 1"
    previous = _stale(_record("router", router.pid, ROUTER + 1), old)  # the router listens elsewhere now
    sup = Supervisor(RunDir(tmp_path / "run"), _spec(tmp_path), HostRunner(), previous=previous)
    child = sup.servers[0]
    child.cmd = SLEEPER
    with _stopping(sup):
        assert sup.adopt() == [child]
        rec = child.record
        assert rec.adopted and rec.pid == server.pid and rec.create_time == old.create_time
        assert (
            rec.status == "starting"
            and rec.restarts == 2
            and rec.last_restart_reason == old.last_restart_reason
        )
        assert sup.router.proc is None and sup.router.record.pid is None  # not adopted: started anew
        assert isinstance(child.proc, AdoptedProcess)
        assert not sup.tick(0.0) and rec.status == "starting"  # alive: nothing to do (not ready yet)

        server.kill()
        server.wait()  # as init would reap the orphan
        _tick_until(sup, lambda: rec.status == "restarting")
        assert rec.last_exit is None and rec.pid is None
        assert rec.last_restart_reason == "exited (adopted, so its exit status is unknown)"
        _tick_until(sup, lambda: rec.restarts == 3)
        assert isinstance(child.proc, subprocess.Popen) and child.proc.poll() is None
        assert not rec.adopted and rec.pid == child.proc.pid


def test_stopping_the_fleet_stops_adopted_processes(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    server, router = (
        _sleeper(sleepers, tmp_path / "server.term"),
        _sleeper(sleepers, tmp_path / "router.term"),
    )
    _wait_for_handler = time.monotonic() + 30
    while not all(_handles_term(p.pid) for p in (server, router)):  # the handler is in place: no race
        assert time.monotonic() < _wait_for_handler
        time.sleep(0.05)
    previous = _stale(_record("router", router.pid, ROUTER), _record("server-0", server.pid, SERVER, ["m0"]))
    sup = Supervisor(RunDir(tmp_path / "run"), _spec(tmp_path, stop_timeout_s=5.0), HostRunner(), previous)
    assert [c.record.name for c in sup.adopt()] == ["server-0", "router"]
    sup.stop_fleet()
    assert (tmp_path / "server.term").is_file() and (tmp_path / "router.term").is_file()  # SIGTERM: drained
    assert start_time(server.pid) is None and start_time(router.pid) is None
    assert all(c.record.status == "stopped" and c.record.pid is None for c in sup._children())
    assert sup.state.phase == "stopped"


# --- when `up` adopts --------------------------------------------------------------------------------------
def _settings(tmp_path: Path, **fleet: object) -> Settings:
    return load_settings(
        None,
        {
            "fleet": {
                "run_dir": tmp_path / "run",
                "base_port": 0,
                "router_port": 0,
                "threads_per_server": 1,
                **fleet,
            }
        },
    )


def _crashed_fleet(
    demo_repo: Path, tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> tuple[RunDir, LaunchSpec]:
    """A run directory prepared for the simple 2-server plan whose supervisor is dead, server-0 alive."""
    run, spec = ops.prepare(_settings(tmp_path), ops.local_plan(demo_repo, 2, 1), None)
    s0, s1 = spec.servers
    server = _sleeper(sleepers)
    save_state(
        run,
        _stale(
            _record("router", None, spec.router_port),
            _record("server-0", server.pid, s0.port, s0.models),
            _record("server-1", None, s1.port, s1.models),
        ),
    )
    return run, spec


def test_up_adopts_only_the_recorded_launch(
    demo_repo: Path, tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    run, spec = _crashed_fleet(demo_repo, tmp_path, sleepers)
    same = ops.local_plan(demo_repo, 2, 1)
    found = ops.adoptable(_settings(tmp_path), same, None, run)
    assert found is not None and found[1]
    assert [p.name for p in found[0].adopt] == ["server-0"] and found[0].strays == []
    # another plan: not the same launch (`up` then starts afresh, stopping the leftovers, as before)
    other = ops.adoptable(_settings(tmp_path), ops.local_plan(demo_repo, 3, 1), None, run)
    assert other is not None and not other[1]
    assert ops.adoptable(_settings(tmp_path, threads_per_server=2), same, None, run) == (found[0], False)
    # the same ports asked for explicitly adopt; other ports do not
    explicit = _settings(tmp_path, router_port=spec.router_port)
    assert ops.adoptable(explicit, same, None, run) == found
    assert ops.adoptable(_settings(tmp_path, router_port=spec.router_port + 1), same, None, run) is None
    assert ops.adoptable(_settings(tmp_path, base_port=1), same, None, run) is None
    assert load_launch(run) == spec  # deciding writes nothing
    # `up` without a plan keeps the fleet's own (rather than re-plan it to the simple plan)
    assert ops.adoptable_plan(_settings(tmp_path)) == run.plan_file
    assert ops.adoptable_plan(_settings(tmp_path, router_port=spec.router_port + 1)) is None


def test_up_does_not_adopt_a_fleet_cut_short_mid_replan_or_with_a_live_supervisor(
    demo_repo: Path, tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    run, _ = _crashed_fleet(demo_repo, tmp_path, sleepers)
    plan = ops.local_plan(demo_repo, 2, 1)
    record = journal.ReconcileJournal(id="x", started_at=0.0, old={}, target={}, phases=["a", "b"])
    journal.save(run, record)
    assert ops.adoptable(_settings(tmp_path), plan, None, run) is None  # `up` resumes on its target
    assert ops.adoptable_plan(_settings(tmp_path)) is None
    journal.retire(run)
    assert ops.adoptable(_settings(tmp_path), plan, None, run) is not None

    state = ops.read_state(run.root)[1]
    me = os.getpid()
    state.supervisor.pid, state.supervisor.create_time = me, start_time(me)
    save_state(run, state)
    assert ops.adoptable(_settings(tmp_path), plan, None, run) is None  # not stale: nothing to adopt


def test_an_adopting_supervisor_refuses_a_fleet_whose_supervisor_lives(tmp_path: Path) -> None:
    me = os.getpid()
    state = _stale(_record("router", me, ROUTER), _record("server-0", me, SERVER, ["m0"]))
    state.supervisor.pid, state.supervisor.create_time = me, start_time(me)
    save_state(RunDir(tmp_path), state)
    with pytest.raises(FleetError, match="has a live supervisor"):
        supervise(tmp_path, adopt=True)
