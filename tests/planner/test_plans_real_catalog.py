"""Plans over the shipped catalog and profiles, checked from the Plan file alone (independently of the
solver's own bookkeeping): memory, model limits, copies, allowed types and the P90 bound."""

from __future__ import annotations

import fnmatch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferpack.errors import PlanError
from inferpack.planner.catalog import load_catalog
from inferpack.planner.execution import predicted_p90_ms
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import load_profiles
from inferpack.planner.solve import solve, to_plan

CATALOG = load_catalog()
PROFILES = load_profiles()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    memory=st.lists(st.floats(100, 2000), min_size=1, max_size=25),
    rates=st.lists(st.floats(0, 60), min_size=25, max_size=25),
    min_copies=st.integers(1, 3),
    limit=st.sampled_from([None, 5, 40]),
    types=st.sampled_from([None, ["c6i.*", "c7g.*"], ["inf2.*", "r7g.*"], ["g4dn.xlarge", "m6i.*"]]),
    slo=st.sampled_from([30.0, 100.0, 400.0]),
)
def test_plan_file_respects_every_constraint(
    memory: list[float],
    rates: list[float],
    min_copies: int,
    limit: int | None,
    types: list[str] | None,
    slo: float,
) -> None:
    models = [ModelDemand(f"m{i}", mem, rates[i]) for i, mem in enumerate(memory)]
    options = PlanOptions(
        slo_p90_ms=slo, min_copies=min_copies, max_models_per_server=limit, instance_types=types
    )
    try:
        problem = build_problem(models, CATALOG, PROFILES, options)
    except PlanError:
        return  # e.g. no allowed type meets a 30 ms objective on CPU: reported, not planned
    plan = to_plan(problem, solve(problem, method="heuristic"), options)

    memory_of = {m.id: m.memory_mb for m in models}
    plan.validate_against([m.id for m in models])
    for model_id, holders in plan.placement().items():
        assert len(holders) == len(set(holders)) >= min_copies, model_id
    reference = PROFILES.classes["bert-base"].reference_memory_mb
    for group in plan.groups:
        inst = CATALOG.get(group.instance_type)
        assert types is None or any(fnmatch.fnmatchcase(inst.name, p) for p in types)
        assert group.price_per_hour == inst.price_per_hour
        prof = PROFILES.lookup("bert-base", inst.name)
        assert prof is not None
        # every server fits its pod's memory (the EKS node's allocatable, not the instance's size)
        assert group.resources.memory_mb < inst.memory_mb
        usable = group.resources.memory_mb * options.max_memory_fraction - prof.server_overhead_mb
        # a model's memory at the execution the plan gives the group (bf16 halves eager weights, an
        # ONNX Runtime session holds its own fp32 copy), read from the plan file, not the solver
        assert group.execution is not None
        parameters = PROFILES.classes["bert-base"].parameters
        resident = prof.resident_for(group.execution.dtype, group.execution.engine, parameters)
        ex = group.execution
        key = (ex.intra_op_threads, ex.dtype, ex.max_batch_size, ex.engine)
        # the problem's column for this instance type at this key (one per type and key)
        (t,) = [k for k, col in enumerate(problem.types) if col == inst and problem.keys[k] == key]
        for server in group.servers:
            assert limit is None or len(server.models) <= limit
            host = sum(memory_of[m] / reference * resident for m in server.models)
            assert host <= usable * (1 + 1e-6), (inst.name, host, usable)
            if prof.accelerator_mb:
                device = sum(memory_of[m] / reference * prof.accelerator_mb for m in server.models)
                assert device <= (inst.accelerator_memory_mb - prof.accelerator_overhead_mb) * (1 + 1e-6)
            indices = [problem.model_ids.index(m) for m in server.models]
            p90 = predicted_p90_ms(problem, t, indices)
            assert p90 is not None and p90 <= slo * (1 + 1e-6)
