"""A valid lower bound on the cost of any feasible plan, so the heuristic's optimality gap is known.

Relaxation solved with HiGHS (a small MILP, or its LP relaxation):

    minimise   sum_t price_t * n_t                   n_t >= 0 servers of type t (integer or not)
    subject to sum_t z_gt = copies_g                  z_gt >= 0 copies of group g on type t
               sum_g D_gtr * z_gt <= n_t              each resource r of each type t, in total
               sum_g z_gt <= limit * n_t              models per server, in total
               sum_{g big in r on t} z_gt <= n_t      two copies over half of resource r cannot share a server
               sum_t n_t >= max copies of one model   copies sit on different servers

Every real plan gives a feasible point (n_t = its servers of type t, z = its copies), so the optimum is a
lower bound. To keep the LP small for 10,000 models, models are grouped by class and by memory and rate
rounded *down* to a geometric grid: smaller demands only relax the problem further, so the bound stays
valid. When the MILP over integer n_t stops at its time limit, HiGHS's dual bound is still a valid bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from inferpack.planner.problem import EPS, FloatArray, IntArray, Problem, demand_matrix


@dataclass
class BoundResult:
    """The bound (USD/h), whether HiGHS proved it for the relaxation, and a type preference per model."""

    value: float
    integer_servers: bool
    preferred_types: IntArray  # (n,) a type for each model, from the relaxation's solution
    servers_by_type: FloatArray  # (T,) the relaxation's server counts (n_t)


def _round_down(values: FloatArray, ratio: float) -> tuple[IntArray, FloatArray]:
    """Bucket index and the bucket's lower edge on a geometric grid (0 stays 0 in its own bucket)."""
    pos = values > 0
    idx = np.full(values.shape, -(1 << 40), dtype=np.int64)
    idx[pos] = np.floor(np.log(values[pos]) / np.log(ratio) + 1e-12).astype(np.int64)
    rep = np.where(pos, np.power(ratio, idx.astype(np.float64)), 0.0)
    # The float power can land a hair above the value; never round up.
    return idx, np.minimum(rep, values)


def new_highs(time_limit_s: float | None, threads: int = 1) -> highspy.Highs:
    """A silent HiGHS instance with an optional time limit."""
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", threads)
    if time_limit_s is not None:
        h.setOptionValue("time_limit", float(max(time_limit_s, 0.01)))
    return h


