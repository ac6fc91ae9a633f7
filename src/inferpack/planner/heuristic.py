"""The fast heuristic: first-fit decreasing onto preferred instance types, then local search.

1. Each model gets a preferred instance type (from the LP relaxation, or from its cheapest bottleneck
   share). Optionally the relaxation's server counts, rounded, are opened first. Models are taken in
   decreasing order of their largest normalised demand; each copy goes to a pre-opened server with room
   (preferred type first, best dot-product match of demand and spare room), else to the first open
   server of any type with room (copies always on different servers), else to a new server of the
   model's preferred type.
2. Local search, all moves keeping every constraint: empty the least-filled servers by moving their
   models elsewhere; merge pairs of small servers into one cheaper type; right-size each server to the
   cheapest type that still holds its models. Repeat while the cost falls (bounded by `max_rounds`).

Pure: no clock; effort is bounded by counts the caller passes in.
"""

from __future__ import annotations

import numpy as np

from inferpack.planner.packing import Server, packing_cost, right_size
from inferpack.planner.problem import EPS, FloatArray, IntArray, Problem


class _State:
    """Open servers as arrays, so a fit test for one model against all servers is one numpy expression."""

    def __init__(self, problem: Problem) -> None:
        self.p = problem
        cap = 64
        self.stype = np.zeros(cap, dtype=np.int64)
        self.used = np.zeros((cap, 3))
        self.count = np.zeros(cap, dtype=np.int64)
        self.alive = np.zeros(cap, dtype=np.bool_)
        self.members: list[set[int]] = []
        self.where: list[set[int]] = [set() for _ in range(problem.n_models)]

    @property
    def size(self) -> int:
        return len(self.members)

    def open(self, type_index: int) -> int:
        s = self.size
        if s == len(self.stype):
            grow = len(self.stype)
            self.stype = np.concatenate([self.stype, np.zeros(grow, dtype=np.int64)])
            self.used = np.concatenate([self.used, np.zeros((grow, 3))])
            self.count = np.concatenate([self.count, np.zeros(grow, dtype=np.int64)])
            self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=np.bool_)])
        self.stype[s] = type_index
        self.alive[s] = True
        self.members.append(set())
        return s

    def add(self, i: int, s: int) -> None:
        self.used[s] += self.p.demand[i, self.stype[s]]
        self.count[s] += 1
        self.members[s].add(i)
        self.where[i].add(s)

    def remove(self, i: int, s: int) -> None:
        self.used[s] -= self.p.demand[i, self.stype[s]]
        self.count[s] -= 1
        self.members[s].discard(i)
        self.where[i].discard(s)

    def candidates(self, i: int, exclude: int = -1) -> IntArray:
        """Live servers (in opening order) where one more copy of model i fits."""
        n = self.size
        st = self.stype[:n]
        ok = self.alive[:n] & self.p.fits[i, st] & (self.count[:n] < self.p.max_models)
        ok &= np.all(self.used[:n] + self.p.demand[i, st] <= 1.0 + EPS, axis=1)
        if exclude >= 0:
            ok[exclude] = False
        for s in self.where[i]:
            ok[s] = False
        return np.flatnonzero(ok)

    def servers(self) -> list[Server]:
        return [
            Server(int(self.stype[s]), sorted(self.members[s]))
            for s in range(self.size)
            if self.alive[s] and self.members[s]
        ]


def efficient_types(problem: Problem) -> IntArray:
    """Per model, the type where its largest resource share costs least (price x bottleneck share)."""
    share = problem.demand.max(axis=2)  # (n, T)
    score = np.where(problem.fits, share * problem.prices[None, :], np.inf)
    return np.asarray(np.argmin(score, axis=1), dtype=np.int64)


def first_fit_decreasing(
    problem: Problem, preferred: IntArray, preopen: list[int] | None = None
) -> list[Server]:
    """Place every copy by first fit in decreasing size; new servers use each model's preferred type.

    `preopen` lists servers (by type) to open before placing anything, e.g. the LP's server counts
    rounded: copies then fill those first, servers of the copy's preferred type before the others."""
    pref = np.where(problem.fits[np.arange(problem.n_models), preferred], preferred, efficient_types(problem))
    size = problem.demand[np.arange(problem.n_models), pref].max(axis=1)
    state = _State(problem)
    for t in preopen or []:
        state.open(t)
    for i in np.argsort(-size, kind="stable").tolist():
        k = int(problem.copies[i])
        cands = state.candidates(i)
        if preopen and cands.size:
            # Pre-opened servers of the preferred type first (where the relaxation put the model), and
            # among them the one whose spare room lines up best with the model's demand (the dot-product
            # rule for vector packing): memory-heavy cold models go where hot ones left memory free.
            # Servers opened later stay in first-fit order, so the overflow fills one server at a time
            # and the last, part-full one can be right-sized to a smaller type.
            d = state.p.demand[i, state.stype[cands]]
            pre = cands < len(preopen)
            score = (d * (1.0 - state.used[cands])).sum(axis=1) * pre
            score += (state.stype[cands] == pref[i]) * pre * 10.0 + pre * 10.0
            cands = cands[np.argsort(-score, kind="stable")]
        for s in cands[:k].tolist():
            state.add(i, s)
        while len(state.where[i]) < k:
            state.add(i, state.open(int(pref[i])))
    return state.servers()


def _load(problem: Problem, servers: list[Server]) -> _State:
    state = _State(problem)
    for server in servers:
        s = state.open(server.type_index)
        for i in server.models:
            state.add(i, s)
    return state


