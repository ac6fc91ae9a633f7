"""Placement and the router's choice of server: least expected wait, then least outstanding requests,
among healthy copies.

Pure logic, no I/O and no clock: the router calls `choose`/`acquire`/`release` around each forward,
`mark_down`/`mark_up` from its failures and health probes, `eject`/`readmit` from the outlier detector
(`outliers`), and `note_wait` with the expected wait and compute each server reports for a model (headers
`inferpack-expected-wait-ms`, `inferpack-expected-service-ms`), passing its own clock's `now`. A reported
wait counts down with time since it was reported (the queue drains while nobody looks), so a copy that shed
once is tried again as soon as its queue should have drained; the compute does not (a batch still has to
run) while the report is fresh (`REPORT_FRESH_S`); an older report is forgotten, so a copy whose last
report said no request can make a tight deadline gets one again and reports afresh (the server probes an
idle pool whose batch times went stale: a router shedding on the stale report for good would lock the
model out). `expected` gives both as the server's admission `Estimate`, for the same shed rule.
Everything runs on one event loop, so plain numbers suffice (no locks).
"""

from __future__ import annotations

from inferpack.plan import Plan
from inferpack.runtime.admission import Estimate

WAIT_RESOLUTION_S = 0.01  # waits closer than this are a tie: then the fewest outstanding requests win
REPORT_FRESH_S = 5.0  # a copy's reported compute counts this long after its last report, then is forgotten


