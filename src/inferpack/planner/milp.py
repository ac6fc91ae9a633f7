"""The exact MILP (HiGHS) for small problems.

Candidate servers: for each type t, slots j = 0..B_t-1 with B_t bounded by what an optimal plan could
use (no more servers of t than copies that fit t, nor than the incumbent's cost buys). Variables:
y_tj (slot open, binary), x_itj (model i on slot tj, binary). Minimise sum price_t * y_tj subject to

    sum_tj x_itj = copies_i                  every copy placed; x binary puts copies on different servers
    sum_i D_itr x_itj <= y_tj                each resource of each open server
    sum_i x_itj <= limit * y_tj              models per server
    x_itj <= y_tj                            (redundant, tightens the LP relaxation)
    y_tj >= y_t,j+1                          slots of one type open in order (breaks symmetry)
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from inferpack.planner.bound import new_highs
from inferpack.planner.packing import Server, packing_cost
from inferpack.planner.problem import Problem


@dataclass
class MilpResult:
    """The best packing found, whether it is proven optimal, and HiGHS's bound (USD/h)."""

    servers: list[Server]
    optimal: bool
    bound: float


def milp_size(problem: Problem, slots: list[int]) -> int:
    """Number of binary variables the MILP would have with these slots per type."""
    per_type = problem.fits.sum(axis=0)
    return int(sum(b * (1 + int(per_type[t])) for t, b in enumerate(slots)))


def slot_counts(problem: Problem, incumbent_cost: float) -> list[int]:
    """Slots per type: servers of type t an optimal plan could use."""
    out = []
    for t in range(problem.n_types):
        copies_t = int(problem.copies[problem.fits[:, t]].sum())
        price = float(problem.prices[t])
        by_cost = int(incumbent_cost / price + 1e-9) if price > 0 else copies_t
        out.append(min(copies_t, by_cost))
    return out


def solve_milp(problem: Problem, incumbent: list[Server], time_limit_s: float) -> MilpResult:
    """Solve the placement MILP, warm-started from `incumbent` (a valid packing); returns the best known."""
    slots = slot_counts(problem, packing_cost(problem, incumbent))
    y_index: dict[tuple[int, int], int] = {}
    col_cost: list[float] = []
    for t, b in enumerate(slots):
        for j in range(b):
            y_index[(t, j)] = len(col_cost)
            col_cost.append(float(problem.prices[t]))
    x_index: dict[tuple[int, int, int], int] = {}
    for (t, j), _ in y_index.items():
        for i in np.flatnonzero(problem.fits[:, t]).tolist():
            x_index[(i, t, j)] = len(col_cost)
            col_cost.append(0.0)

    h = new_highs(time_limit_s)
    n_cols = len(col_cost)
    h.addVars(n_cols, np.zeros(n_cols), np.ones(n_cols))
    h.changeColsCost(n_cols, np.arange(n_cols, dtype=np.int32), np.array(col_cost))
    h.changeColsIntegrality(
        n_cols, np.arange(n_cols, dtype=np.int32), np.array([highspy.HighsVarType.kInteger] * n_cols)
    )

    def add_row(lo: float, hi: float, idx: list[int], val: list[float]) -> None:
        h.addRow(lo, hi, len(idx), np.array(idx, dtype=np.int32), np.array(val, dtype=np.float64))

    inf = highspy.kHighsInf
    by_model: dict[int, list[int]] = {}
    for (i, _t, _j), col in x_index.items():
        by_model.setdefault(i, []).append(col)
    for i in range(problem.n_models):
        cols = by_model.get(i, [])
        add_row(float(problem.copies[i]), float(problem.copies[i]), cols, [1.0] * len(cols))
    by_slot: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (i, t, j), col in x_index.items():
        by_slot.setdefault((t, j), []).append((i, col))
    limit = float(min(problem.max_models, problem.n_models))
    for (t, j), y in y_index.items():
        members = by_slot.get((t, j), [])
        cols = [c for _, c in members]
        for r in range(3):
            coefs = [float(problem.demand[i, t, r]) for i, _ in members]
            if any(coefs):
                add_row(-inf, 0.0, [*cols, y], [*coefs, -1.0])
        add_row(-inf, 0.0, [*cols, y], [1.0] * len(cols) + [-limit])
        for c in cols:
            add_row(-inf, 0.0, [c, y], [1.0, -1.0])
        if j > 0:
            add_row(0.0, inf, [y_index[(t, j - 1)], y], [1.0, -1.0])

    _warm_start(h, problem, incumbent, y_index, x_index, n_cols)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    sol = np.asarray(h.getSolution().col_value)
    servers = incumbent
    if sol.size == n_cols and info.primal_solution_status == highspy.kSolutionStatusFeasible:
        found: dict[tuple[int, int], list[int]] = {k: [] for k, y in y_index.items() if sol[y] > 0.5}
        for (i, t, j), col in x_index.items():
            if sol[col] > 0.5 and (t, j) in found:
                found[(t, j)].append(i)
        candidate = [Server(t, sorted(ms)) for (t, _j), ms in sorted(found.items()) if ms]
        if packing_cost(problem, candidate) < packing_cost(problem, incumbent) - 1e-9:
            servers = candidate
    optimal = status == highspy.HighsModelStatus.kOptimal
    bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else 0.0
    return MilpResult(servers=servers, optimal=optimal, bound=max(0.0, bound * (1 - 1e-6)))


def _warm_start(
    h: highspy.Highs,
    problem: Problem,
    incumbent: list[Server],
    y_index: dict[tuple[int, int], int],
    x_index: dict[tuple[int, int, int], int],
    n_cols: int,
) -> None:
    """Hand HiGHS the incumbent so it starts with a good upper bound."""
    values = np.zeros(n_cols)
    used: dict[int, int] = {}
    for server in sorted(incumbent, key=lambda s: s.type_index):
        t = server.type_index
        j = used.get(t, 0)
        used[t] = j + 1
        if (t, j) not in y_index:
            return  # the incumbent uses more slots than the bound allows: skip the hint
        values[y_index[(t, j)]] = 1.0
        for i in server.models:
            values[x_index[(i, t, j)]] = 1.0
    sol = highspy.HighsSolution()
    sol.col_value = values.tolist()
    h.setSolution(sol)