def _fill(state: _State, s: int) -> float:
    return float(max(state.used[s].max(), state.count[s] / state.p.max_models))


def eliminate_servers(problem: Problem, servers: list[Server], max_attempts: int) -> list[Server]:
    """Try to empty servers (least filled first) into the others' spare room; keep each success."""
    state = _load(problem, servers)
    order = sorted(range(state.size), key=lambda s: (_fill(state, s), -problem.prices[state.stype[s]]))
    for s in order[:max_attempts]:
        moved: list[tuple[int, int]] = []
        ok = True
        # Largest first: the hard-to-place copies decide whether the server can go.
        for i in sorted(state.members[s], key=lambda i: -problem.demand[i, state.stype[s]].max()):
            cands = state.candidates(i, exclude=s)
            if cands.size == 0:
                ok = False
                break
            # Best fit: the fullest server that takes it keeps the others' room for later moves.
            target = int(cands[np.argmax(state.used[cands].max(axis=1))])
            state.remove(i, s)
            state.add(i, target)
            moved.append((i, target))
        if ok:
            state.alive[s] = False
        else:
            for i, target in reversed(moved):
                state.remove(i, target)
                state.add(i, s)
    return state.servers()


def merge_pairs(problem: Problem, servers: list[Server], max_servers: int) -> list[Server]:
    """Merge two servers into one of a type cheaper than both together, among the least-filled ones."""
    totals: list[FloatArray] = [problem.demand[s.models].sum(axis=0) for s in servers]
    fill = [float(problem.demand[s.models, s.type_index].sum(axis=0).max()) for s in servers]
    order = sorted(range(len(servers)), key=lambda k: fill[k])[:max_servers]
    dead: set[int] = set()
    merged: list[Server] = []
    for a_pos, a in enumerate(order):
        if a in dead:
            continue
        for b in order[a_pos + 1 :]:
            if b in dead or a in dead:
                continue
            sa, sb = servers[a], servers[b]
            if len(sa.models) + len(sb.models) > problem.max_models or set(sa.models) & set(sb.models):
                continue
            total = totals[a] + totals[b]
            ok = np.all(total <= 1.0 + EPS, axis=1)
            ok &= problem.fits[sa.models].all(axis=0) & problem.fits[sb.models].all(axis=0)
            if not ok.any():
                continue
            t = int(np.argmin(np.where(ok, problem.prices, np.inf)))
            if problem.prices[t] < problem.prices[sa.type_index] + problem.prices[sb.type_index] - 1e-9:
                dead.update((a, b))
                merged.append(Server(t, sorted(sa.models + sb.models)))
                break
    return [s for k, s in enumerate(servers) if k not in dead] + merged


def improve(
    problem: Problem, servers: list[Server], max_rounds: int = 4, max_attempts: int = 400
) -> list[Server]:
    """Local search: eliminate, merge and right-size until the cost stops falling or rounds run out."""
    best = right_size(problem, servers)
    best_cost = packing_cost(problem, best)
    for _ in range(max_rounds):
        cand = eliminate_servers(problem, best, max_attempts)
        cand = merge_pairs(problem, cand, max_servers=60)
        cand = right_size(problem, cand)
        cost = packing_cost(problem, cand)
        if cost >= best_cost - 1e-9:
            break
        best, best_cost = cand, cost
    return best


def preopen_from_relaxation(servers_by_type: FloatArray, floor_types: set[int] | None = None) -> list[int]:
    """Servers to open first: the relaxation's count per type rounded up, except the types in
    `floor_types` (None: every type), which are rounded down."""
    down = set(range(len(servers_by_type))) if floor_types is None else floor_types
    counts = [
        np.floor(n + 1e-6) if t in down else np.ceil(n - 1e-6) for t, n in enumerate(servers_by_type.tolist())
    ]
    return [t for t in np.argsort(-servers_by_type).tolist() for _ in range(int(counts[t]))]


def rounding_variants(servers_by_type: FloatArray, max_types: int = 4) -> list[set[int] | None]:
    """Roundings to try: all up, all down, and all up but one of the most fractional types down."""
    frac = servers_by_type - np.floor(servers_by_type + 1e-6)
    fractional = [int(t) for t in np.argsort(-frac) if frac[t] > 1e-6][:max_types]
    return [set(), None, *({t} for t in fractional)]


def heuristic_packing(
    problem: Problem,
    preferences: list[IntArray],
    max_rounds: int = 4,
    max_attempts: int = 400,
    servers_by_type: FloatArray | None = None,
) -> list[Server]:
    """The cheapest packing found from each start (FFD, then local search). Starts: each preferred-type
    assignment given, the same with the relaxation's servers pre-opened (rounded up and down), and each
    model's cheapest bottleneck type."""
    best: list[Server] | None = None
    best_cost = np.inf
    starts: list[tuple[IntArray, list[int] | None]] = [(p, None) for p in preferences]
    if servers_by_type is not None and preferences and servers_by_type.sum() > 0:
        for floor_types in rounding_variants(servers_by_type):
            starts.append((preferences[0], preopen_from_relaxation(servers_by_type, floor_types)))
    starts.append((efficient_types(problem), None))
    seen: set[bytes] = set()
    for pref, pre in starts:
        key = pref.tobytes() + np.asarray(pre or [], dtype=np.int64).tobytes()
        if key in seen:
            continue
        seen.add(key)
        packing = improve(problem, first_fit_decreasing(problem, pref, pre), max_rounds, max_attempts)
        cost = packing_cost(problem, packing)
        if cost < best_cost:
            best, best_cost = packing, cost
    assert best is not None  # efficient_types always adds one candidate
    return best
