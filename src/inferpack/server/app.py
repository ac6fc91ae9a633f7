"""The ASGI app factory: assembles the transports (seed-compatible API, Open Inference Protocol V2 and its
repository extension), the body limit, the lifespan (start-up loads, drain), health and metrics.

The request path: transport (`seed`, `v2_api`: parse, auth, format) -> dataplane (typed, transport-free)
-> registry -> batcher -> model. No module-level app: call `create_app(settings)`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferpack.compile.packedfiles import PackedFiles, default_directory
from inferpack.compile.packing import Pack
from inferpack.compile.tracing import trace_job, trunk_job
from inferpack.errors import PayloadTooLarge
from inferpack.repository.health import Backoff, RecoveryLoop
from inferpack.repository.local import ModelRepository, open_repository
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.devices import check_dtype, default_inference_threads, open_device
from inferpack.runtime.engines import ort_installed, with_engine
from inferpack.runtime.hardware import usable_cores
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.skeletons import preload_libraries
from inferpack.runtime.warmstart import WarmStart
from inferpack.server.auth import Authenticator
from inferpack.server.dataplane import DataPlane
from inferpack.server.errors import error_response, install_error_handlers
from inferpack.server.http import ARRIVED_KEY
from inferpack.server.metrics import ServerMetrics
from inferpack.server.seed import seed_routes
from inferpack.server.shed import EarlyShed
from inferpack.server.v2_api import model_routes, repository_routes, server_metadata
from inferpack.server.v2_schema import ServerMetadata, errors, install_openapi
from inferpack.settings import ServerSettings

log = logging.getLogger("inferpack.server")


class BodyLimit:
    """ASGI middleware: bodies over `limit` bytes get 413 (by Content-Length, or while streaming)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(
            f"request body exceeds the limit of {self.limit} bytes",
            hint="send fewer or shorter texts per request, or raise server.max_body_bytes",
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error_response(too_large)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        await self.app(scope, limited, send)


class ShedFirstApp(FastAPI):
    """FastAPI with the early shed (`shed.EarlyShed`) in front of everything, its own middleware stack
    included: an HTTP request the shed refuses is answered with two raw ASGI messages and never enters
    ServerErrorMiddleware, FastAPI's telemetry and body-limit layers or Starlette's app. Under overload
    most requests are sheds, so these frames were most of what the app spent per request (measured:
    docs/benchmarks.md, "What a shed costs"). `inferpack serve` decides earlier still, in uvicorn's HTTP
    protocol (server/protocol.py); this covers any other server the app runs under."""

    early_shed: EarlyShed | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shed = self.early_shed
        # a request already stamped was decided on by the HTTP protocol (server/protocol.py)
        if shed is not None and scope["type"] == "http" and ARRIVED_KEY not in scope:
            answer = shed.answer(scope)
            if answer is not None:
                await send(answer[0])
                await send(answer[1])
                return
        await super().__call__(scope, receive, send)


def start_recovery(
    repo: ModelRepository, registry: ModelRegistry, settings: ServerSettings
) -> asyncio.Task[None]:
    """List the repository in the background: a degraded one with backoff, a stale one when due (the
    request path never waits on the source); after each listing the registry re-reads the model list."""
    loop = asyncio.get_running_loop()

    async def probe() -> bool:
        return await loop.run_in_executor(None, repo.probe)

    recovery = RecoveryLoop(
        repo.health,
        probe,
        Backoff(settings.repository_retry_initial_s, settings.repository_retry_max_s),
        due=repo.listing_due,
        on_listed=registry.refresh,
    )
    return loop.create_task(recovery.run(), name="repository-recovery")


def mixed_runs(registry: ModelRegistry) -> dict[str, int]:
    """Batches the loaded models of engine mixed ran on eager and on their alternate runtime."""
    out: dict[str, int] = {}
    for entry in registry.entries():
        alternate = entry.loaded.alternate if entry.loaded is not None else None
        if alternate is not None:
            eager, other = alternate.choice.runs()
            out["eager"] = out.get("eager", 0) + eager
            out[alternate.kind] = out.get(alternate.kind, 0) + other
    return out


def packing(settings: ServerSettings) -> Pack:
    """How traced graphs read their linear weights: plain, packed in this process, or packed in files this
    host's server processes share (server.pack_weights, share_packed_weights, packed_weights_dir)."""
    if not settings.pack_weights or not settings.share_packed_weights:
        return settings.pack_weights
    directory = settings.packed_weights_dir
    return PackedFiles(
        Path(directory).expanduser() if directory else default_directory(), settings.packed_weights_max_bytes
    )


def create_app(settings: ServerSettings, repository: ModelRepository | None = None) -> FastAPI:
    """Build a server app: registry, batchers and routes; start-up models load in the lifespan."""
    device = open_device(settings.device)  # DeviceUnavailable (exit status 2) before anything starts
    # engine auto -> mixed where onnxruntime is installed and eager computes fp32, else eager (engines.py)
    settings = with_engine(settings, device.kind, ort=ort_installed())
    check_dtype(settings.dtype, device)
    log.info("inferpack server computes on %s (engine %s)", device.describe(), settings.engine)
    repo = repository if repository is not None else open_repository(settings.repository)
    repo.background_probe = True  # the lifespan's RecoveryLoop re-lists a degraded repository
    threads = settings.inference_threads or default_inference_threads(device, usable_cores())
    metrics = ServerMetrics(settings.metrics_top_k)
    pool = InferencePool(threads, settings.intra_op_threads)
    pool.forward_observer = metrics.observe_forward
    pack = packing(settings)
    registry = ModelRegistry(
        repo,
        settings,
        pool,
        batch_observer=metrics.observe_batch,
        drop_observer=metrics.observe_disconnected,
        load_observer=metrics.observe_load,
        # hot eager models get a traced graph (server.trace_after_batches), busy bases a trunk of graphs
        # (server.trunk_after_batches), packed per server.pack_weights
        tracer=functools.partial(trace_job, pack=pack),
        trunker=functools.partial(trunk_job, pack=pack),
        device=device,
    )
    plane = DataPlane(registry, metrics)
    auth = Authenticator(settings.auth)
    metrics.bind(
        queue_depth=lambda: float(registry.queue_depth()),
        loaded=lambda: float(len(registry.ready_models())),
        known=lambda: float(len(registry.entries())),
    )
    metrics.bind_repository(lambda: float(repo.health.degraded))

    metrics.bind_registry(registry.stats, lambda: registry.ledger.total_bytes, registry.budget_bytes)
    metrics.bind_runtimes(lambda: mixed_runs(registry))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # imports first, off the loop: a lazy server's first cold request should not pay for them
        await asyncio.get_running_loop().run_in_executor(None, preload_libraries)
        await registry.load_startup()
        registry.start_background()
        warm = WarmStart(registry, settings) if settings.warm_start else None
        if warm is not None:
            warm.start()  # in the background: ready now, the hottest models load meanwhile
        recovery = start_recovery(repo, registry, settings)
        plane.started = True
        log.info(
            "inferpack server ready: %d model(s) loaded on %s, %d inference threads",
            len(registry.ready_models()),
            device.name,
            threads,
        )
        try:
            yield
        finally:
            plane.draining = True
            recovery.cancel()
            if warm is not None:
                await warm.close()  # the last write of the access statistics
            await registry.close()
            pool.shutdown()

    app = ShedFirstApp(
        title="inferpack server", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None
    )
    app.early_shed = EarlyShed(registry, auth, metrics)  # before all, FastAPI's own middleware included
    app.state.dataplane = plane
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    # health and server metadata: open, for probes (kubelets send no token); the names of failed models
    # and /metrics follow the auth settings (docs/security.md) --------------------------------------------
    @app.get("/", summary="Seed-compatible health check")
    async def root() -> dict[str, str]:
        return {"Status": "Healthy"}

    @app.get("/v2", summary="V2 server metadata", response_model=ServerMetadata)
    async def v2_server_metadata() -> dict[str, Any]:
        return server_metadata(device.metadata())

    @app.get("/v2/health/live")
    async def live() -> Response:
        return JSONResponse({"live": plane.live()})

    @app.get("/v2/health/ready", responses={503: {"description": "Not ready (starting, draining, failed)"}})
    async def ready(names: bool = Depends(auth.require_operations)) -> Response:
        state = plane.readiness()
        body: dict[str, Any] = {"ready": state.ready}
        if not state.ready:
            body["started"], body["draining"] = state.started, state.draining
            if names:
                body["failed_models"] = state.failed_models
            else:  # model ids are often customer names: counted, named only with the metrics token
                body["failed_count"] = len(state.failed_models)
        if state.repository_degraded:  # still ready: it serves what it holds and what its cache holds
            body["repository"] = {"degraded": True, "reason": state.repository_degraded}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        dependencies=[Depends(auth.require_metrics)],
        responses={200: {"content": {"text/plain": {}}}, **errors(401)},
        response_class=Response,
    )
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # the transports: each router carries its auth dependency -------------------------------------------
    app.include_router(seed_routes(plane, metrics, auth))
    app.include_router(model_routes(plane, metrics, auth))
    app.include_router(repository_routes(plane, auth))
    install_openapi(app)
    return app