class Balancer:
    """Model -> servers holding it, with per-server outstanding counts and health."""

    def __init__(self, placement: dict[str, list[str]]) -> None:
        self.outstanding: dict[str, int] = {}
        self.healthy: dict[str, bool] = {}
        self.ejected: dict[str, bool] = {}
        # (server, model) -> (wait s, at, service s, lateness)
        self.waits: dict[tuple[str, str], tuple[float, float, float, float]] = {}
        self._turn = 0
        self.replace(placement)

    @classmethod
    def from_plan(cls, plan: Plan) -> Balancer:
        """A balancer for a plan's placement."""
        return cls(plan.placement())

    @property
    def servers(self) -> list[str]:
        """Every server that holds at least one model, sorted."""
        return self._servers

    def replace(self, placement: dict[str, list[str]]) -> None:
        """Route by a new placement from now on (a running fleet's re-plan). New servers start healthy
        with nothing outstanding; servers that left keep their counters, which requests still in flight
        to them release."""
        self.placement = {model: list(servers) for model, servers in placement.items()}
        self._servers = sorted({s for servers in self.placement.values() for s in servers})
        for name in self._servers:
            self.outstanding.setdefault(name, 0)
            self.healthy.setdefault(name, True)
            self.ejected.setdefault(name, False)

    def holders(self, model: str) -> list[str] | None:
        """Servers holding `model` in plan order, or None when no server holds it."""
        return self.placement.get(model)

    def note_wait(
        self,
        server: str,
        model: str,
        wait_s: float,
        now: float,
        service_s: float = 0.0,
        lateness: float = 1.0,
    ) -> None:
        """`server` reported at `now` that a new request for `model` would wait `wait_s` there, then compute
        for `service_s`, and that its admitted requests have lately taken `lateness` times their estimate."""
        if model in self.placement:  # bounded by the placement, whatever ids requests carry
            self.waits[(server, model)] = (max(wait_s, 0.0), now, max(service_s, 0.0), max(lateness, 1.0))

    def expected(self, server: str, model: str, now: float) -> Estimate:
        """The wait last reported for `model` on `server` less the time since, and the compute reported
        with it (both 0 when none reported, or when the report is older than `REPORT_FRESH_S`)."""
        report = self._fresh(server, model, now)
        if report is None:
            return Estimate(0.0, 0.0)
        wait, at, service, _ = report
        return Estimate(max(0.0, wait - max(0.0, now - at)), service)

    def lateness(self, server: str, model: str, now: float) -> float:
        """The lateness `server` last reported with its estimate for `model` (1 when none, or stale): the
        factor its admission multiplies that estimate by for a deadline someone set."""
        report = self._fresh(server, model, now)
        return 1.0 if report is None else report[3]

    def _fresh(self, server: str, model: str, now: float) -> tuple[float, float, float, float] | None:
        """`server`'s last report for `model`, unless there is none or it is older than `REPORT_FRESH_S`."""
        report = self.waits.get((server, model))
        return None if report is None or now - report[1] > REPORT_FRESH_S else report

    def expected_wait(self, server: str, model: str, now: float) -> float:
        """The wait last reported for `model` on `server`, less the time since (0 when none reported)."""
        return self.expected(server, model, now).wait_s

    def choose(
        self, model: str, exclude: frozenset[str] | set[str] = frozenset(), now: float | None = None
    ) -> str | None:
        """The server to send `model`'s next request to, or None when every holder is excluded.

        Healthy holders come first; among them the least expected wait (when `now` is given; waits within
        `WAIT_RESOLUTION_S` tie), then the fewest outstanding requests wins, ties taken in turn so that an
        idle fleet still spreads its load. When every remaining holder is marked down they are tried
        anyway: a mark may be older than the server's recovery, and a refused connection is cheap.
        Ejected holders are never chosen: they missed their deadlines, and trying one costs a deadline.
        """
        holders = self.placement.get(model)
        if not holders:
            return None
        candidates = [s for s in holders if s not in exclude and not self.ejected.get(s, False)]
        if not candidates:
            return None
        healthy = [s for s in candidates if self.healthy[s]]
        pool = healthy or candidates
        n = len(pool)
        start = self._turn % n
        self._turn += 1

        def key(server: str) -> tuple[int, int]:
            wait = 0 if now is None else int(self.expected_wait(server, model, now) / WAIT_RESOLUTION_S)
            return wait, self.outstanding[server]

        best = pool[start]
        for k in range(1, n):
            server = pool[(start + k) % n]
            if key(server) < key(best):
                best = server
        return best

    def acquire(self, server: str) -> None:
        """A request to `server` starts."""
        self.outstanding[server] += 1

    def release(self, server: str) -> None:
        """A request to `server` ended (answered or failed)."""
        self.outstanding[server] -= 1

    def mark_down(self, server: str) -> None:
        """Stop choosing `server` while others hold its models (a failed connection or probe)."""
        self.healthy[server] = False

    def mark_up(self, server: str) -> None:
        """`server` answered its readiness probe again."""
        self.healthy[server] = True

    def eject(self, server: str) -> None:
        """Choose `server` for nothing until `readmit` (it keeps failing its calls)."""
        self.ejected[server] = True

    def readmit(self, server: str) -> None:
        """An ejected `server` answered its half-open probe."""
        self.ejected[server] = False

    def serving(self, server: str) -> bool:
        """`server` gets traffic: healthy and not ejected."""
        return self.healthy[server] and not self.ejected.get(server, False)

    def all_available(self) -> bool:
        """Every placed model has at least one healthy copy."""
        return all(any(self.serving(s) for s in servers) for servers in self.placement.values())

    def copies_histogram(self, cap: int) -> dict[str, int]:
        """How many models have 0, 1, ... healthy copies; `cap` and more are counted under "<cap>+".
        A bounded view of per-model availability (labels do not grow with the number of models)."""
        counts = {str(k): 0 for k in range(cap)} | {f"{cap}+": 0}
        for servers in self.placement.values():
            n = sum(1 for s in servers if self.serving(s))
            counts[str(n) if n < cap else f"{cap}+"] += 1
        return counts

    def unavailable_models(self) -> list[str]:
        """Models with no healthy copy, sorted."""
        return sorted(m for m, servers in self.placement.items() if not any(self.serving(s) for s in servers))
