"""Small synthetic problems for planner tests, built directly in normalised form."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from inferpack.planner.catalog import InstanceType
from inferpack.planner.problem import Problem


def make_problem(
    mem: list[float],
    rate: list[float],
    copies: list[int],
    types: list[tuple[float, float, float, float]],
    max_models: int | None = None,
) -> Problem:
    """Models with memory/rate figures; each type is (price, memory coef, compute coef, accel coef)."""
    insts = [
        InstanceType(name=f"t{k}.x", vcpus=4, memory_mb=1024, price_per_hour=price)
        for k, (price, *_rest) in enumerate(types)
    ]
    coef = np.array([[[m, c, a] for _p, m, c, a in types]], dtype=np.float64)
    return Problem(
        model_ids=[f"m{i}" for i in range(len(mem))],
        model_classes=["x"],
        class_index=np.zeros(len(mem), dtype=np.int64),
        memory_mb=np.array(mem, dtype=np.float64),
        rate_per_copy=np.array(rate, dtype=np.float64),
        copies=np.array(copies, dtype=np.int64),
        types=insts,
        prices=np.array([t[0] for t in types], dtype=np.float64),
        coef=coef,
        max_models=max_models or (1 << 30),
    )


def _partitions(n: int) -> Iterator[list[int]]:
    """Set partitions of range(n) as restricted growth strings (block label per item)."""
    if n == 0:
        yield []
        return
    for rest in _partitions(n - 1):
        for label in range(max(rest, default=-1) + 2):
            yield [*rest, label]


def brute_force_cost(problem: Problem) -> float:
    """The optimal cost by enumerating every grouping of copies into servers (tiny problems only).

    Independent of the planner's code: each block of a partition is one server, priced at the cheapest
    type whose capacity holds the block."""
    items = [i for i in range(problem.n_models) for _ in range(int(problem.copies[i]))]
    best = np.inf
    for labels in _partitions(len(items)):
        total = 0.0
        for block in set(labels):
            models = [items[k] for k, lab in enumerate(labels) if lab == block]
            if len(set(models)) != len(models) or len(models) > problem.max_models:
                total = np.inf
                break
            cheapest = np.inf
            for t in range(problem.n_types):
                load = [0.0, 0.0, 0.0]
                for i in models:
                    for r in range(3):
                        load[r] += float(problem.demand[i, t, r])
                if all(x <= 1.0 + 1e-9 for x in load):
                    cheapest = min(cheapest, float(problem.prices[t]))
            total += cheapest
            if total >= best:
                break
        best = min(best, total)
    return float(best)


__all__ = ["brute_force_cost", "make_problem"]
