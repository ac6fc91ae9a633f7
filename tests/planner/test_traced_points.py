"""Traced graphs in profiles and plans: what a server runs for a hot model is costed as what it is.

A server on engine eager (CPU) traces every model that has run `server.trace_after_batches` batches into a
TorchScript graph (compile/tracing.py): faster, and costing memory beside the weights. The profile times
each point again on that graph and records its memory (`traced_mb`); the planner offers it as its own
execution key (runtime "traced"), so hot groups run traced and the memory-bound tail eager; and a plan's
traced group makes its servers trace (and its eager groups not: the plan counted no graph memory there).

One instance type "box.2xlarge" (8 cores, 16 GiB, 1 USD/h) and a MiniLM class with an eager bf16 point
(21 ms, 25 MB per model) and a traced bf16 point (12 ms, 25 + 40 MB per model).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from inferpack.deploy.options import RenderOptions
from inferpack.deploy.servers import server_env
from inferpack.errors import ModelLoadFailed
from inferpack.plan import TRACE_AFTER_BATCHES, Plan, ServerGroup, served_settings, traced_memory_budget_mb
from inferpack.planner.catalog import Catalog, InstanceType
from inferpack.planner.packing import check_packing
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem, type_variants
from inferpack.planner.profiler import ProfileRequest, measure_architecture, profile_repository
from inferpack.planner.profiles import (
    ModelProfile,
    OperatingPoint,
    ProfileSet,
    load_profiles,
    parse_profile_file,
)
from inferpack.planner.solve import Method, solve, to_plan
from inferpack.processes import server_command
from inferpack.repository.local import open_repository
from inferpack.runtime.modeling import LoadedModel
from inferpack.runtime.registry import traces_after
from inferpack.settings import ServerSettings
from tests.deploy.test_commands_contract import parse

BOX = InstanceType(name="box.2xlarge", vcpus=8, threads_per_core=1, memory_mb=16384, price_per_hour=1.0)
CLASS = "minilm-l6"
SOURCE = "measured: test figures"
EAGER = OperatingPoint(threads=1, dtype="bf16", latency_ms=21.0, source=SOURCE)
TRACED = OperatingPoint(threads=1, dtype="bf16", traced=True, latency_ms=12.0, source=SOURCE)
MB = 2**20


def _profile(points: list[OperatingPoint], traced_mb: float = 40.0) -> ModelProfile:
    base = load_profiles().lookup(CLASS, "local")
    assert base is not None
    return base.model_copy(
        update={
            "instance_types": ["box.*"],
            "points": points,
            "resident_mb": 40.0,
            "memory_by_dtype": {"fp32": 40.0, "bf16": 25.0},
            "traced_mb": {"bf16": traced_mb} if any(p.traced for p in points) else {},
        }
    )


def _profiles(prof: ModelProfile) -> ProfileSet:
    return ProfileSet(classes={CLASS: load_profiles().classes[CLASS]}, profiles=[prof])


BOTH = _profiles(_profile([EAGER, TRACED]))
EAGER_ONLY = _profiles(_profile([EAGER]))


def _plan(models: list[ModelDemand], profiles: ProfileSet, method: Method = "auto") -> Plan:
    problem = build_problem(models, Catalog(instances=[BOX]), profiles, PlanOptions())
    solution = solve(problem, method=method, with_naive=False)
    assert check_packing(problem, solution.servers) == []
    return to_plan(problem, solution, PlanOptions())


def _traced(groups: list[ServerGroup]) -> set[bool]:
    return {g.execution.traced for g in groups if g.execution is not None}


# --- profile files -------------------------------------------------------------------------------------


def test_an_untraced_profile_file_is_written_as_before_and_old_files_still_load() -> None:
    """Readers from before the fields reject unknown ones: an eager profile names neither `traced` nor
    `traced_mb`; the shipped file (no traced points) and such a file load; a traced one round-trips."""
    eager = _profile([EAGER])
    text = eager.model_dump_json()
    assert '"traced' not in text
    assert ModelProfile.model_validate_json(text) == eager
    load_profiles()  # the shipped reference file, from before the fields
    traced = _profile([EAGER, TRACED])
    data = json.loads(traced.model_dump_json())
    assert data["traced_mb"] == {"bf16": 40.0}
    assert [p.get("traced", False) for p in data["points"]] == [False, True]
    assert ModelProfile.model_validate(data) == traced


def test_a_traced_point_needs_its_graph_memory_and_an_eager_engine() -> None:
    with pytest.raises(ValueError, match="traced_mb"):
        ModelProfile.model_validate(_profile([EAGER, TRACED]).model_dump() | {"traced_mb": {}})
    with pytest.raises(ValueError, match="graph of the eager module"):
        OperatingPoint(engine="onnxruntime", traced=True, latency_ms=5.0)
    prof = _profile([EAGER, TRACED])
    assert prof.resident_for("bf16") == 25.0
    assert prof.resident_for("bf16", traced=True) == 65.0


# --- the profiler --------------------------------------------------------------------------------------


def _fake_tracer(graph_mb: float, calls: list[str]) -> Callable[[LoadedModel], LoadedModel]:
    """A tracer that makes no graph: the model's own module stands in, its estimated own memory
    `graph_mb` (what the ledger charges for a graph, under a key of its own)."""

    def trace(model: LoadedModel) -> LoadedModel:
        calls.append(model.model_id)
        return dataclasses.replace(
            model, graph=model.module, extra={**model.extra, "graph_bytes": int(graph_mb * MB)}
        )

    return trace


def test_the_profiler_times_traced_points_and_takes_the_second_graph_s_memory(demo_repo: Path) -> None:
    """Every point again on the traced graph; its memory the second traced model's (its own graph once
    the first lives), the larger of RSS growth (here a constant: 0) and the ledger's growth (8 MiB)."""
    repo = open_repository(demo_repo)
    request = ProfileRequest(batch_sizes=[1, 2], threads=[1], dtypes=["fp32"], repeats=1)
    calls: list[str] = []
    measured = measure_architecture(
        repo, "k", ["qa-0000", "qa-0001"], request, rss=lambda: 100 * MB, tracer=_fake_tracer(8.0, calls)
    )
    assert calls == ["qa-0000", "qa-0001"]
    assert [(p.batch_size, p.traced) for p in measured.points] == [
        (1, False),
        (2, False),
        (1, True),
        (2, True),
    ]
    assert measured.traced_mb == {"fp32": pytest.approx(8.0)}
    assert "second traced model" in measured.traced_notes[0] and "= ledger" in measured.traced_notes[0]


