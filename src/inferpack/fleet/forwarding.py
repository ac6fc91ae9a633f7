"""The router's forwarding policy: which copy gets a request, what is retried, and fan-out to every copy.

Transport-free: it takes the request's method, target, body and headers and returns the upstream's
`Answer`, or a `Refusal` the router turns into its own JSON answer.

- A model-scoped request goes to one copy chosen by the balancer (least outstanding among healthy).
- A connection failure marks that server down and moves on to the next copy: every model-scoped request
  is idempotent (inference and reads), and a refused connection sent nothing at all.
- A broken pooled keep-alive connection (the server had closed it, e.g. it restarted) is retried once on
  the same server with a fresh connection: the request never ran there.
- Each call has a deadline derived from the model's observed latency (`outliers.Deadlines`); a copy that
  misses it is given up on and the request goes to the next copy (inference is idempotent for us), so a
  hung server costs a request one deadline. With no other copy left: 504.
- Every failed call (deadline, connection refused or broken) counts toward the server's ejection
  (`outliers.OutlierDetector`); any HTTP answer resets its count. An ejected server is chosen for nothing
  until the readiness probe (`probe`) brings it back.
- A 503 whose `inferpack-error-kind` says the copy cannot serve the model now (not loaded, failed to load,
  being unloaded: the request never ran) is retried on another copy; the last such answer goes back when
  no copy could. A shed (kind `overloaded`, with Retry-After) is passed back as is: sending it to another
  copy would spread an overload.
- Client deadlines: a request with an `inferpack-deadline-ms` header goes on with what is left of it
  (the header rewritten at each forward). The copy with the least expected wait (as the servers report
  it) is chosen; when even its wait + compute is past what is left (the servers' own admission rule,
  `admission.shed_reason`), the router sheds at once (503 + Retry-After, kind `overloaded`) instead of
  queueing work no copy can finish in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferpack.errors import InvalidModelId
from inferpack.fleet.balancer import Balancer
from inferpack.fleet.outliers import Deadlines, OutlierDetector
from inferpack.fleet.routermetrics import RouterMetrics
from inferpack.fleet.upstream import Answer, Failure, UpstreamClient
from inferpack.repository.ids import validate_model_id
from inferpack.runtime.admission import Estimate, retry_after_s, shed_reason
from inferpack.server.errors import (
    DEADLINE_HEADER,
    ERROR_KIND_HEADER,
    EXPECTED_SERVICE_HEADER,
    EXPECTED_WAIT_HEADER,
    LATENESS_HEADER,
    RETRY_ELSEWHERE,
)

Headers = list[tuple[str, str]]
_KIND = ERROR_KIND_HEADER.encode()
_WAIT = EXPECTED_WAIT_HEADER.encode()
_SERVICE = EXPECTED_SERVICE_HEADER.encode()
_LATENESS = LATENESS_HEADER.encode()
_RETRY_KINDS = frozenset(k.encode() for k in RETRY_ELSEWHERE)
log = logging.getLogger("inferpack.router")


def not_ready_kind(answer: Answer) -> str | None:
    """The error kind of a 503 a copy sent because it cannot serve the model now, else None."""
    if answer.status != 503:
        return None
    for name, value in answer.headers:
        if name == _KIND and value in _RETRY_KINDS:
            return value.decode()
    return None


def reported_estimate(answer: Answer) -> tuple[Estimate, float] | None:
    """The expected wait and compute (s) a server reported on its answer, if it did, and the lateness it
    reported with them (a missing compute header counts as 0, a missing or invalid lateness as 1: an older
    server)."""
    found: dict[bytes, float] = {}
    lateness = 1.0
    for name, value in answer.headers:
        if name in (_WAIT, _SERVICE):
            try:
                found[name] = float(value) / 1000
            except ValueError:
                return None
        elif name == _LATENESS:
            with contextlib.suppress(ValueError):
                lateness = float(value)
    if _WAIT not in found:
        return None
    return Estimate(found[_WAIT], found.get(_SERVICE, 0.0)), (lateness if math.isfinite(lateness) else 1.0)


def deadline_budget_s(headers: Headers) -> float | None:
    """The request's deadline budget in seconds from its header; None when absent or not a positive number
    (an invalid value goes on unchanged: the server answers it with 400)."""
    for name, value in headers:
        if name.lower() == DEADLINE_HEADER:
            try:
                ms = float(value)
            except ValueError:
                return None
            return ms / 1000 if ms > 0 and math.isfinite(ms) else None
    return None


def with_deadline(headers: Headers, left_s: float) -> Headers:
    """`headers` with the deadline header set to `left_s` (ms, at least 1)."""
    kept = [(k, v) for k, v in headers if k.lower() != DEADLINE_HEADER]
    return [*kept, (DEADLINE_HEADER, str(max(1, math.floor(left_s * 1000))))]


@dataclass(frozen=True)
class Refusal:
    """The router answers itself (no copy could): HTTP status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def shed_refusal(model: str, estimate: Estimate, left_s: float, lateness: float = 1.0) -> Refusal:
    """Every copy of `model` expects a longer wait + compute (times the copy's recent lateness) than the
    request has left: 503 + Retry-After."""
    return Refusal(
        503,
        {
            "error": f"every copy of model {model!r} expects a wait of at least {estimate.wait_s * 1000:.0f} "
            f"ms + service {estimate.service_s * 1000:.0f} ms"
            + (f" (x {lateness:.2f}, the copy's recent lateness)" if lateness > 1 else "")
            + f", past the request's deadline ({max(left_s, 0.0) * 1000:.0f} ms left)",
            "hint": "retry after the Retry-After delay with a longer deadline, or add copies of this model",
            "model": model,
            "reason": "deadline",
        },
        {"Retry-After": str(max(1, math.ceil(retry_after_s(estimate)))), ERROR_KIND_HEADER: "overloaded"},
    )


