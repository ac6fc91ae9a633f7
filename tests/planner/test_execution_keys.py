"""The planner chooses each server's execution key (threads, dtype, batch size, engine) by cost.

A key sets both a model's capacity and its memory: an ONNX Runtime session holds its own fp32 copy of
the weights, eager bf16 halves them. One instance type "box.2xlarge" (8 cores, 16 GiB, 1 USD/h) and a MiniLM
class with three points: eager fp32 35 ms (40 MB), eager bf16 21 ms (25 MB) and onnxruntime fp32 10 ms
(the session's memory, derived from the class's parameters: ~89 MB). ONNX Runtime has the most capacity;
eager bf16 the least memory; eager fp32 is dominated by bf16 (slower and bigger) and never offered.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from inferpack.plan import Plan, ServerGroup, load_plan, save_plan
from inferpack.planner.catalog import Catalog, InstanceType
from inferpack.planner.packing import Server, check_packing
from inferpack.planner.problem import (
    ModelDemand,
    PlanOptions,
    Problem,
    build_problem,
    type_variants,
    usable_memory_mb,
)
from inferpack.planner.profiles import ModelProfile, OperatingPoint, ProfileSet, load_profiles
from inferpack.planner.solve import Method, Solution, solve, to_plan

BOX = InstanceType(name="box.2xlarge", vcpus=8, threads_per_core=1, memory_mb=16384, price_per_hour=1.0)
CLASS = "minilm-l6"
SOURCE = "measured: test figures"
FP32 = OperatingPoint(threads=1, dtype="fp32", latency_ms=35.0, source=SOURCE)
BF16 = OperatingPoint(threads=1, dtype="bf16", latency_ms=21.0, source=SOURCE)
ORT = OperatingPoint(threads=1, dtype="fp32", engine="onnxruntime", latency_ms=10.0, source=SOURCE)


def _profile(points: list[OperatingPoint], model_class: str = CLASS) -> ModelProfile:
    base = load_profiles().lookup("minilm-l6", "local")
    assert base is not None
    return base.model_copy(
        update={
            "model_class": model_class,
            "instance_types": ["box.*"],
            "points": points,
            "resident_mb": 40.0,
            "memory_by_dtype": {"fp32": 40.0, "bf16": 25.0},
            "memory_by_engine": {},
        }
    )


def _profiles(*profiles: ModelProfile) -> ProfileSet:
    minilm = load_profiles().classes["minilm-l6"]
    classes = {p.model_class: minilm.model_copy(update={"name": p.model_class}) for p in profiles}
    return ProfileSet(classes=classes, profiles=list(profiles))


ALL = _profiles(_profile([FP32, BF16, ORT]))
ORT_ONLY = _profiles(_profile([ORT]))  # the capacity-best key alone: what every box ran before


def mixed_plan(method: Method = "auto") -> tuple[Problem, Solution, Plan]:
    """32 hot and 110 cold models (10x the class's memory): 1 onnxruntime + 3 eager bf16 servers."""
    hot = [ModelDemand(f"hot-{i}", 100.0, 40.0, CLASS) for i in range(32)]
    cold = [ModelDemand(f"cold-{i}", 1000.0, 0.0, CLASS) for i in range(110)]
    return _plan(hot + cold, ALL, method)


def _plan(
    models: list[ModelDemand], profiles: ProfileSet, method: Method = "auto", **options: object
) -> tuple[Problem, Solution, Plan]:
    """Plan `models` on box: the problem, the solution and the plan file's content."""
    opts = PlanOptions.model_validate(options)
    problem = build_problem(models, Catalog(instances=[BOX]), profiles, opts)
    solution = solve(problem, method=method, with_naive=False)
    assert check_packing(problem, solution.servers) == []
    return problem, solution, to_plan(problem, solution, opts)


def _engines(groups: list[ServerGroup]) -> set[tuple[str, str]]:
    """(engine, dtype) of every group's execution."""
    return {(g.execution.engine, g.execution.dtype) for g in groups if g.execution is not None}


def _servers_run_one_key(problem: Problem, servers: list[Server]) -> None:
    """Every model on a server is costed at the server's column's key: one key per server."""
    for server in servers:
        keys = {problem.choices[(int(problem.class_index[i]), server.type_index)].key for i in server.models}
        assert keys == {problem.keys[server.type_index]}


def test_dominated_keys_are_not_offered_and_the_capacity_best_comes_first() -> None:
    prof = _profile([FP32, BF16, ORT])
    params = {0: ALL.classes[CLASS].parameters}
    variants = type_variants(BOX, {0: prof}, PlanOptions(), None, params)
    assert [v[0].key for v in variants] == [(1, "fp32", 1, "onnxruntime"), (1, "bf16", 1, "eager")]
    assert variants[0][0].capacity_rps > variants[1][0].capacity_rps
    # fp32 eager is kept where bf16 is not allowed: it is then the smallest footprint on offer
    fp32_only = type_variants(BOX, {0: prof}, PlanOptions(dtypes=["fp32"]), None, params)
    assert [v[0].key[3] for v in fp32_only] == ["onnxruntime", "eager"]


def test_a_key_serving_fewer_classes_is_kept_only_where_it_beats_a_shared_one() -> None:
    """Two classes: bf16 serves both; onnxruntime serves class 0 only, faster (kept: a server of class-0
    models may want it); a 2-thread fp32 point serves class 0 only, slower and bigger than bf16 (dropped)."""
    slow = OperatingPoint(threads=2, dtype="fp32", latency_ms=40.0, source=SOURCE)
    profs = {0: _profile([BF16, ORT, slow]), 1: _profile([BF16], model_class="other")}
    params = {0: ALL.classes[CLASS].parameters, 1: ALL.classes[CLASS].parameters}
    variants = type_variants(BOX, profs, PlanOptions(), None, params)
    assert [(v[0].key, sorted(v)) for v in variants] == [
        ((1, "bf16", 1, "eager"), [0, 1]),
        ((1, "fp32", 1, "onnxruntime"), [0]),
    ]


def test_a_memory_bound_plan_runs_eager_bf16_not_the_capacity_best_onnx_key() -> None:
    """1,000 idle tenants: servers fill by memory, so the key with the smallest model wins, and the plan
    costs what the memory arithmetic says, against the capacity-best key's plan."""
    models = [ModelDemand(f"m{i}", 100.0, 0.01, CLASS) for i in range(1000)]
    _, _, chosen = _plan(models, ALL)
    _, _, capacity_best = _plan(models, ORT_ONLY)
    assert _engines(chosen.groups) == {("eager", "bf16")}
    assert _engines(capacity_best.groups) == {("onnxruntime", "fp32")}

    prof = ALL.profiles[0]
    usable = usable_memory_mb(BOX, PlanOptions()) - prof.server_overhead_mb
    session_mb = prof.resident_for("fp32", "onnxruntime", ALL.classes[CLASS].parameters)
    assert session_mb > 3 * prof.resident_for("bf16")  # ~89 MB per session against 25 MB

    def servers(resident_mb: float) -> int:
        return math.ceil(len(models) / math.floor(usable / resident_mb))

    assert len(chosen.servers()) == servers(25.0) == 2
    assert len(capacity_best.servers()) == servers(session_mb) == 7
    assert chosen.cost_per_hour is not None and capacity_best.cost_per_hour is not None
    saved = capacity_best.cost_per_hour - chosen.cost_per_hour
    assert saved == pytest.approx((servers(session_mb) - servers(25.0)) * BOX.price_per_hour)
    assert all(row["binding"] == "memory" for row in chosen.metadata["groups"])


def test_a_throughput_bound_plan_keeps_the_capacity_best_key() -> None:
    """40 hot models: compute binds, and the fastest key (onnxruntime) needs fewer servers than bf16."""
    models = [ModelDemand(f"m{i}", 100.0, 10.0, CLASS) for i in range(40)]
    _, _, chosen = _plan(models, ALL)
    _, _, bf16 = _plan(models, ALL, dtypes=["bf16"])
    assert _engines(chosen.groups) == {("onnxruntime", "fp32")}
    assert _engines(bf16.groups) == {("eager", "bf16")}
    assert chosen.cost_per_hour is not None and bf16.cost_per_hour is not None
    assert chosen.cost_per_hour < bf16.cost_per_hour
    assert chosen.metadata["groups"][0]["execution"] == "fp32 ort 1t b1"


@pytest.mark.parametrize("method", ["heuristic", "milp"])
def test_hot_models_on_onnx_servers_and_the_cold_tail_on_bf16_servers_of_one_type(
    method: Method, tmp_path: Path
) -> None:
    """Hot and cold together: the cheapest plan runs both keys on the same instance type, on different
    servers (two groups with their own names and executions), cheaper than either key alone."""
    hot = [ModelDemand(f"hot-{i}", 100.0, 40.0, CLASS) for i in range(32)]
    cold = [ModelDemand(f"cold-{i}", 1000.0, 0.0, CLASS) for i in range(110)]  # 10x the class's memory
    problem, solution, plan = _plan(hot + cold, ALL, method)
    _servers_run_one_key(problem, solution.servers)
    assert [g.instance_type for g in plan.groups] == ["box.2xlarge", "box.2xlarge"]
    assert len({g.name for g in plan.groups}) == 2
    assert _engines(plan.groups) == {("onnxruntime", "fp32"), ("eager", "bf16")}
    assert plan.cost_per_hour == pytest.approx(4.0)  # 1 onnxruntime server + 3 bf16 (proven optimal)
    assert solution.optimal
    for alone in (_plan(hot + cold, ALL, method, dtypes=["bf16"])[2], _plan(hot + cold, ORT_ONLY, method)[2]):
        assert (alone.cost_per_hour or 0.0) > 4.0
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    assert load_plan(path).model_dump() == plan.model_dump()


def test_a_server_never_mixes_keys_across_classes() -> None:
    """A second class that has no onnxruntime point: its models never share a server with models costed
    on onnxruntime, and every group's execution is its servers' one key."""
    other = _profile([BF16.model_copy(update={"latency_ms": 30.0})], model_class="other")
    profiles = _profiles(_profile([FP32, BF16, ORT]), other)
    models = [ModelDemand(f"hot-{i}", 100.0, 40.0, CLASS) for i in range(32)]
    models += [ModelDemand(f"other-{i}", 100.0, 5.0 if i < 8 else 0.0, "other") for i in range(600)]
    problem, solution, plan = _plan(models, profiles)
    _servers_run_one_key(problem, solution.servers)
    # the key both classes run comes first (what every box ran before); onnxruntime is offered too
    assert problem.keys == [(1, "bf16", 1, "eager"), (1, "fp32", 1, "onnxruntime")]
    assert _engines(plan.groups) == {("eager", "bf16"), ("onnxruntime", "fp32")}
    for group in plan.groups:
        assert group.execution is not None
        others = [m for s in group.servers for m in s.models if m.startswith("other-")]
        if group.execution.engine == "onnxruntime":
            assert others == []
        else:
            assert group.execution.dtype == "bf16"
    placed = [
        m
        for g in plan.groups
        if g.execution and g.execution.engine == "eager"
        for s in g.servers
        for m in s.models
    ]
    assert {m for m in placed if m.startswith("other-")} == {f"other-{i}" for i in range(600)}
