"""A packing (servers, each of one instance type, each holding some models), its checks and its cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inferpack.planner.problem import EPS, RESOURCES, FloatArray, Problem


@dataclass
class Server:
    """One server: an index into `problem.types` and the indices of the models it holds."""

    type_index: int
    models: list[int] = field(default_factory=list)


def packing_cost(problem: Problem, servers: list[Server]) -> float:
    """Cost per hour of a packing."""
    return float(sum(problem.prices[s.type_index] for s in servers))


def usage(problem: Problem, server: Server) -> FloatArray:
    """Share of each resource (memory, compute, accelerator memory) the server's models use."""
    if not server.models:
        return np.zeros(3)
    return np.asarray(problem.demand[server.models, server.type_index, :].sum(axis=0), dtype=np.float64)


def check_packing(problem: Problem, servers: list[Server]) -> list[str]:
    """Every constraint a packing breaks, as readable lines (empty when the packing is valid)."""
    errors: list[str] = []
    held = np.zeros(problem.n_models, dtype=np.int64)
    for k, server in enumerate(servers):
        if len(set(server.models)) != len(server.models):
            errors.append(f"server {k} holds a model twice (copies must be on different servers)")
        if len(server.models) > problem.max_models:
            errors.append(f"server {k} holds {len(server.models)} models > limit {problem.max_models}")
        for i in server.models:
            held[i] += 1
            if not problem.fits[i, server.type_index]:
                errors.append(
                    f"model {problem.model_ids[i]} cannot run on {problem.types[server.type_index].name}"
                )
        use = usage(problem, server)
        for r, name in enumerate(RESOURCES):
            if use[r] > 1.0 + 1e-6:
                errors.append(
                    f"server {k} ({problem.types[server.type_index].name}) over {name}: {use[r]:.3f}"
                )
    wrong = np.flatnonzero(held != problem.copies)
    for i in wrong[:10]:
        errors.append(f"model {problem.model_ids[i]} has {held[i]} copies, needs {problem.copies[i]}")
    return errors


def cheapest_type_for(problem: Problem, models: list[int]) -> int | None:
    """The cheapest instance type that can hold exactly these models on one server, or None."""
    if len(models) > problem.max_models:
        return None
    if not models:
        return None
    total = problem.demand[models].sum(axis=0)  # (T, 3)
    ok = np.all(total <= 1.0 + EPS, axis=1) & problem.fits[models].all(axis=0)
    if not ok.any():
        return None
    prices = np.where(ok, problem.prices, np.inf)
    return int(np.argmin(prices))


def right_size(problem: Problem, servers: list[Server]) -> list[Server]:
    """Move each server to the cheapest type that still holds its models; drop empty servers."""
    out: list[Server] = []
    for server in servers:
        if not server.models:
            continue
        best = cheapest_type_for(problem, server.models)
        if best is not None and problem.prices[best] < problem.prices[server.type_index] - 1e-12:
            out.append(Server(best, list(server.models)))
        else:
            out.append(server)
    return out


def binding_resource(problem: Problem, servers: list[Server]) -> str:
    """The resource (or model limit) closest to full on average over these servers."""
    if not servers:
        return "-"
    uses = np.array([usage(problem, s) for s in servers]).mean(axis=0)
    counts = np.mean([len(s.models) for s in servers]) / problem.max_models
    names = [*RESOURCES, "models per server"]
    values = [*uses.tolist(), float(counts)]
    return names[int(np.argmax(values))]