class Forwarder:
    """Sends requests to the servers of a placement through one pooled upstream client."""

    def __init__(
        self,
        balancer: Balancer,
        client: UpstreamClient,
        urls: dict[str, str],
        metrics: RouterMetrics,
        deadlines: Deadlines,
        outliers: OutlierDetector,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.clock = clock
        self.balancer = balancer
        self.client = client
        self.urls = urls
        self.metrics = metrics
        self.deadlines = deadlines
        self.outliers = outliers
        # Label children resolved once: this runs on every request.
        self._forwarded = {name: metrics.forwarded.labels(name) for name in balancer.servers}

    def replace(self, placement: dict[str, list[str]], urls: dict[str, str]) -> None:
        """Forward by a new placement and server URLs from now on. URLs of servers that left are kept
        (in place: the health probe shares the dict) for requests still in flight to them."""
        self.urls.update({name: url.rstrip("/") for name, url in urls.items()})
        self.balancer.replace(placement)
        for name in self.balancer.servers:
            if name not in self._forwarded:
                self._forwarded[name] = self.metrics.forwarded.labels(name)

    async def to_one_copy(
        self, model: str, method: str, target: str, body: bytes | None, headers: Headers
    ) -> Answer | Refusal:
        """Forward a model-scoped request to one copy, retrying on others as the module docstring says."""
        balancer, metrics = self.balancer, self.metrics
        try:
            validate_model_id(model)
        except InvalidModelId as exc:  # the servers' answer (400), not "no server holds it" (404)
            return Refusal(400, {"error": exc.message, "hint": exc.hint})
        if balancer.holders(model) is None:
            return Refusal(
                404,
                {
                    "error": f"model {model!r} is not held by any server of this fleet",
                    "hint": "check the plan (inferpack status lists each server's models)",
                },
            )
        tried: set[str] = set()
        reconnected: set[str] = set()
        failure = "unreachable"
        refused: Answer | None = None  # the last "cannot serve it now" answer, sent back if no copy can
        missed: str | None = None  # the last copy that missed its deadline
        arrived = self.clock()
        budget = deadline_budget_s(headers)
        while (server := balancer.choose(model, tried, now := self.clock())) is not None:
            if budget is not None:
                left = budget - (now - arrived)
                expected = balancer.expected(server, model, now)
                lateness = balancer.lateness(server, model, now)
                # the server's rule (its lateness included) on the least-wait copy: the others wait longer
                if shed_reason(expected, left, lateness) is not None:
                    return shed_refusal(model, expected, left, lateness)
                headers = with_deadline(headers, left)
            if tried or reconnected:
                metrics.retries.inc()
                if missed is not None:
                    metrics.deadline_retries.inc()
            balancer.acquire(server)
            self._forwarded[server].inc()
            deadline = self.deadlines.deadline(model)
            started = time.perf_counter()
            try:
                answer = await self.client.call(
                    method, self.urls[server] + target, body, headers, timeout_s=deadline
                )
                self.outliers.success(server)
                reported = reported_estimate(answer)
                if reported is not None:
                    estimate, lateness = reported
                    balancer.note_wait(
                        server, model, estimate.wait_s, self.clock(), estimate.service_s, lateness
                    )
                kind = not_ready_kind(answer)
                if kind is None:
                    if answer.status < 300:
                        self.deadlines.observe(model, time.perf_counter() - started)
                    return answer
                metrics.upstream_failures.labels(server, kind).inc()
                tried.add(server)  # the server is fine: only this model is not servable there
                refused = answer
            except Failure as exc:
                metrics.upstream_failures.labels(server, exc.kind).inc()
                if exc.kind == "protocol" and exc.reused and server not in reconnected:
                    reconnected.add(server)
                    continue
                tried.add(server)
                self._failed(server, exc)
                if exc.kind == "timeout":
                    missed = f"server {server} did not answer within its deadline of {deadline:.3g} s"
                else:
                    balancer.mark_down(server)
                    failure = f"{server}: {exc}"
            finally:
                balancer.release(server)
        if refused is not None:
            return refused
        if not tried and all(balancer.ejected.get(s, False) for s in balancer.holders(model) or []):
            failure = "every copy is ejected after failed calls; a readiness probe brings one back"
        if missed is not None:
            return Refusal(
                504,
                {
                    "error": missed,
                    "hint": "the deadline follows the model's observed latency "
                    "(router.deadline_* settings); inferpack status shows the servers",
                },
            )
        return Refusal(
            503,
            {
                "error": f"no server holding model {model!r} is reachable ({failure})",
                "hint": "the supervisor restarts dead servers; inferpack status shows them",
            },
        )

    def _failed(self, server: str, exc: Failure) -> None:
        """Count a failed call toward `server`'s ejection, and eject it when that was one too many."""
        period = self.outliers.failure(server)
        if period is not None:
            self.balancer.eject(server)
            self.metrics.ejections.labels(server).inc()
            log.warning(
                "server %s ejected for %g s after %d failed calls in a row (last: %s %s)",
                server, period, self.outliers.failures, exc.kind, exc,
            )  # fmt: skip

    async def to_servers(
        self, servers: list[str], method: str, target: str, body: bytes | None, headers: Headers
    ) -> list[Answer | BaseException]:
        """The same request to each of `servers` at once (no retries): their answers or exceptions, in
        order. For what every copy must do (load, unload) or what every server knows (the index)."""
        return await asyncio.gather(
            *(self.client.call(method, self.urls[s] + target, body, headers) for s in servers),
            return_exceptions=True,
        )
