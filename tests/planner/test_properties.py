"""Property tests: every plan keeps every constraint; the MILP matches brute force; bounds are bounds."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from inferpack.planner.bound import lower_bound
from inferpack.planner.heuristic import heuristic_packing
from inferpack.planner.milp import solve_milp
from inferpack.planner.naive import even_packing, naive_packing
from inferpack.planner.packing import check_packing, packing_cost
from inferpack.planner.problem import PlanOptions, Problem
from inferpack.planner.solve import solve, to_plan

from .helpers import brute_force_cost, make_problem

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

type_st = st.tuples(
    st.sampled_from([0.5, 1.0, 1.7, 2.0, 3.5]),  # price
    st.sampled_from([0.1, 0.2, 0.35, 0.5]),  # memory coef: share of memory per unit of model memory
    st.sampled_from([0.1, 0.3, 0.6, 1.0]),  # compute coef
    st.sampled_from([0.0, 0.0, 0.25]),  # accelerator memory coef
)


@st.composite
def problems(draw: st.DrawFn, max_models: int, max_items: int) -> Problem:
    n = draw(st.integers(1, max_models))
    mem = draw(st.lists(st.floats(0.2, 2.0), min_size=n, max_size=n))
    rate = draw(st.lists(st.sampled_from([0.0, 0.1, 0.4, 0.9, 1.5]), min_size=n, max_size=n))
    copies = draw(st.lists(st.integers(1, 2), min_size=n, max_size=n))
    assume(sum(copies) <= max_items)
    types = draw(st.lists(type_st, min_size=1, max_size=3))
    limit = draw(st.sampled_from([None, None, 1, 2, 3]))
    problem = make_problem(mem, rate, copies, types, limit)
    assume(problem.fits.any(axis=1).all())
    return problem


@FAST
@given(problems(max_models=4, max_items=6))
def test_milp_equals_brute_force_and_bounds_hold(problem: Problem) -> None:
    optimum = brute_force_cost(problem)
    heuristic = heuristic_packing(problem, [])
    assert check_packing(problem, heuristic) == []
    result = solve_milp(problem, heuristic, time_limit_s=20)
    assert result.optimal
    assert check_packing(problem, result.servers) == []
    assert abs(packing_cost(problem, result.servers) - optimum) < 1e-6
    assert packing_cost(problem, heuristic) >= optimum - 1e-9
    bound = lower_bound(problem, time_limit_s=5)
    assert bound.value <= optimum + 1e-9


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_models=40, max_items=80))
# found by hypothesis: the local search ended at 6.9 USD/h (two copies on the dear type) against the naive
# plan's 6.8; the planner now keeps the naive packing when it is cheaper
@example(make_problem([1.0, 1.0], [0.9, 0.9], [2, 2], [(1.7, 0.1, 0.6, 0.0), (3.5, 0.1, 0.1, 0.0)]))
def test_heuristic_plans_are_valid_and_above_the_bound(problem: Problem) -> None:
    solution = solve(problem, method="heuristic", with_naive=True)
    assert check_packing(problem, solution.servers) == []
    bound = lower_bound(problem, integer_servers=False).value
    assert solution.cost >= bound - 1e-9
    assert solution.cost >= solution.lower_bound - 1e-9
    if solution.naive is not None:
        assert check_packing(problem, solution.naive.servers) == []
        assert solution.cost <= packing_cost(problem, solution.naive.servers) + 1e-9
    plan = to_plan(problem, solution, PlanOptions())
    plan.validate_against(problem.model_ids)
    placement = plan.placement()
    for i, model in enumerate(problem.model_ids):
        assert len(placement[model]) == problem.copies[i]


@FAST
@given(problems(max_models=30, max_items=60), st.integers(0, 2))
def test_naive_packing_is_valid_when_found(problem: Problem, t: int) -> None:
    assume(t < problem.n_types)
    packing = naive_packing(problem, t)
    if packing is None:
        # One copy per server always works when every model fits the type alone.
        assert not problem.fits[:, t].all()
    else:
        assert check_packing(problem, packing) == []
        counts = [len(s.models) for s in packing]
        assert max(counts) - min(counts) <= 1
        # The fewest servers: one fewer cannot hold the models dealt evenly.
        if len(packing) > 1:
            assert even_packing(problem, t, len(packing) - 1) is None


def test_bound_is_tight_on_a_pure_volume_problem() -> None:
    # Ten models each using 30% of one server type: the LP needs 3 servers, a packing needs 4 (3 per
    # server); the integer bound proves 3.0 at least, and the plan costs 4.
    problem = make_problem([1.0] * 10, [0.0] * 10, [1] * 10, [(1.0, 0.3, 0.1, 0.0)])
    solution = solve(problem)
    assert solution.cost == 4.0
    assert 3.0 - 1e-6 <= solution.lower_bound <= 4.0
    assert solution.optimal  # the MILP proves it on a problem this small


def test_hot_model_rate_is_split_over_distinct_servers() -> None:
    from inferpack.planner.catalog import load_catalog
    from inferpack.planner.problem import ModelDemand, build_problem
    from inferpack.planner.profiles import load_profiles

    models = [ModelDemand("hot", 460, 5000.0), *(ModelDemand(f"m{i}", 460, 0.5) for i in range(20))]
    # 200 ms: the reference c6i points (median 88 ms at 4 threads) miss 100 ms at the default spread
    options = PlanOptions(instance_types=["c6i.*"], slo_p90_ms=200)
    problem = build_problem(models, load_catalog(), load_profiles(), options)
    assert problem.copies[0] > 1
    solution = solve(problem, method="heuristic")
    assert check_packing(problem, solution.servers) == []
    holders = [s for s in solution.servers if 0 in s.models]
    assert len(holders) == problem.copies[0]
    assert np.isclose(problem.rate_per_copy[0] * problem.copies[0], 5000.0)