def lower_bound(
    problem: Problem,
    *,
    grid_ratio: float = 1.02,
    integer_servers: bool | None = None,
    time_limit_s: float = 5.0,
    max_columns: int = 60_000,
) -> BoundResult:
    """A lower bound on the cost per hour of any plan for `problem` (see the module docstring).

    `integer_servers` None means: integer server counts when the relaxation is small (where they tighten
    the bound cheaply), the LP otherwise."""
    n_t = problem.n_types
    # A coarser grid means fewer groups, a weaker but still valid bound, and a faster LP: coarsen until
    # the LP is small enough to solve in a second or two.
    for ratio in sorted({grid_ratio, 1.05, 1.1, 1.25, 1.5, 2.0}):
        if ratio < grid_ratio:
            continue
        mem_idx, mem_rep = _round_down(problem.memory_mb, ratio)
        rate_idx, rate_rep = _round_down(problem.rate_per_copy, ratio)
        keys = np.stack([problem.class_index, mem_idx, rate_idx], axis=1)
        _, first, group_of = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        d = demand_matrix(problem.class_index[first], mem_rep[first], rate_rep[first], problem.coef)
        fits = np.all(d <= 1.0 + EPS, axis=2) & (problem.max_models >= 1)
        if int(fits.sum()) <= max_columns:
            break
    group_of = group_of.reshape(-1)
    n_g = len(first)
    copies_g = np.bincount(group_of, weights=problem.copies.astype(np.float64), minlength=n_g)
    big = d > 0.5  # (G, T, 3): two such copies cannot share a server, in that resource

    # Columns: n_t first, then one z per feasible (group, type), in group-major order.
    zg, zt = np.nonzero(fits)
    n_z = len(zg)
    if integer_servers is None:
        integer_servers = n_z <= 5000
    # Rows: groups, then per type: 3 resources, the model count, 3 "big copy" rows; then the total.
    row_res = n_g  # + t*3 + r
    row_cnt = n_g + 3 * n_t
    row_big = n_g + 4 * n_t  # + t*3 + r
    row_tot = n_g + 7 * n_t
    n_rows = row_tot + 1
    limit = float(problem.max_models) if problem.max_models < (1 << 30) else 0.0

    # Each column has 8 slots; zero coefficients are dropped below.
    res_rows = [row_res + zt * 3 + r for r in range(3)]
    big_rows = [row_big + zt * 3 + r for r in range(3)]
    z_rows = np.stack([zg, *res_rows, row_cnt + zt, *big_rows], axis=1)
    z_vals = np.stack(
        [
            np.ones(n_z),
            *(d[zg, zt, r] for r in range(3)),
            np.full(n_z, 1.0 if limit else 0.0),
            *(big[zg, zt, r].astype(np.float64) for r in range(3)),
        ],
        axis=1,
    )
    t_ar = np.arange(n_t)
    n_rows_of = np.stack(
        [
            *(row_res + t_ar * 3 + r for r in range(3)),
            row_cnt + t_ar,
            *(row_big + t_ar * 3 + r for r in range(3)),
            np.full(n_t, row_tot),
        ],
        axis=1,
    )
    minus = -np.ones(n_t)
    n_vals = np.stack([minus, minus, minus, np.full(n_t, -limit), minus, minus, minus, -minus], axis=1)
    rows = np.concatenate([n_rows_of, z_rows]).astype(np.int32)
    vals = np.concatenate([n_vals, z_vals])
    keep = vals != 0
    counts = keep.sum(axis=1)
    start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

    lp = highspy.HighsLp()
    lp.num_col_ = n_t + n_z
    lp.num_row_ = n_rows
    lp.col_cost_ = np.concatenate([problem.prices, np.zeros(n_z)])
    lp.col_lower_ = np.zeros(n_t + n_z)
    lp.col_upper_ = np.full(n_t + n_z, highspy.kHighsInf)
    lower = np.full(n_rows, -highspy.kHighsInf)
    upper = np.zeros(n_rows)
    lower[:n_g] = copies_g
    upper[:n_g] = copies_g
    lower[row_tot] = float(problem.copies.max())
    upper[row_tot] = highspy.kHighsInf
    lp.row_lower_ = lower
    lp.row_upper_ = upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = start
    lp.a_matrix_.index_ = rows[keep]
    lp.a_matrix_.value_ = vals[keep]
    if integer_servers:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * n_t + [highspy.HighsVarType.kContinuous] * n_z

    h = new_highs(time_limit_s)
    if not integer_servers:
        # Interior point (with crossover) beats simplex by 2-5x on these wide, short LPs.
        h.setOptionValue("solver", "ipm")
    h.passModel(lp)
    h.run()
    info = h.getInfo()
    status = h.getModelStatus()
    if integer_servers:
        value = float(info.mip_dual_bound)
        if status == highspy.HighsModelStatus.kOptimal:
            value = max(value, float(info.objective_function_value) * (1 - 1e-7))
    else:
        value = float(info.objective_function_value) if status == highspy.HighsModelStatus.kOptimal else 0.0
    if not np.isfinite(value):
        value = 0.0
    value = max(value, volume_bound(problem))
    # HiGHS solves to a relative tolerance: shave a hair so the bound never exceeds the true optimum.
    value = max(0.0, value * (1 - 1e-6))

    cols = np.asarray(h.getSolution().col_value, dtype=np.float64)
    share = np.zeros((n_g, n_t))
    servers = np.zeros(n_t)
    if cols.size == n_t + n_z:
        share[zg, zt] = cols[n_t:]
        servers = cols[:n_t]
    return BoundResult(value, integer_servers, _spread(share, group_of, problem), servers)


def volume_bound(problem: Problem) -> float:
    """A cheap valid bound: a server of price p whose resource r is a share u full costs at least p * u,
    so each copy pays at least its cheapest price-weighted share of each resource (and of the model
    limit); the largest of these sums bounds every plan."""
    copies = problem.copies.astype(np.float64)
    weighted = np.where(problem.fits[:, :, None], problem.demand * problem.prices[None, :, None], np.inf)
    per_resource = (weighted.min(axis=1) * copies[:, None]).sum(axis=0)
    if problem.max_models < (1 << 30):
        cheapest = np.where(problem.fits, problem.prices[None, :], np.inf).min(axis=1)
        per_resource = np.append(per_resource, float((cheapest * copies).sum()) / problem.max_models)
    finite = per_resource[np.isfinite(per_resource)]
    return float(finite.max()) * (1 - 1e-9) if finite.size else 0.0


def _spread(share: FloatArray, group_of: IntArray, problem: Problem) -> IntArray:
    """Give each model a type so that each group's models split over types like its LP copies do."""
    n = problem.n_models
    preferred = np.zeros(n, dtype=np.int64)
    order = np.argsort(group_of, kind="stable")
    bounds = np.flatnonzero(np.diff(group_of[order])) + 1
    for members in np.split(order, bounds):
        if members.size == 0:
            continue
        g = int(group_of[members[0]])
        weights = share[g]
        if weights.sum() <= 0:
            preferred[members] = int(np.argmax(problem.fits[members[0]]))
            continue
        cum = np.cumsum(weights / weights.sum()) * members.size
        picks = np.searchsorted(cum, np.arange(members.size) + 0.5)
        preferred[members] = np.minimum(picks, len(weights) - 1)
    return preferred
