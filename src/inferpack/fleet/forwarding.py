"""The router's forwarding policy: which copy gets a request, what is retried, and fan-out to every copy.

Transport-free: it takes the request's method, target, body and headers and returns the upstream's
`Answer`, or a `Refusal` the router turns into its own JSON answer.

- A model-scoped request goes to one copy chosen by the balancer (least outstanding among healthy).
- A connection failure marks that server down and moves on to the next copy: every model-scoped request
  is idempotent (inference and reads), and a refused connection sent nothing at all.
- A broken pooled keep-alive connection (the server had closed it, e.g. it restarted) is retried once on
  the same server with a fresh connection: the request never ran there.
- A timeout is not retried: a second copy would get the same slow request and double the load.
- A 503 whose `inferpack-error-kind` says the copy cannot serve the model now (not loaded, failed to load,
  being unloaded: the request never ran) is retried on another copy; the last such answer goes back when
  no copy could. A shed (kind `overloaded`, with Retry-After) is passed back as is: sending it to another
  copy would spread an overload.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from inferpack.fleet.balancer import Balancer
from inferpack.fleet.routermetrics import RouterMetrics
from inferpack.fleet.upstream import Answer, Failure, UpstreamClient
from inferpack.server.errors import ERROR_KIND_HEADER, RETRY_ELSEWHERE

Headers = list[tuple[str, str]]
_KIND = ERROR_KIND_HEADER.encode()
_RETRY_KINDS = frozenset(k.encode() for k in RETRY_ELSEWHERE)


def not_ready_kind(answer: Answer) -> str | None:
    """The error kind of a 503 a copy sent because it cannot serve the model now, else None."""
    if answer.status != 503:
        return None
    for name, value in answer.headers:
        if name == _KIND and value in _RETRY_KINDS:
            return value.decode()
    return None


@dataclass(frozen=True)
class Refusal:
    """The router answers itself (no copy could): HTTP status and JSON body."""

    status: int
    body: dict[str, Any]


class Forwarder:
    """Sends requests to the servers of a placement through one pooled upstream client."""

    def __init__(
        self,
        balancer: Balancer,
        client: UpstreamClient,
        urls: dict[str, str],
        metrics: RouterMetrics,
        upstream_timeout_s: float,
    ) -> None:
        self.balancer = balancer
        self.client = client
        self.urls = urls
        self.metrics = metrics
        self.upstream_timeout_s = upstream_timeout_s
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
        while (server := balancer.choose(model, tried)) is not None:
            if tried or reconnected:
                metrics.retries.inc()
            balancer.acquire(server)
            self._forwarded[server].inc()
            try:
                answer = await self.client.call(method, self.urls[server] + target, body, headers)
                kind = not_ready_kind(answer)
                if kind is None:
                    return answer
                metrics.upstream_failures.labels(server, kind).inc()
                tried.add(server)  # the server is fine: only this model is not servable there
                refused = answer
            except Failure as exc:
                metrics.upstream_failures.labels(server, exc.kind).inc()
                if exc.kind == "timeout":
                    return Refusal(
                        504, {"error": f"server {server} did not answer within {self.upstream_timeout_s:g} s"}
                    )
                if exc.kind == "protocol" and exc.reused and server not in reconnected:
                    reconnected.add(server)
                    continue
                tried.add(server)
                balancer.mark_down(server)
                failure = f"{server}: {exc}"
            finally:
                balancer.release(server)
        if refused is not None:
            return refused
        return Refusal(
            503,
            {
                "error": f"no server holding model {model!r} is reachable ({failure})",
                "hint": "the supervisor restarts dead servers; inferpack status shows them",
            },
        )

    async def to_servers(
        self, servers: list[str], method: str, target: str, body: bytes | None, headers: Headers
    ) -> list[Answer | BaseException]:
        """The same request to each of `servers` at once (no retries): their answers or exceptions, in
        order. For what every copy must do (load, unload) or what every server knows (the index)."""
        return await asyncio.gather(
            *(self.client.call(method, self.urls[s] + target, body, headers) for s in servers),
            return_exceptions=True,
        )
