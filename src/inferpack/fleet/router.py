"""The router: one endpoint for every model of a fleet, speaking the servers' own APIs.

It forwards each model-scoped request (seed `/predictions/{model}`, V2 `/v2/models/{model}/...`) to a
server holding that model, chosen by least outstanding requests among healthy copies (`balancer`), with
one pooled keep-alive client session for all upstreams (`upstream`). A connection failure marks the
server down and retries the request on another copy (inference is idempotent; a refused connection sent
nothing).
Fleet-wide endpoints are answered here: aggregated readiness, the merged repository index, the router's
own metrics. A background probe brings servers back once they answer `/v2/health/ready` again.

Bodies and responses are buffered, not streamed: inference payloads are small and buffering keeps the
per-request cost to one upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inferpack import __version__
from inferpack.fleet.balancer import Balancer
from inferpack.fleet.upstream import Failure, UpstreamClient
from inferpack.plan import Plan

log = logging.getLogger("inferpack.router")

# Never forwarded either way: they describe one connection, not the message (RFC 9110 §7.6.1), or are
# recomputed by the next hop (content-length, host) or by our own server (date, server).
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
_HOP_RESPONSE = _HOP | {"date", "server", "content-encoding"}
_HOP_RESPONSE_BYTES = frozenset(h.encode() for h in _HOP_RESPONSE)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)


class RouterMetrics:
    """The router's own Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "inferpack_router_requests",
            "Requests answered by the router, by status code.",
            ["code"],
            registry=r,
        )
        self.forwarded = Counter(
            "inferpack_router_forwarded", "Requests forwarded, by server.", ["server"], registry=r
        )
        self.retries = Counter(
            "inferpack_router_retries", "Requests retried on another copy after a failure.", registry=r
        )
        self.upstream_failures = Counter(
            "inferpack_router_upstream_failures",
            "Failed upstream calls by server and kind (connect, protocol, timeout).",
            ["server", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "inferpack_router_request_duration_seconds",
            "Time from request received to response ready, upstream included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outstanding = Gauge(
            "inferpack_router_outstanding", "Requests in flight, by server.", ["server"], registry=r
        )
        self.healthy = Gauge(
            "inferpack_router_server_healthy",
            "1 when the server is chosen for traffic.",
            ["server"],
            registry=r,
        )
        self._codes: dict[int, Any] = {}

    def count(self, code: int) -> None:
        """Count one answered request (label children cached: this runs on every request)."""
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self.requests.labels(str(code))
        child.inc()


def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _forwardable(scope: MutableMapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k.decode("latin-1").lower() not in _HOP
    ]


def create_router_app(
    plan: Plan,
    endpoints: dict[str, str],
    *,
    upstream_timeout_s: float = 60.0,
    probe_interval_s: float = 0.5,
) -> FastAPI:
    """Build the router for a plan and its server URLs."""
    balancer = Balancer.from_plan(plan)
    missing = [s for s in balancer.servers if s not in endpoints]
    if missing:
        raise ValueError(f"no URL for server(s) {missing} of the plan")
    urls = {name: endpoints[name].rstrip("/") for name in balancer.servers}
    metrics = RouterMetrics()
    forwarded = {name: metrics.forwarded.labels(name) for name in balancer.servers}
    client = UpstreamClient(upstream_timeout_s)

    async def probe(name: str) -> None:
        try:
            up = (await client.call("GET", f"{urls[name]}/v2/health/ready", timeout_s=2.0)).status == 200
        except Failure:
            up = False
        if up != balancer.healthy[name]:
            log.warning("server %s is %s", name, "back" if up else "down")
        (balancer.mark_up if up else balancer.mark_down)(name)

    async def probe_loop() -> None:
        # Servers start as healthy (the supervisor, or Kubernetes readiness, checked them before traffic).
        while True:
            await asyncio.sleep(probe_interval_s)
            await asyncio.gather(*(probe(name) for name in balancer.servers))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await client.start()
        task = asyncio.create_task(probe_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()

    app = FastAPI(title="inferpack router", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.balancer = balancer
    app.state.metrics = metrics

    async def forward(request: Request, model: str) -> Response:
        started = time.perf_counter()
        response = await _forward(request, model)
        metrics.count(response.status_code)
        metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _forward(request: Request, model: str) -> Response:
        if balancer.holders(model) is None:
            return _json(
                404,
                {
                    "error": f"model {model!r} is not held by any server of this fleet",
                    "hint": "check the plan (inferpack status lists each server's models)",
                },
            )
        scope = request.scope
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        headers = _forwardable(scope)
        body = await request.body()
        method = request.method
        tried: set[str] = set()
        reconnected: set[str] = set()
        failure = "unreachable"
        while (server := balancer.choose(model, tried)) is not None:
            if tried or reconnected:
                metrics.retries.inc()
            balancer.acquire(server)
            forwarded[server].inc()
            try:
                upstream = await client.call(method, urls[server] + target, body or None, headers)
            except Failure as exc:
                metrics.upstream_failures.labels(server, exc.kind).inc()
                if exc.kind == "timeout":
                    # Not retried: a second copy would get the same slow request and double the load.
                    return _json(
                        504, {"error": f"server {server} did not answer within {upstream_timeout_s:g} s"}
                    )
                if exc.kind == "protocol" and exc.reused and server not in reconnected:
                    # A pooled keep-alive connection the server had closed (e.g. it restarted): the
                    # request never ran there; try the same server once on a fresh connection.
                    reconnected.add(server)
                    continue
                # Every model-scoped request here is idempotent (inference and reads), so any failure
                # moves on to the next copy; a refused connection sent nothing at all.
                tried.add(server)
                balancer.mark_down(server)
                failure = f"{server}: {exc}"
                continue
            finally:
                balancer.release(server)
            response = Response(upstream.body, status_code=upstream.status)
            response.raw_headers = [
                *(h for h in upstream.headers if h[0] not in _HOP_RESPONSE_BYTES),
                (b"content-length", str(len(upstream.body)).encode()),
            ]
            return response
        return _json(
            503,
            {
                "error": f"no server holding model {model!r} is reachable ({failure})",
                "hint": "the supervisor restarts dead servers; inferpack status shows them",
            },
        )

    # model-scoped: forwarded ------------------------------------------------------------------------------
    # Plain Starlette routes: the hot path skips FastAPI's per-request dependency and parameter machinery.
    async def model_route(request: Request) -> Response:
        return await forward(request, request.path_params["model_id"])

    app.add_route("/predictions/{model_id}", model_route, methods=["GET", "POST"])
    app.add_route("/v2/models/{model_id}", model_route, methods=["GET"])
    app.add_route("/v2/models/{model_id}/{rest:path}", model_route, methods=["GET", "POST"])

    @app.post("/v2/repository/models/{model_id}/{action}")
    async def repository_action(request: Request, model_id: str, action: str) -> Response:
        # Load/unload changes state: every copy must do it, and a failure is reported, not retried.
        holders = balancer.holders(model_id)
        if holders is None:
            return await forward(request, model_id)
        body = await request.body()
        headers = _forwardable(request.scope)
        path = request.scope["raw_path"].decode("latin-1")
        results = await asyncio.gather(
            *(client.call("POST", urls[s] + path, body, headers) for s in holders), return_exceptions=True
        )
        for server, result in zip(holders, results, strict=True):
            if isinstance(result, BaseException):
                return _json(502, {"error": f"server {server}: {result}"})
            if result.status >= 300:
                return Response(result.body, status_code=result.status, media_type="application/json")
        return _json(200, {})

    # fleet-wide: answered here ----------------------------------------------------------------------------
    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        body = await request.body()
        headers = _forwardable(request.scope)

        async def one(name: str) -> list[dict[str, Any]]:
            try:
                resp = await client.call("POST", f"{urls[name]}/v2/repository/index", body, headers)
            except Failure:
                return []
            return list(json.loads(resp.body)) if resp.status == 200 else []

        indexes = await asyncio.gather(*(one(name) for name in balancer.servers))
        return JSONResponse(
            merge_index(balancer.placement, dict(zip(balancer.servers, indexes, strict=True)))
        )

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"Status": "Healthy"}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "inferpack-router", "version": __version__, "extensions": ["model_repository"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = balancer.ready()
        body: dict[str, Any] = {"ready": ok, "servers": dict(balancer.healthy)}
        if not ok:
            body["unavailable_models"] = balancer.unavailable_models()[:20]
        return _json(200 if ok else 503, body)

    @app.get("/metrics")
    async def prometheus() -> Response:
        for name in balancer.servers:
            metrics.outstanding.labels(name).set(balancer.outstanding[name])
            metrics.healthy.labels(name).set(1.0 if balancer.healthy[name] else 0.0)
        return Response(
            generate_latest(metrics.registry), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


def merge_index(
    placement: dict[str, list[str]], indexes: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One V2 repository index for the fleet: each placed model once, READY when any holder has it ready,
    with `servers` naming the copies that are ready. Models no server holds are left out (404 here)."""
    by_server = {name: {str(e.get("name")): e for e in entries} for name, entries in indexes.items()}
    out: list[dict[str, Any]] = []
    for model in sorted(placement):
        entries = [(s, by_server.get(s, {}).get(model)) for s in placement[model]]
        seen = [(s, e) for s, e in entries if e is not None]
        ready = [s for s, e in seen if e.get("state") == "READY"]
        if ready:
            item = dict(next(e for s, e in seen if s == ready[0]))
        elif seen:
            item = dict(seen[0][1])
        else:
            item = {"name": model, "state": "UNAVAILABLE", "reason": "no holder answered"}
        item["servers"] = ready
        out.append(item)
    return out


def serve_router(
    plan: Plan,
    endpoints: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 8100,
    upstream_timeout_s: float = 60.0,
    log_level: str = "info",
) -> None:
    """Run the router until SIGTERM/SIGINT (uvicorn finishes in-flight requests first)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_router_app(plan, endpoints, upstream_timeout_s=upstream_timeout_s)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # a log line per request would cost more than the forward itself
        timeout_graceful_shutdown=10,
        backlog=2048,
    )
    uvicorn.Server(config).run()
