"""Even dealing of models over servers, for two jobs: the simple plan of `plan --simple`, `up` and `demo`
(fill N local servers evenly) and the naive packing (the reference's fixed N models per server on one
instance type), the baseline the cost planner reports its saving over.

All is pure but `local_simple_plan`, which reads this machine's cores and memory."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from inferpack.errors import PlanError
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan
from inferpack.planner.packing import Server
from inferpack.planner.problem import EPS, Problem
from inferpack.runtime.hardware import usable_cores


def round_robin(n_models: int, copies: list[int], servers: int) -> list[list[int]]:
    """Deal copies to servers in turn, model by model: servers fill evenly (their model counts differ by
    at most one) and the copies of one model land on consecutive, hence different, servers."""
    if servers < 1:
        raise PlanError("--servers must be at least 1")
    if copies and max(copies) > servers:
        raise PlanError(f"{max(copies)} copies of a model need at least {max(copies)} servers")
    out: list[list[int]] = [[] for _ in range(servers)]
    pos = 0
    for i in range(n_models):
        for _ in range(copies[i]):
            out[pos % servers].append(i)
            pos += 1
    return out


# A server holding no model: Python, torch and the server imported. Measured ~380 MB RSS for the cpu image
# serving here (docs/kubernetes.md, "Checking the image build"); rounded up for allocator slack.
SIMPLE_SERVER_OVERHEAD_MB = 512
# Room above the models' estimated footprints: activations of the batches in flight, tokenizers, caches.
SIMPLE_HEADROOM = 1.25


def sized_memory_mb(members: list[list[str]], model_memory_mb: Mapping[str, float]) -> int:
    """Memory for each server of a simple plan: the largest server's models plus the idle server and
    headroom, rounded up to 64 MiB. Sized from what the servers hold, not from the host: a plan rendered
    for Kubernetes requests this much."""
    need = max((sum(model_memory_mb[m] for m in ids) for ids in members), default=0.0)
    return 64 * math.ceil((SIMPLE_SERVER_OVERHEAD_MB + need) * SIMPLE_HEADROOM / 64)


def simple_plan(
    model_ids: list[str],
    servers: int,
    copies: int,
    *,
    cpu_per_server: float,
    memory_mb_per_server: int | None = None,
    model_memory_mb: Mapping[str, float] | None = None,
    repository: str | None = None,
) -> Plan:
    """The naive local plan of `inferpack plan --simple`: N servers of instance type "local", K copies of
    each model on different servers, models dealt in order so every server holds about as many.

    Memory per server is `memory_mb_per_server` when given, else sized from `model_memory_mb` (every
    model's resident estimate) by `sized_memory_mb`. More copies than servers are capped at one copy per
    server (copies of a model must sit on different servers, so no more fit); the metadata keeps the
    copies asked for next to the copies placed."""
    if not model_ids:
        raise PlanError("no models to plan")
    if copies < 1:
        raise PlanError("--copies must be at least 1")
    if servers < 1:
        raise PlanError("--servers must be at least 1")
    placed = min(copies, servers)
    dealt = round_robin(len(model_ids), [placed] * len(model_ids), servers)
    if memory_mb_per_server is None:
        if model_memory_mb is None:
            raise PlanError("a simple plan needs the memory per server or every model's memory")
        members = [[model_ids[i] for i in ids] for ids in dealt]
        memory_mb_per_server = sized_memory_mb(members, model_memory_mb)
    width = len(str(servers - 1))
    group = ServerGroup(
        name="local",
        instance_type="local",
        resources=Resources(cpu=cpu_per_server, memory_mb=max(1, memory_mb_per_server)),
        servers=[
            ServerPlan(name=f"server-{k:0{width}d}", models=[model_ids[i] for i in members])
            for k, members in enumerate(dealt)
        ],
    )
    metadata: dict[str, Any] = {"servers": servers, "copies": placed}
    if placed != copies:
        metadata["copies_requested"] = copies
    return Plan(created_by="simple", repository=repository, groups=[group], metadata=metadata)


def local_simple_plan(
    models: Mapping[str, float], servers: int, copies: int, *, repository: str | None
) -> Plan:
    """`simple_plan` for this machine: `models` maps each model id to its resident memory (MB); the usable
    cores (CPU affinity) are split evenly over the servers and each server's memory is sized from the
    models it holds (`sized_memory_mb`). The one sizing behind `inferpack plan --simple`, `inferpack up`
    and `inferpack demo`. Metadata records whether the servers' memory exceeds this host's."""
    if servers < 1:
        raise PlanError("--servers must be at least 1")
    plan = simple_plan(
        list(models),
        servers,
        copies,
        cpu_per_server=max(usable_cores() / servers, 0.001),
        model_memory_mb=models,
        repository=repository,
    )
    host_mb = psutil.virtual_memory().total / 2**20
    total_mb = sum(g.resources.memory_mb * len(g.servers) for g in plan.groups)
    if total_mb > host_mb:
        plan.metadata["exceeds_host_memory_mb"] = int(host_mb)
    return plan


@dataclass
class NaiveResult:
    """The cheapest fixed-N-per-server packing on a single instance type."""

    servers: list[Server]
    type_index: int
    models_per_server: float


def even_packing(problem: Problem, t: int, n_servers: int) -> list[Server] | None:
    """Copies dealt evenly over `n_servers` servers of type `t`, or None if a server would overflow."""
    if int(problem.copies.max()) > n_servers:
        return None
    # The same dealing as `round_robin`, vectorised: copy number p (in model order) goes to p mod N.
    model_of_copy = np.repeat(np.arange(problem.n_models), problem.copies)
    server_of_copy = np.arange(model_of_copy.size) % n_servers
    if np.bincount(server_of_copy, minlength=n_servers).max() > problem.max_models:
        return None
    for r in range(3):
        load = np.bincount(server_of_copy, weights=problem.demand[model_of_copy, t, r], minlength=n_servers)
        if load.max() > 1.0 + EPS:
            return None
    members: list[list[int]] = [[] for _ in range(n_servers)]
    for i, s in zip(model_of_copy.tolist(), server_of_copy.tolist(), strict=True):
        members[s].append(i)
    return [Server(t, m) for m in members if m]


def naive_packing(problem: Problem, type_index: int) -> list[Server] | None:
    """The fewest servers of one type that hold every model dealt evenly in listing order (the
    reference's N models per server, with the planner's copies for hot models), or None if none do."""
    if not problem.fits[:, type_index].all():
        return None
    d = problem.demand[:, type_index] * problem.copies[:, None]
    lower = max(int(np.ceil(d.sum(axis=0).max() - 1e-9)), int(problem.copies.max()), 1)
    total = int(problem.copies.sum())
    n, prev = lower, lower - 1
    # Scan upward from the volume bound in steps of ~1% so 10,000 models stay quick, then look back over
    # the last step for the smallest N that works.
    while prev < total:
        n = min(n, total)
        found = even_packing(problem, type_index, n)
        if found is not None:
            for m in range(prev + 1, n):
                smaller = even_packing(problem, type_index, m)
                if smaller is not None:
                    return smaller
            return found
        prev, n = n, max(n + 1, int(n * 1.01))
    return None


def best_naive(problem: Problem) -> NaiveResult | None:
    """The cheapest naive packing over all single instance types."""
    best: NaiveResult | None = None
    for t in range(problem.n_types):
        packing = naive_packing(problem, t)
        if packing is None:
            continue
        cost = len(packing) * float(problem.prices[t])
        if best is None or cost < len(best.servers) * float(problem.prices[best.type_index]):
            best = NaiveResult(packing, t, float(problem.copies.sum()) / len(packing))
    return best
