"""The pure re-plan logic (`fleet.reconcile`): for random old and new placements, simulate the actions
(each phase's actions in any order) and check after every single action that every model of both plans
has a ready copy the router routes to, that the router only routes to ready copies, that no model has
fewer routed ready copies than min(old, new), and that the end state is the new placement."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferpack.fleet.reconcile import (
    Action,
    Holdings,
    LoadModel,
    Phase,
    Route,
    StartServer,
    StopServer,
    UnloadModel,
    dark_models,
    diff,
    plan_for,
    rolling_restart,
    undo,
)
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan

SERVERS = [f"s{i}" for i in range(5)]
MODELS = [f"m{i}" for i in range(6)]


@dataclass
class World:
    """What is true at one moment: which copies are ready on running servers, what the router routes."""

    ready: dict[str, set[str]]  # running server -> its ready copies
    routes: dict[str, set[str]]  # model -> servers the router sends it to
    log: list[str] = field(default_factory=list)
    dark_ok: set[str] = field(default_factory=set)  # models allowed to stay routed to a stopped server

    @classmethod
    def running(cls, holdings: Holdings) -> World:
        ready = {s: set(m) for s, m in holdings.items() if m}
        routes: dict[str, set[str]] = {}
        for s, models in ready.items():
            for m in models:
                routes.setdefault(m, set()).add(s)
        return cls(ready, routes)

    def apply(self, action: Action) -> None:
        """What an action does once it is done (the applier waits for exactly that)."""
        self.log.append(repr(action))
        if isinstance(action, StartServer):
            assert action.server not in self.ready, f"{action.server} started twice"
            self.ready[action.server] = set(action.models)
        elif isinstance(action, LoadModel):
            self.ready[action.server].add(action.model)
        elif isinstance(action, Route):
            self.routes = {}
            for s, models in action.holdings:
                for m in models:
                    self.routes.setdefault(m, set()).add(s)
        elif isinstance(action, UnloadModel):
            # the copy stops serving as the unload begins: it must not be routed to by then
            assert action.server not in self.routes.get(action.model, set()), (
                f"unloads a routed copy: {action}"
            )
            self.ready[action.server].discard(action.model)
        elif isinstance(action, StopServer):
            routed = [m for m, s in self.routes.items() if action.server in s and m not in self.dark_ok]
            assert not routed, f"stops a server still routed to for {routed}: {action}"
            del self.ready[action.server]

    def routed_ready(self, model: str) -> int:
        return sum(1 for s in self.routes.get(model, set()) if model in self.ready.get(s, set()))


def _copies(holdings: Holdings, model: str) -> int:
    return sum(1 for models in holdings.values() if model in models)


def check_invariants(world: World, old: Holdings, new: Holdings) -> None:
    for model, servers in world.routes.items():
        for s in servers:
            assert model in world.ready.get(s, set()), f"routes {model} to {s}, not ready there: {world.log}"
    for model in set(MODELS):
        floor = min(_copies(old, model), _copies(new, model))
        if floor:
            assert world.routed_ready(model) >= floor, f"{model} below {floor} copies after {world.log}"


holdings_strategy = st.dictionaries(
    st.sampled_from(SERVERS),
    st.lists(st.sampled_from(MODELS), unique=True, max_size=len(MODELS)),
    max_size=len(SERVERS),
)


def _simulate(phases: list[Phase], old: Holdings, new: Holdings, data: st.DataObject) -> World:
    world = World.running(old)
    check_invariants(world, old, new)
    for phase in phases:
        order = data.draw(st.permutations(phase))  # actions of one phase run at once: any order
        for action in order:
            world.apply(action)
            check_invariants(world, old, new)
    return world


@settings(max_examples=400, deadline=None)
@given(old=holdings_strategy, new=holdings_strategy, data=st.data())
def test_diff_keeps_every_model_served_at_every_step(
    old: Holdings, new: Holdings, data: st.DataObject
) -> None:
    phases = diff(old, new)
    world = _simulate(phases, old, new, data)
    assert world.ready == {s: set(m) for s, m in new.items() if m}
    expected = World.running(new).routes
    assert world.routes == expected


@settings(max_examples=200, deadline=None)
@given(old=holdings_strategy, new=holdings_strategy, data=st.data())
def test_undo_of_the_first_phase_restores_the_old_fleet(
    old: Holdings, new: Holdings, data: st.DataObject
) -> None:
    """A failure anywhere in phase 1 (after any subset of it finished) is undone back to `old`."""
    phases = diff(old, new)
    if not phases or not all(isinstance(a, StartServer | LoadModel) for a in phases[0]):
        return
    finished = data.draw(st.lists(st.sampled_from(phases[0]), unique=True)) if phases[0] else []
    world = World.running(old)
    for action in finished:
        world.apply(action)
        check_invariants(world, old, new)
    for action in undo(finished):
        world.apply(action)
        check_invariants(world, old, new)
    assert world.ready == {s: set(m) for s, m in old.items() if m}
    assert world.routes == World.running(old).routes


def test_phase_order_and_contents() -> None:
    old = {"a": ["m1", "m2"], "b": ["m2", "m3"]}
    new = {"a": ["m1", "m3"], "c": ["m2", "m3"]}
    phases = diff(old, new)
    assert [[a.kind for a in p] for p in phases] == [
        ["start", "load"],
        ["route"],
        ["route"],
        ["unload", "stop"],
    ]
    assert phases[0] == [StartServer("c", ("m2", "m3")), LoadModel("a", "m3")]
    first, second = phases[1][0], phases[2][0]
    assert isinstance(first, Route) and isinstance(second, Route)
    assert first.as_dict() == {"a": ["m1", "m2", "m3"], "b": ["m2", "m3"], "c": ["m2", "m3"]}
    assert second.as_dict() == {"a": ["m1", "m3"], "c": ["m2", "m3"]}
    assert phases[3] == [UnloadModel("a", "m2"), StopServer("b")]


def test_same_placement_needs_nothing_and_empty_servers_count_as_absent() -> None:
    assert diff({"a": ["m1"]}, {"a": ["m1"]}) == []
    assert diff({"a": ["m1"], "b": []}, {"a": ["m1"]}) == []
    # a server that stays but holds nothing afterwards is stopped, not kept idle
    phases = diff({"a": ["m1"], "b": ["m1"]}, {"a": ["m1"], "b": []})
    assert phases[-1] == [StopServer("b")]


@settings(max_examples=200, deadline=None)
@given(holdings=holdings_strategy, data=st.data())
def test_rolling_restart_keeps_models_with_another_copy_served(
    holdings: Holdings, data: st.DataObject
) -> None:
    servers = [s for s, m in holdings.items() if m]
    order = data.draw(st.permutations(servers))
    world = World.running(holdings)
    # restarting server s only darkens the models it alone holds, and only while it restarts
    for server in order:
        dark = set(dark_models(holdings, server))
        world.dark_ok = dark  # --force: their only copy restarts
        for phase in rolling_restart(holdings, [server]):
            for action in phase:
                world.apply(action)
                for m in {m for ms in holdings.values() for m in ms} - dark:
                    assert world.routed_ready(m) >= 1, f"{m} dark while {server} restarts: {world.log}"
    assert world.ready == {s: set(m) for s, m in holdings.items() if m}
    assert world.routes == World.running(holdings).routes


def test_rolling_restart_keeps_only_copies_routed_so_they_answer_unavailable() -> None:
    phases = rolling_restart({"a": ["m1", "m2"], "b": ["m1"]}, ["a"])
    around = phases[0][0]
    assert isinstance(around, Route)
    assert around.as_dict() == {"a": ["m2"], "b": ["m1"]}  # m2 has no other copy: still placed on a
    assert [p[0].kind for p in phases] == ["route", "stop", "start", "route"]
    assert dark_models({"a": ["m1", "m2"], "b": ["m1"]}, "a") == ["m2"]


def _group(name: str, servers: list[ServerPlan], cpu: float = 1) -> ServerGroup:
    return ServerGroup(name=name, resources=Resources(cpu=cpu, memory_mb=1000), servers=servers)


def test_plan_for_keeps_each_servers_group_and_the_new_plans_fields() -> None:
    old = Plan(created_by="old", groups=[_group("g1", [ServerPlan(name="a", models=["m1"])])])
    new = Plan(
        created_by="new",
        groups=[_group("g2", [ServerPlan(name="b", models=["m1"])], cpu=2)],
        metadata={"why": "test"},
    )
    plan = plan_for({"b": ["m1", "m2"], "a": ["m1"], "c": []}, [new, old])
    assert plan.created_by == "new" and plan.metadata == {"why": "test"}
    assert [(g.name, [s.name for s in g.servers]) for g in plan.groups] == [("g2", ["b"]), ("g1", ["a"])]
    assert plan.placement() == {"m1": ["b", "a"], "m2": ["b"]}
    with pytest.raises(ValueError, match="none of the plans"):
        plan_for({"z": ["m1"]}, [new, old])