def test_a_model_that_cannot_be_traced_has_no_traced_points(demo_repo: Path) -> None:
    """Tracing fails or disagrees: the server keeps eager, so the profile offers no traced point."""

    def refuse(model: LoadedModel) -> LoadedModel:
        raise ModelLoadFailed("disagrees")

    repo = open_repository(demo_repo)
    request = ProfileRequest(batch_sizes=[1], threads=[1], dtypes=["fp32"], repeats=1)
    profile, _ = profile_repository(repo, ["qa-0000", "qa-0001"], request, when="test", tracer=refuse)
    (prof,) = profile.profiles
    assert [p.traced for p in prof.points] == [False] and prof.traced_mb == {}
    assert "no traced points" in prof.source
    untraced = ProfileRequest(batch_sizes=[1], threads=[1], dtypes=["fp32"], repeats=1, traced=False)
    calls: list[str] = []
    measured = measure_architecture(repo, "k", ["qa-0000"], untraced, tracer=_fake_tracer(1.0, calls))
    assert calls == [] and not any(p.traced for p in measured.points)


def test_a_real_profile_records_the_server_s_traced_graph(demo_repo: Path, tmp_path: Path) -> None:
    """`compile.tracing.traced` itself on the demo MiniLM: traced points, and a graph memory figure, in a
    file the planner reads back."""
    repo = open_repository(demo_repo)
    request = ProfileRequest(batch_sizes=[1], threads=[1], dtypes=["fp32"], repeats=2)
    profile, _ = profile_repository(repo, ["qa-0000", "qa-0001"], request, when="test")
    (prof,) = profile.profiles
    assert [p.traced for p in prof.points] == [False, True]
    assert prof.traced_mb["fp32"] > 0
    path = tmp_path / "profile.json"
    path.write_text(profile.model_dump_json(exclude_none=True))
    again = parse_profile_file(path.read_text(), str(path)).profiles[0]
    assert again.points[1].traced and again.traced_mb == prof.traced_mb


# --- the planner ---------------------------------------------------------------------------------------


def test_traced_is_its_own_key_kept_beside_the_smaller_eager_one() -> None:
    variants = type_variants(BOX, {0: BOTH.profiles[0]}, PlanOptions(), None, {0: None})
    assert [v[0].key for v in variants] == [(1, "bf16", 1, "traced"), (1, "bf16", 1, "eager")]
    # a graph that costs nothing more and runs faster leaves eager nothing to offer
    free = type_variants(BOX, {0: _profile([EAGER, TRACED], traced_mb=0.0)}, PlanOptions(), None, {0: None})
    assert [v[0].key for v in free] == [(1, "bf16", 1, "traced")]


def test_a_throughput_bound_plan_runs_traced_and_costs_less_than_eager() -> None:
    """40 hot models: compute binds; the traced key needs fewer servers than the eager forward."""
    models = [ModelDemand(f"m{i}", 100.0, 10.0, CLASS) for i in range(40)]
    traced, eager = _plan(models, BOTH), _plan(models, EAGER_ONLY)
    assert _traced(traced.groups) == {True} and _traced(eager.groups) == {False}
    assert traced.cost_per_hour is not None and eager.cost_per_hour is not None
    assert traced.cost_per_hour < eager.cost_per_hour
    assert traced.metadata["groups"][0]["execution"] == "bf16 traced 1t b1"


