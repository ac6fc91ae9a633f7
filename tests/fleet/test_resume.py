"""A re-plan cut short between phases (the interruption injected through the fleet-actions dependency)
leaves a journal saying how far it went; `inferpack up --plan` again converges from what the servers
actually hold, and every model keeps a routed ready copy throughout both runs. A supervisor that died
mid-change is reported and its target is what the next `up` starts on."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.errors import FleetError
from inferpack.fleet import journal, ops
from inferpack.fleet.apply import ChangeApplier
from inferpack.fleet.change import ChangeRequest, new_request
from inferpack.fleet.reconcile import Action, Holdings, LoadModel, Route, StartServer, StopServer
from inferpack.fleet.state import RunDir, save_state
from inferpack.fleet.supervisor import LaunchSpec, ServerLaunch, Supervisor
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan, save_plan
from tests.fleet.test_reconcile import MODELS, World, check_invariants

OLD: Holdings = {"s0": ["m0", "m1"], "s1": ["m2", "m3"], "s3": ["m4", "m5"]}
NEW: Holdings = {"s1": ["m0", "m2"], "s2": ["m1", "m3"], "s3": ["m4", "m5"]}
assert set(MODELS) == {m for ms in OLD.values() for m in ms}


class SupervisorDied(BaseException):
    """Stands for SIGKILL: nothing in the supervisor catches it, so nothing after it runs."""


class FakeRunner:
    """Starts nothing: the simulated actions own the world."""

    cli = ("inferpack",)
    bind_host = "127.0.0.1"


class QuietSupervisor(Supervisor):
    """A supervisor whose processes are simulated: a tick has nothing to watch."""

    def tick(self, now: float) -> bool:
        return False


class SimActions:
    """The actions dependency of `ChangeApplier`: each action changes the simulated `World` at once,
    checking the invariants after each; `fail_when` makes an action fail (FleetError, the change stops)
    or raise SupervisorDied (the process is gone)."""

    def __init__(
        self, sup: Supervisor, world: World, fail_when: Callable[[Action], Exception | None]
    ) -> None:
        self.sup, self.world, self.fail_when = sup, world, fail_when
        self.plans: list[Plan] = []
        self.restarting = False
        self.done: list[Action] = []

    def begin(self, action: Action) -> Future[None]:
        failure = self.fail_when(action)
        if isinstance(failure, SupervisorDied):
            raise failure
        if failure is not None:
            raise failure
        if isinstance(action, LoadModel):
            assert action.model not in self.world.ready[action.server], f"loaded twice: {action}"
        self.world.apply(action)
        check_invariants(self.world, OLD, NEW)
        if isinstance(action, StartServer):
            launch = next(s for s in self.sup.spec.servers if s.name == action.server)
            child = self.sup.server_child(launch)
            child.record.status = "ready"
            self.sup.servers.append(child)
            self.sup.state.servers.append(child.record)
        elif isinstance(action, StopServer):
            child = next(c for c in self.sup.servers if c.record.name == action.server)
            self.sup.servers.remove(child)
            self.sup.state.servers.remove(child.record)
        self.done.append(action)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def held_models(self, name: str) -> list[str] | None:
        return sorted(self.world.ready[name]) if name in self.world.ready else None

    def route_now(self, holdings: Holdings) -> None:
        self.world.apply(Route(tuple((s, tuple(m)) for s, m in holdings.items() if m), "now"))
        check_invariants(self.world, OLD, NEW)


def _plan(holdings: Holdings) -> Plan:
    servers = [ServerPlan(name=s, models=list(m)) for s, m in holdings.items()]
    return Plan(
        created_by="test",
        repository="repo",
        groups=[ServerGroup(name="local", resources=Resources(cpu=1, memory_mb=500), servers=servers)],
    )


def _spec(holdings: Holdings) -> LaunchSpec:
    ports = {"s0": 9100, "s1": 9101, "s2": 9102, "s3": 9103}
    return LaunchSpec(
        repository="repo",
        servers=[ServerLaunch(name=s, port=ports[s], models=list(m), threads=1) for s, m in holdings.items()],
        router_port=9000,
    )


def _request() -> ChangeRequest:
    return new_request("plan", launch=_spec(NEW), plan=_plan(NEW))


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[QuietSupervisor, World]:
    """A running fleet on OLD: its supervisor (processes simulated) and the world it acts on."""
    run = RunDir(tmp_path)
    run.prepare()
    save_plan(_plan(OLD), run.plan_file)
    sup = QuietSupervisor(run, _spec(OLD), runner=FakeRunner())  # type: ignore[arg-type]
    for child in sup.servers:
        child.record.status = "ready"
    sup.state.phase = "running"
    return sup, World.running(OLD)


def _converged(world: World) -> None:
    assert {s: m for s, m in world.ready.items() if m} == {s: set(m) for s, m in NEW.items()}
    for model in MODELS:
        assert world.routes[model] == {s for s, m in NEW.items() if model in m}


def test_a_failed_route_leaves_a_journal_and_the_rerun_converges(
    fleet: tuple[QuietSupervisor, World],
) -> None:
    sup, world = fleet
    run = sup.run

    def route_fails(action: Action) -> Exception | None:
        return FleetError("the router did not apply it") if isinstance(action, Route) else None

    first = ChangeApplier(sup, actions=SimActions(sup, world, route_fails))  # type: ignore[arg-type]
    report = first.apply(_request())
    assert report.status == "failed"
    record = journal.load_journal(run)
    assert record is not None and record.status == "failed" and record.phases_done == 1
    assert record.half_done and record.target == NEW
    found = ops.interrupted_change(run.root)
    assert found is not None and found[1]  # the supervisor is alive
    text = journal.explain(run, found[0], supervisor_alive=True)
    assert "applied: 1 x start server, 1 x load copy" in text
    assert f"inferpack up --plan {journal.target_file(run)}" in text
    assert journal.target_file(run).is_file()

    # the records still say OLD; s2 runs and s1 holds m0 already: the re-run loads nothing twice
    again = SimActions(sup, world, lambda _a: None)
    report = ChangeApplier(sup, actions=again).apply(_request())  # type: ignore[arg-type]
    assert report.status == "done", report.message
    assert not any(isinstance(a, StartServer | LoadModel) for a in again.done)
    _converged(world)
    record = journal.load_journal(run)
    assert record is not None and record.status == "done" and not record.half_done
    assert ops.interrupted_change(run.root) is None


@pytest.mark.parametrize("phase", ["route", "cleanup"])
def test_a_supervisor_killed_between_phases_is_reported_and_the_rerun_converges(
    fleet: tuple[QuietSupervisor, World], phase: str
) -> None:
    sup, world = fleet
    run = sup.run
    kind = Route if phase == "route" else StopServer

    def dies(action: Action) -> Exception | None:
        return SupervisorDied() if isinstance(action, kind) else None

    with pytest.raises(SupervisorDied):
        ChangeApplier(sup, actions=SimActions(sup, world, dies)).apply(_request())  # type: ignore[arg-type]
    record = journal.load_journal(run)
    assert record is not None and record.status == "running"
    assert record.phases_done == (1 if phase == "route" else 3)
    assert len(record.phases) == 4

    # seen from another shell once the supervisor is gone: stale state, a re-plan cut short
    dead = sup.state.model_copy(deep=True)
    dead.supervisor.pid = None
    save_state(run, dead)
    found = ops.interrupted_change(run.root)
    assert found is not None and not found[1]
    assert "was cut short" in journal.explain(run, found[0], supervisor_alive=False)
    assert ops.resume_plan(run.root) == journal.target_file(run)
    if phase == "cleanup":  # what an operator sees
        shown = CliRunner().invoke(app, ["status", "--run-dir", str(run.root)], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert "not applied: 1 x unload copy, 1 x stop server" in shown.output
        assert f"inferpack up --run-dir {run.root}" in shown.output

    # a supervisor that still has the servers (records stale) finishes it from what they hold
    save_state(run, sup.state)
    report = ChangeApplier(sup, actions=SimActions(sup, world, lambda _a: None)).apply(_request())  # type: ignore[arg-type]
    assert report.status == "done", report.message
    _converged(world)


def test_a_fresh_start_or_down_retires_the_journal(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.prepare()
    journal.begin(run, "abc", _plan(NEW), OLD, NEW, [[StartServer("s2", ("m1",))]])
    assert journal.load_journal(run) is not None
    journal.retire(run)
    assert journal.load_journal(run) is None
    assert journal.previous_file(run).is_file()
