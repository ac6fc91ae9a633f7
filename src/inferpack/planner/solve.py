"""Choose a solver, run it, and turn the packing into a `Plan` with an explanation.

Small problems go to the exact MILP (warm-started from the heuristic); large ones to the heuristic.
Either way the lower bound from `bound` is reported, so the gap to the optimum is known.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from inferpack.errors import PlanError
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan
from inferpack.planner.bound import lower_bound
from inferpack.planner.catalog import InstanceType
from inferpack.planner.execution import group_execution, predicted_p90_ms
from inferpack.planner.heuristic import heuristic_packing
from inferpack.planner.milp import milp_size, slot_counts, solve_milp
from inferpack.planner.naive import NaiveResult, best_naive
from inferpack.planner.packing import Server, binding_resource, check_packing, packing_cost, usage
from inferpack.planner.problem import (
    PlanOptions,
    Problem,
    server_resources,
)

Method = Literal["auto", "milp", "heuristic"]
MAX_MILP_BINARIES = 50_000  # beyond this, building the model in Python alone takes many seconds


@dataclass
class Solution:
    """A solved placement: the packing, its cost, the lower bound, and the naive baseline."""

    servers: list[Server]
    cost: float
    lower_bound: float
    method: Literal["milp", "heuristic"]
    optimal: bool
    naive: NaiveResult | None

    @property
    def gap(self) -> float:
        """Relative optimality gap: (cost - bound) / cost (0 when proven optimal)."""
        if self.optimal or self.cost <= 0:
            return 0.0
        return max(0.0, (self.cost - self.lower_bound) / self.cost)


def naive_cost_of(problem: Problem, naive: NaiveResult | None) -> float | None:
    """Cost per hour of a naive packing."""
    if naive is None:
        return None
    return packing_cost(problem, naive.servers)


def solve(
    problem: Problem,
    *,
    method: Method = "auto",
    max_exact_binaries: int = 4000,
    milp_time_limit_s: float = 30.0,
    bound_time_limit_s: float = 5.0,
    local_search_rounds: int = 4,
    with_naive: bool = True,
) -> Solution:
    """Plan `problem`: heuristic always (it seeds the MILP), the MILP when small or asked for."""
    bound = lower_bound(problem, time_limit_s=bound_time_limit_s)
    servers = heuristic_packing(
        problem,
        [bound.preferred_types],
        max_rounds=local_search_rounds,
        servers_by_type=bound.servers_by_type,
    )
    errors = check_packing(problem, servers)
    if errors:  # a bug, not a user error: never hand out a plan that breaks a constraint
        raise AssertionError("heuristic produced an invalid packing: " + "; ".join(errors[:5]))
    naive = best_naive(problem)
    if naive is not None and packing_cost(problem, naive.servers) < packing_cost(problem, servers) - 1e-9:
        # The baseline is a valid packing too: a plan never costs more than the naive one (the local
        # search can stop in a worse optimum, e.g. two copies on a dear type when the cheap one fits).
        servers = list(naive.servers)
    cost = packing_cost(problem, servers)
    lb = min(bound.value, cost)
    used: Literal["milp", "heuristic"] = "heuristic"
    optimal = cost <= lb * (1 + 1e-6) + 1e-9
    size = milp_size(problem, slot_counts(problem, cost))
    if method == "milp" and size > MAX_MILP_BINARIES:
        raise PlanError(
            f"the exact MILP would have {size:,} binaries (limit {MAX_MILP_BINARIES:,})",
            hint="use --method heuristic (the gap to the lower bound is reported)",
        )
    if method == "milp" or (method == "auto" and size <= max_exact_binaries and not optimal):
        result = solve_milp(problem, servers, milp_time_limit_s)
        if check_packing(problem, result.servers):
            raise AssertionError("MILP produced an invalid packing")
        servers, used = result.servers, "milp"
        cost = packing_cost(problem, servers)
        optimal = optimal or result.optimal
        lb = cost if optimal else min(cost, max(lb, result.bound))
    return Solution(servers, cost, lb, used, optimal, naive if with_naive else None)


def _dns(name: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return s[:50] or "group"


def _column_order(problem: Problem, servers: list[Server]) -> list[int]:
    """The columns (instance type at one execution key) the servers use, by instance type name, then
    by column (the capacity-best key of a type first)."""
    return sorted({s.type_index for s in servers}, key=lambda t: (problem.types[t].name, t))


def execution_label(problem: Problem, t: int) -> str | None:
    """The execution key of column `t`, short for the plan's table: dtype, engine when not eager (as the
    plan file omits it; traced for traced graphs), intra-op threads and batch size, e.g. `bf16 8t b1`,
    `fp32 ort 4t b1`, `bf16 traced 1t b8`; None without a key."""
    key = problem.keys[t] if t < len(problem.keys) else None
    if key is None:
        return None
    threads, dtype, batch, engine = key
    runtime = {"eager": "", "onnxruntime": " ort", "traced": " traced"}.get(engine, f" {engine}")
    return f"{dtype}{runtime} {threads}t b{batch}"


def group_names(problem: Problem, servers: list[Server]) -> dict[int, str]:
    """Column -> its group's name: the instance type's DNS name, and where servers of one instance type
    run two execution keys (two columns), each group also named after its key, so names stay unique."""
    columns = _column_order(problem, servers)
    per_type = Counter(problem.types[t].name for t in columns)
    names: dict[int, str] = {}
    for t in columns:
        inst, key = problem.types[t], problem.keys[t] if t < len(problem.keys) else None
        if per_type[inst.name] > 1 and key is not None:
            threads, dtype, batch, engine = key
            names[t] = _dns(f"{inst.name}-{dtype}-{engine}-t{threads}-b{batch}")
        else:
            names[t] = _dns(inst.name)
    return names


def group_rows(problem: Problem, servers: list[Server]) -> list[dict[str, Any]]:
    """One row per group (instance type at one execution key): count, models, utilisation, cost/h,
    binding constraint, P90, and the execution key in words."""
    rows: list[dict[str, Any]] = []
    for t in _column_order(problem, servers):
        group = [s for s in servers if s.type_index == t]
        uses = np.array([usage(problem, s) for s in group])
        p90 = [predicted_p90_ms(problem, t, s.models) for s in group]
        rows.append(
            {
                "instance_type": problem.types[t].name,
                "servers": len(group),
                "copies": sum(len(s.models) for s in group),
                "memory_util": float(uses[:, 0].mean()),
                "compute_util": float(uses[:, 1].mean()),
                "accelerator_memory_util": float(uses[:, 2].mean()),
                "cost_per_hour": float(problem.prices[t]) * len(group),
                "binding": binding_resource(problem, group),
                "predicted_p90_ms_max": max((x for x in p90 if x is not None), default=None),
                "rps": float(sum(problem.rate_per_copy[s.models].sum() for s in group)),
                "execution": execution_label(problem, t),
            }
        )
    return rows


def group_resources(inst: InstanceType, options: PlanOptions) -> Resources:
    """A server's resources on this type (its pod's requests = limits): what an EKS node can allocate to
    it, and every accelerator of the instance."""
    share = server_resources(inst, options)
    return Resources(
        cpu=share.cpu,
        memory_mb=int(share.memory_mb),
        accelerators=inst.accelerator_count,
        accelerator_memory_mb=inst.accelerator_memory_mb,
    )


def to_plan(
    problem: Problem,
    solution: Solution,
    options: PlanOptions,
    *,
    repository: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Plan:
    """The `Plan` file for a solution: one group per instance type and execution key (one per instance
    type unless the plan runs two keys on one type), servers named after it."""
    groups: list[ServerGroup] = []
    names = group_names(problem, solution.servers)
    for t in _column_order(problem, solution.servers):
        inst = problem.types[t]
        name = names[t]
        members = [s for s in solution.servers if s.type_index == t]
        groups.append(
            ServerGroup(
                name=name,
                instance_type=inst.name,
                target=inst.target,
                architecture=inst.architecture,
                price_per_hour=inst.price_per_hour,
                resources=group_resources(inst, options),
                execution=group_execution(problem, t, sorted({i for s in members for i in s.models})),
                servers=[
                    ServerPlan(
                        name=f"{name}-{k}",
                        models=[problem.model_ids[i] for i in s.models],
                        expected_rps=round(float(problem.rate_per_copy[s.models].sum()), 6),
                    )
                    for k, s in enumerate(members)
                ],
            )
        )
    total_rps = float((problem.rate_per_copy * problem.copies).sum())
    naive_cost = naive_cost_of(problem, solution.naive)
    metadata: dict[str, Any] = {
        "method": solution.method,
        "optimal": solution.optimal,
        "gap": solution.gap,
        "total_rps": total_rps,
        "cost_per_million_inferences": (solution.cost / (total_rps * 3600) * 1e6 if total_rps > 0 else None),
        "groups": group_rows(problem, solution.servers),
        "options": options.model_dump(),
    }
    if solution.naive is not None and naive_cost is not None:
        metadata["naive"] = {
            "instance_type": problem.types[solution.naive.type_index].name,
            "servers": len(solution.naive.servers),
            "models_per_server": solution.naive.models_per_server,
            "cost_per_hour": naive_cost,
            "saving": 1 - solution.cost / naive_cost if naive_cost > 0 else 0.0,
        }
    metadata.update(extra_metadata or {})
    return Plan(
        created_by=solution.method,
        repository=repository,
        slo_p90_ms=options.slo_p90_ms,
        cost_per_hour=round(solution.cost, 6),
        lower_bound_per_hour=round(solution.lower_bound, 6),
        groups=groups,
        metadata=metadata,
    )