def test_a_memory_bound_plan_keeps_eager() -> None:
    """1,000 idle tenants: servers fill by memory, and a graph's 40 MB would more than double each model."""
    models = [ModelDemand(f"m{i}", 100.0, 0.01, CLASS) for i in range(1000)]
    plan = _plan(models, BOTH)
    assert _traced(plan.groups) == {False}
    assert plan.cost_per_hour == _plan(models, EAGER_ONLY).cost_per_hour


@pytest.mark.parametrize("method", ["heuristic", "milp"])
def test_hot_models_traced_and_the_cold_tail_eager(method: Method) -> None:
    hot = [ModelDemand(f"hot-{i}", 100.0, 40.0, CLASS) for i in range(32)]
    cold = [ModelDemand(f"cold-{i}", 1000.0, 0.0, CLASS) for i in range(110)]
    plan = _plan(hot + cold, BOTH, method)
    assert _traced(plan.groups) == {True, False}
    for group in plan.groups:
        assert group.execution is not None
        names = [m for s in group.servers for m in s.models]
        if group.execution.traced:
            assert all(m.startswith("hot-") for m in names)


# --- the plan makes servers trace exactly where it costed traced graphs --------------------------------


def _parse_serve(argv: list[str]) -> dict[str, object]:
    """The real CLI's parse of a `serve` command line (raises on an unknown flag)."""
    return dict(parse(["inferpack", *argv[argv.index("serve") :]]).params)


def _groups() -> tuple[ServerGroup, ServerGroup]:
    hot = [ModelDemand(f"hot-{i}", 100.0, 40.0, CLASS) for i in range(32)]
    cold = [ModelDemand(f"cold-{i}", 1000.0, 0.0, CLASS) for i in range(110)]
    plan = _plan(hot + cold, BOTH)
    traced = next(g for g in plan.groups if g.execution and g.execution.traced)
    eager = next(g for g in plan.groups if g.execution and not g.execution.traced)
    return traced, eager


def test_a_traced_group_s_servers_trace_and_an_eager_group_s_never() -> None:
    """Through `served_settings` (Kubernetes) and the registry's own rule, whatever the configuration."""
    traced, eager = _groups()
    quiet = ServerSettings(trace_after_batches=0, memory_budget_mb=64, pack_weights=False)
    for configured in (ServerSettings(), quiet):
        served = served_settings(traced, configured)
        assert traces_after(served, "cpu") == TRACE_AFTER_BATCHES > 0
        assert served.pack_weights  # over the packed weights the profile timed
        # the budget the server traces into holds every model with its graph (the plan's memory)
        assert served.memory_budget_mb is None or served.memory_budget_mb >= traced.resources.memory_mb
        assert traces_after(served_settings(eager, configured), "cpu") == 0
    lifted = traced_memory_budget_mb(traced, ServerSettings(memory_budget_mb=64))
    assert lifted == traced.resources.memory_mb
    assert traced_memory_budget_mb(eager, ServerSettings(memory_budget_mb=64)) is None
    env = {
        e["name"]: e.get("value")
        for e in server_env(served_settings(eager, ServerSettings()), eager, RenderOptions())
    }
    assert env["INFERPACK_SERVER__TRACE_AFTER_BATCHES"] == "0"


def test_inferpack_up_passes_what_the_real_cli_reads_as_tracing() -> None:
    """`inferpack up`'s server command lines (processes.server_command) parse with the real CLI into
    settings that trace exactly the traced group's models."""
    traced, eager = _groups()
    assert traced.execution is not None and eager.execution is not None
    budget = traced_memory_budget_mb(traced, ServerSettings(memory_budget_mb=64))
    argv = server_command(
        repository="repo",
        models=["hot-0"],
        port=0,
        threads=None,
        execution=traced.execution,
        memory_budget_mb=budget,
    )
    params = _parse_serve(argv)
    assert params["trace_after_batches"] == TRACE_AFTER_BATCHES and params["engine"] == "eager"
    assert params["pack_weights"] is True  # the graphs the profile timed
    assert params["memory_budget_mb"] == traced.resources.memory_mb
    argv = server_command(
        repository="repo", models=["cold-0"], port=0, threads=None, execution=eager.execution
    )
    assert _parse_serve(argv)["trace_after_batches"] == 0


def test_eager_points_are_timed_without_a_traced_tenant_s_trunk(demo_repo: Path) -> None:
    """Beside a traced tenant, an eager tenant of its base runs the base's layers through the traced
    tenant's trunk; the profile's eager points time what a plan's eager servers (which never trace) run."""
    from inferpack.compile.tracing import traced
    from inferpack.planner.profiler import default_loader, untraced

    repo = open_repository(demo_repo)
    hot, cold = (default_loader(repo, m, "fp32") for m in ("qa-0000", "qa-0001"))
    fast = traced(hot)
    assert fast.pieces is not None and fast.pieces.trunk is not None  # the demo tenants share a base
    assert cold._module_for(1) is not cold.module  # through the trunk
    assert untraced(cold)._module_for(1) is cold.module
