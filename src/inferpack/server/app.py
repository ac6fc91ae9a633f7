"""The ASGI app factory: seed-compatible API, Open Inference Protocol V2, repository extension, metrics.

Endpoints parse HTTP and call the dataplane; they hold no business logic. No module-level app: call
`create_app(settings)`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferpack.errors import InferpackError, InvalidInput, PayloadTooLarge
from inferpack.repository.local import ModelRepository, open_repository
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.hardware import usable_cores
from inferpack.runtime.modeling import preload_libraries
from inferpack.runtime.registry import ModelRegistry
from inferpack.server.auth import Authenticator
from inferpack.server.dataplane import DataPlane
from inferpack.server.errors import error_response, install_error_handlers, status_of
from inferpack.server.metrics import ServerMetrics
from inferpack.server.v2 import HEADER_LENGTH
from inferpack.settings import ServerSettings

log = logging.getLogger("inferpack.server")
LOAD_HEADER = "X-Inferpack-Model-Load"
# The reference server's defaults when seq_0 / seq_1 are absent: a question and a context to answer from.
DEFAULT_QUESTION = "What does the little engine say?"
DEFAULT_CONTEXT = (
    "In the children's story, a small blue engine is asked to pull a long train over a steep mountain. "
    "The big engines refuse, but the little engine agrees and climbs, saying 'I think I can, I think I can'."
)


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


def create_app(settings: ServerSettings, repository: ModelRepository | None = None) -> FastAPI:
    """Build a server app: registry, batchers and routes; start-up models load in the lifespan."""
    repo = repository if repository is not None else open_repository(settings.repository)
    threads = settings.inference_threads or usable_cores()
    metrics = ServerMetrics(settings.metrics_top_k)
    pool = InferencePool(threads, settings.intra_op_threads)
    registry = ModelRegistry(
        repo,
        settings,
        pool,
        batch_observer=metrics.observe_batch,
        load_observer=metrics.observe_load,
    )
    plane = DataPlane(registry, metrics)
    auth = Authenticator(settings.auth)
    metrics.bind(
        queue_depth=lambda: float(registry.queue_depth()),
        loaded=lambda: float(len(registry.ready_models())),
        known=lambda: float(len(registry.entries())),
    )
    metrics.bind_registry(registry.stats, lambda: registry.ledger.total_bytes, registry.budget_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # imports first, off the loop: a lazy server's first cold request should not pay for them
        await asyncio.get_running_loop().run_in_executor(None, preload_libraries)
        await _load_startup_models(plane, settings)
        registry.start_background()
        plane.started = True
        log.info(
            "inferpack server ready: %d model(s) loaded, %d inference threads",
            len(registry.ready_models()),
            threads,
        )
        try:
            yield
        finally:
            plane.draining = True
            await registry.close()
            pool.shutdown()

    app = FastAPI(title="inferpack server", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.dataplane = plane
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    async def timed(model_id: str, api: str, call: Callable[[], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        try:
            response = await call()
        except InferpackError as exc:
            metrics.observe_request(model_id, api, status_of(exc), None)
            raise
        metrics.observe_request(model_id, api, response.status_code, time.perf_counter() - started)
        return response

    # health and server metadata (always open, for probes) -------------------------------------------------
    @app.get("/", summary="Seed-compatible health check")
    async def root() -> dict[str, str]:
        return {"Status": "Healthy"}

    @app.get("/v2", summary="V2 server metadata")
    async def server_metadata() -> dict[str, Any]:
        return plane.server_metadata()

    @app.get("/v2/health/live")
    async def live() -> Response:
        return JSONResponse({"live": plane.live()})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = plane.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # seed-compatible API ----------------------------------------------------------------------------------
    async def seed(request: Request, model_id: str, seq_0: str | None, seq_1: str | None) -> Response:
        auth.check_inference(request.headers.get("authorization"))

        async def call() -> Response:
            question = plane.validate_text(seq_0 if seq_0 is not None else DEFAULT_QUESTION, "seq_0")
            context = plane.validate_text(seq_1 if seq_1 is not None else DEFAULT_CONTEXT, "seq_1")
            detail, cold = await plane.seed_predict(model_id, question, context)
            return JSONResponse({"detail": detail}, headers={LOAD_HEADER: "cold" if cold else "warm"})

        return await timed(model_id, "seed", call)

    @app.get("/predictions/{model_id}", summary="Seed-compatible prediction (query parameters)")
    async def predict_get(
        request: Request, model_id: str, seq_0: str | None = None, seq_1: str | None = None
    ) -> Response:
        return await seed(request, model_id, seq_0, seq_1)

    @app.post("/predictions/{model_id}", summary="Seed-compatible prediction (form fields or JSON)")
    async def predict_post(request: Request, model_id: str) -> Response:
        fields = await _seed_fields(request)
        return await seed(request, model_id, fields.get("seq_0"), fields.get("seq_1"))

    # Open Inference Protocol V2 ---------------------------------------------------------------------------
    @app.get("/v2/models/{model_id}")
    async def model_metadata(request: Request, model_id: str) -> dict[str, Any]:
        auth.check_inference(request.headers.get("authorization"))
        return plane.model_metadata(model_id)

    @app.get("/v2/models/{model_id}/versions/{version}")
    async def model_version_metadata(
        request: Request, model_id: str, version: Annotated[int, "version"]
    ) -> dict[str, Any]:
        auth.check_inference(request.headers.get("authorization"))
        return plane.model_metadata(model_id, version)

    def _ready_response(model_id: str, version: int | None) -> Response:
        ok = plane.model_ready(model_id, version)
        return JSONResponse({"name": model_id, "ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model_id}/ready")
    async def model_ready(model_id: str) -> Response:
        return _ready_response(model_id, None)

    @app.get("/v2/models/{model_id}/versions/{version}/ready")
    async def model_version_ready(model_id: str, version: int) -> Response:
        return _ready_response(model_id, version)

    async def infer(request: Request, model_id: str, version: int | None) -> Response:
        auth.check_inference(request.headers.get("authorization"))

        async def call() -> Response:
            body = await request.body()
            payload, head, cold = await plane.infer_v2(
                model_id, version, body, request.headers.get(HEADER_LENGTH)
            )
            headers = {LOAD_HEADER: "cold" if cold else "warm"}
            if head is None:
                return Response(payload, media_type="application/json", headers=headers)
            headers[HEADER_LENGTH] = str(head)
            return Response(payload, media_type="application/octet-stream", headers=headers)

        return await timed(model_id, "v2", call)

    @app.post("/v2/models/{model_id}/infer")
    async def infer_latest(request: Request, model_id: str) -> Response:
        return await infer(request, model_id, None)

    @app.post("/v2/models/{model_id}/versions/{version}/infer")
    async def infer_version(request: Request, model_id: str, version: int) -> Response:
        return await infer(request, model_id, version)

    # repository extension ---------------------------------------------------------------------------------
    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        auth.check_admin(request.headers.get("authorization"))
        body = await _optional_json(request)
        return JSONResponse(plane.repository_index(ready_only=bool(body.get("ready", False))))

    @app.post("/v2/repository/models/{model_id}/load")
    async def repository_load(request: Request, model_id: str) -> Response:
        auth.check_admin(request.headers.get("authorization"))
        body = await _optional_json(request)
        version = (body.get("parameters") or {}).get("version")
        if version is not None and not (isinstance(version, int) or str(version).isdigit()):
            raise InvalidInput(f"parameters.version must be an integer, got {version!r}")
        await plane.load(model_id, int(version) if version is not None else None)
        return JSONResponse({})

    @app.post("/v2/repository/models/{model_id}/unload")
    async def repository_unload(request: Request, model_id: str) -> Response:
        auth.check_admin(request.headers.get("authorization"))
        await plane.unload(model_id)
        return JSONResponse({})

    return app


async def _load_startup_models(plane: DataPlane, settings: ServerSettings) -> None:
    """Load the configured models (all when none are named); failures are kept as state, not fatal."""
    registry = plane.registry
    if settings.models is not None:
        wanted = settings.models
    elif settings.lazy_load:
        wanted = []  # lazy servers load on first use
    else:
        wanted = registry.refresh()
    pinned = [m for m in settings.pinned_models if m not in wanted]

    async def one(model_id: str) -> None:
        try:
            await plane.load(model_id)
        except InferpackError as exc:
            log.error("model %s failed to load: %s", model_id, exc)

    await asyncio.gather(*(one(m) for m in pinned))  # pinned first: they must fit the budget
    await asyncio.gather(*(one(m) for m in wanted))


async def _optional_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc


async def _seed_fields(request: Request) -> dict[str, str]:
    """seq_0/seq_1 from a JSON body or form fields (urlencoded or multipart); query parameters as fallback."""
    kind = request.headers.get("content-type", "")
    fields: dict[str, Any] = dict(request.query_params)
    if kind.startswith("application/json"):
        fields.update(await _optional_json(request))
    elif kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    elif (await request.body()).strip():
        raise InvalidInput(f"unsupported content type {kind!r}; send JSON or form fields seq_0 and seq_1")
    out: dict[str, str] = {}
    for key in ("seq_0", "seq_1"):
        if key in fields:
            if not isinstance(fields[key], str):
                raise InvalidInput(f"{key} must be a string")
            out[key] = fields[key]
    return out
