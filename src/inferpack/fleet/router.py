"""The router: one endpoint for every model of a fleet, speaking the servers' own APIs.

This module is the HTTP side: routes, headers, the app's lifespan. It forwards each model-scoped request
(seed `/predictions/{model}`, V2 `/v2/models/{model}/...`) through `forwarding` (which copy, what is
retried, fan-out to every copy), over one pooled keep-alive client session for all upstreams
(`upstream`); the choice among copies is `balancer`'s, deadlines and ejection are `outliers`', the
background readiness probe is `probe`'s, the metrics are `routermetrics`'.
Fleet-wide endpoints are answered here: aggregated readiness, the merged repository index, the router's
own metrics.

Bodies and responses are buffered, not streamed: inference payloads are small and buffering keeps the
per-request cost to one upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import generate_latest

from inferpack import __version__
from inferpack.errors import ClientDisconnected, InferpackError
from inferpack.fleet.balancer import Balancer
from inferpack.fleet.forwarding import Forwarder, Refusal
from inferpack.fleet.outliers import Deadlines, OutlierDetector
from inferpack.fleet.placementfiles import PlacementFiles
from inferpack.fleet.probe import HealthProbe
from inferpack.fleet.routermetrics import RouterMetrics
from inferpack.fleet.upstream import Answer, Failure, UpstreamClient
from inferpack.plan import Plan
from inferpack.server.auth import Authenticator, out_of_scope
from inferpack.server.errors import error_response, install_error_handlers
from inferpack.server.http import until_disconnect
from inferpack.settings import AuthSettings, RouterSettings

COPIES_CAP = 4  # models_by_healthy_copies labels: 0, 1, 2, 3, 4+

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


def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _forwardable(scope: MutableMapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k.decode("latin-1").lower() not in _HOP
    ]


def _response(answer: Answer | Refusal) -> Response:
    """An upstream answer passed on (hop-by-hop headers dropped), or the router's own refusal."""
    if isinstance(answer, Refusal):
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = [
        *(h for h in answer.headers if h[0] not in _HOP_RESPONSE_BYTES),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    return response


def _target(scope: MutableMapping[str, Any]) -> str:
    """The request's path and query exactly as received (still encoded)."""
    target: str = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    return target


def create_router_app(
    plan: Plan,
    endpoints: dict[str, str],
    settings: RouterSettings | None = None,
    *,
    auth: AuthSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
    files: PlacementFiles | None = None,
) -> FastAPI:
    """Build the router for a plan and its server URLs (`clock` times ejection periods). With `files`
    (where the plan and the endpoints came from), SIGHUP makes it re-read them and route by the new
    placement. `auth`: the servers' auth settings (none: open).

    The router checks tokens and scopes itself, with the servers' rules, before it looks a model up: it
    answers some requests on its own (404 for a model no server holds, the merged index, readiness,
    metrics), and those must not tell a token about models outside its scope. It forwards the
    Authorization header too, so every server checks again (a server is reachable without the router).
    """
    gate = Authenticator(auth or AuthSettings())
    settings = settings or RouterSettings()
    balancer = Balancer.from_plan(plan)
    missing = [s for s in balancer.servers if s not in endpoints]
    if missing:
        raise ValueError(f"no URL for server(s) {missing} of the plan")
    urls = {name: endpoints[name].rstrip("/") for name in balancer.servers}
    metrics = RouterMetrics()
    client = UpstreamClient(settings.upstream_timeout_s)
    deadlines = Deadlines(
        floor_s=min(settings.deadline_floor_s, settings.upstream_timeout_s),
        factor=settings.deadline_factor,
        ceiling_s=settings.upstream_timeout_s,
        min_samples=settings.deadline_min_samples,
        window=settings.latency_window,
    )
    outliers = OutlierDetector(
        balancer.servers,
        failures=settings.eject_after_failures,
        base_s=settings.eject_base_s,
        max_s=max(settings.eject_max_s, settings.eject_base_s),
        clock=clock,
    )
    forwarder = Forwarder(balancer, client, urls, metrics, deadlines, outliers)
    probe = HealthProbe(
        balancer,
        outliers,
        client,
        urls,
        interval_s=settings.probe_interval_s,
        timeout_s=settings.probe_timeout_s,
    )
    digest = [files.read().digest if files is not None else None]

    def reload() -> None:
        assert files is not None
        try:
            placement = files.read()
        except (InferpackError, OSError) as exc:
            log.error("placement not reloaded, still routing by the previous one: %s", exc)
            return
        forwarder.replace(placement.plan.placement(), placement.endpoints)
        digest[0] = placement.digest
        log.warning(
            "placement reloaded: %d servers, %d models", len(balancer.servers), len(balancer.placement)
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await client.start()
        if files is not None:
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
            except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread (tests)
                log.warning("SIGHUP does not reload the placement here: %s", exc)
        task = asyncio.create_task(probe.run())
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
    app.state.deadlines = deadlines
    app.state.reload_placement = reload
    install_error_handlers(app)

    # model-scoped: forwarded ------------------------------------------------------------------------------
    # Plain Starlette routes: the hot path skips FastAPI's per-request dependency and parameter machinery.
    async def model_route(request: Request) -> Response:
        started = time.perf_counter()
        scope = request.scope
        model_id = request.path_params["model_id"]
        try:
            gate.check_model(request.headers.get("authorization"), model_id)
        except InferpackError as exc:
            response: Response = error_response(exc)
        else:
            body = await request.body()
            try:  # a client that disconnects cancels the upstream call, which the server sees too
                answer = await until_disconnect(
                    request,
                    forwarder.to_one_copy(
                        model_id, request.method, _target(scope), body or None, _forwardable(scope)
                    ),
                )
            except ClientDisconnected:
                metrics.count(499)
                return Response(status_code=499)
            response = _response(answer)
        metrics.count(response.status_code)
        metrics.latency.observe(time.perf_counter() - started)
        return response

    app.add_route("/predictions/{model_id}", model_route, methods=["GET", "POST"])
    app.add_route("/v2/models/{model_id}", model_route, methods=["GET"])
    app.add_route("/v2/models/{model_id}/{rest:path}", model_route, methods=["GET", "POST"])

    @app.post("/v2/repository/models/{model_id}/{action}")
    async def repository_action(request: Request, model_id: str, action: str) -> Response:
        # Load/unload changes state: every copy must do it, and a failure is reported, not retried.
        if not gate.admin_scope(request.headers.get("authorization")).allows(model_id):
            raise out_of_scope(model_id)
        holders = balancer.holders(model_id)
        if holders is None:
            return await model_route(request)
        body = await request.body()
        path = request.scope["raw_path"].decode("latin-1")
        results = await forwarder.to_servers(holders, "POST", path, body, _forwardable(request.scope))
        for server, result in zip(holders, results, strict=True):
            if isinstance(result, BaseException):
                return _json(502, {"error": f"server {server}: {result}"})
            if result.status >= 300:
                return Response(result.body, status_code=result.status, media_type="application/json")
        return _json(200, {})

    # fleet-wide: answered here ----------------------------------------------------------------------------
    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        allowed = gate.inference_scope(request.headers.get("authorization"))
        body = await request.body()
        names = balancer.servers
        results = await forwarder.to_servers(
            names, "POST", "/v2/repository/index", body, _forwardable(request.scope)
        )
        indexes: dict[str, list[dict[str, Any]]] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Failure):
                raise result
            ok = isinstance(result, Answer) and result.status == 200
            indexes[name] = list(json.loads(result.body)) if isinstance(result, Answer) and ok else []
        merged = merge_index(balancer.placement, indexes)
        return JSONResponse([e for e in merged if allowed.allows(str(e["name"]))])

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
    async def ready(request: Request) -> Response:
        # Ready = running with its placement. Not "every model has a copy": with one copy per model a
        # single server restart would take every router pod out, and requests for the other models with
        # it. Per-model availability is in the body and in /metrics instead.
        body: dict[str, Any] = {"ready": True, "servers": {s: balancer.serving(s) for s in balancer.servers}}
        if ejected := [s for s in balancer.servers if balancer.ejected.get(s, False)]:
            body["ejected"] = ejected
        if digest[0] is not None:
            body["placement"] = digest[0]
        unavailable = balancer.unavailable_models()
        if unavailable and gate.sees_operations(request.headers.get("authorization")):
            body["unavailable_models"] = unavailable[:20]
            body["unavailable_count"] = len(unavailable)
        return _json(200, body)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        gate.check_metrics(request.headers.get("authorization"))
        for name in balancer.servers:
            metrics.outstanding.labels(name).set(balancer.outstanding[name])
            metrics.healthy.labels(name).set(1.0 if balancer.healthy[name] else 0.0)
            metrics.ejected.labels(name).set(1.0 if balancer.ejected.get(name, False) else 0.0)
        histogram = balancer.copies_histogram(COPIES_CAP)
        for copies, count in histogram.items():
            metrics.models_by_copies.labels(copies).set(count)
        metrics.models_unavailable.set(histogram["0"])
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
    settings: RouterSettings | None = None,
    auth: AuthSettings | None = None,
    log_level: str = "info",
    files: PlacementFiles | None = None,
) -> None:
    """Run the router until SIGTERM/SIGINT (uvicorn finishes in-flight requests first); SIGHUP re-reads
    `files` when given."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_router_app(plan, endpoints, settings, auth=auth, files=files)
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
