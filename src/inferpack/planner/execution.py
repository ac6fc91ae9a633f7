"""What the servers of a packed group run and how fast they answer: the execution settings a type's servers
were costed with, and the P90 the queueing model predicts for one server's models (pure: a `Problem` and a
packing in, data out).
"""

from __future__ import annotations

import math

from inferpack.errors import PlanError
from inferpack.plan import Execution
from inferpack.planner.problem import Problem
from inferpack.planner.queueing import p90_response_ms


def predicted_p90_ms(problem: Problem, type_index: int, models: list[int]) -> float | None:
    """The P90 bound for a server of `type_index` holding `models` (the slowest class sets it)."""
    if not models:
        return None
    worst = 0.0
    classes = {int(problem.class_index[i]) for i in models}
    load = float(problem.demand[models, type_index, 1].sum())  # share of capacity in use
    for c in classes:
        choice = problem.choices.get((c, type_index))
        if choice is None:
            return math.inf
        rate = load * choice.capacity_rps
        p90 = p90_response_ms(choice.workers, choice.latency_ms, choice.service_s, rate, choice.cv)
        worst = max(worst, p90)
    return worst


def group_execution(problem: Problem, type_index: int, models: list[int]) -> Execution | None:
    """The settings servers of column `type_index` holding `models` were costed with (a column is one
    instance type at one execution key, `problem.type_variants`): the planner's workers become inference
    threads, the point's threads intra-op threads, its batch size the batching limit (no extra wait:
    batches form from what queues while every worker is busy, which is how the queueing model costs
    them). None for a problem built without choices."""
    inst = problem.types[type_index]
    classes = sorted({int(problem.class_index[i]) for i in models}) or sorted(
        c for c, t in problem.choices if t == type_index
    )
    choices = [problem.choices[(c, type_index)] for c in classes if (c, type_index) in problem.choices]
    if not choices or len(choices) < len(classes):
        return None
    first = choices[0]
    if any(ch.key != first.key or ch.workers != first.workers for ch in choices):
        raise PlanError(
            f"servers of {inst.name} would need two execution settings: {[ch.key for ch in choices]}"
        )
    slowest = max(choices, key=lambda ch: ch.point.latency_ms)
    return Execution(
        device=inst.target,
        dtype=first.point.dtype,  # int8 never gets here: point_allowed refuses it
        engine=first.point.engine,  # the runtime the costed figures were measured on
        traced=first.point.traced,  # servers costed on traced graphs must trace (and only they)
        inference_threads=first.workers,
        intra_op_threads=first.point.threads,
        max_batch_size=first.point.batch_size,
        max_wait_ms=0.0,
        latency_ms=slowest.point.latency_ms,
        profile_source=slowest.source or None,
    )
