"""The Open Inference Protocol (KServe V2) over HTTP: model metadata, readiness, inference, and the model
repository extension. The wire format itself (tensors, the binary extension) is `inferpack.server.v2`;
this module maps the dataplane's typed objects to V2 documents (datatypes, shapes, platforms)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from inferpack import __version__
from inferpack.runtime.tasks import InputSpec, OutputKind, OutputSpec
from inferpack.server import v2
from inferpack.server import v2_schema as schema
from inferpack.server.auth import Authenticator, Credentials
from inferpack.server.dataplane import DataPlane, InferenceRequest, ModelDescription, ModelStatus
from inferpack.server.http import load_header, optional_json, request_deadline, timed, until_disconnect
from inferpack.server.metrics import ServerMetrics

SERVER_NAME = "inferpack"
EXTENSIONS = ["model_repository", "binary_tensor_data"]
PLATFORMS = {
    "safetensors": "pytorch_safetensors",
    "torchscript": "pytorch_torchscript",
    "onnx": "onnxruntime_onnx",
}
DATATYPES: dict[OutputKind, str] = {"text": "BYTES", "float": "FP32", "int": "INT64", "json": "BYTES"}
# Kinds whose BYTES elements have a content type of their own, said in the tensor's `parameters`.
CONTENT_TYPES: dict[OutputKind, str] = {"json": v2.JSON_CONTENT_TYPE}


# documents ------------------------------------------------------------------------------------------------
def server_metadata(device: dict[str, Any]) -> dict[str, Any]:
    """V2 server metadata, with the device the server computes on (what `--device` resolved to)."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS, "device": device}


def inputs_metadata(inputs: list[InputSpec]) -> list[dict[str, Any]]:
    """Text inputs as V2 tensor metadata (BYTES, one per batch item)."""
    out: list[dict[str, Any]] = []
    for spec in inputs:
        meta: dict[str, Any] = {"name": spec.name, "datatype": "BYTES", "shape": [-1]}
        if spec.optional:
            meta["optional"] = True
        out.append(meta)
    return out


def outputs_metadata(outputs: list[OutputSpec]) -> list[dict[str, Any]]:
    """Outputs as V2 tensor metadata: datatype from the kind, -1 for the batch dimension, and for a JSON
    output (one variable-length document per item, e.g. entities) `parameters.content_type`."""
    out: list[dict[str, Any]] = []
    for o in outputs:
        meta: dict[str, Any] = {"name": o.name, "datatype": DATATYPES[o.kind], "shape": [-1, *o.shape]}
        if o.kind in CONTENT_TYPES:
            meta["parameters"] = {"content_type": CONTENT_TYPES[o.kind]}
        out.append(meta)
    return out


def model_metadata(model: ModelDescription, versions: list[int]) -> dict[str, Any]:
    """V2 model metadata of a described version."""
    return {
        "name": model.model_id,
        "versions": [str(v) for v in versions],
        "platform": PLATFORMS[model.format],
        "inputs": inputs_metadata(model.inputs),
        "outputs": outputs_metadata(model.outputs),
        "parameters": {
            "task": model.task,
            "dtype": model.dtype,
            "max_sequence_length": model.max_sequence_length,
        },
    }


def index_entry(status: ModelStatus) -> dict[str, Any]:
    """One model of the repository index: name, state (upper case), loaded version, failure reason."""
    item: dict[str, Any] = {"name": status.model_id, "state": status.state.upper()}
    if status.version is not None:
        item["version"] = str(status.version)
    if status.reason:
        item["reason"] = status.reason
    if status.repository_degraded:
        item["repository_degraded"] = status.repository_degraded
    return item


# routes ---------------------------------------------------------------------------------------------------
def model_routes(plane: DataPlane, metrics: ServerMetrics, auth: Authenticator) -> APIRouter:
    """`/v2/models/...`: metadata, readiness and inference; every route takes the inference token, and a
    scoped token only for the models of its scope."""
    router = APIRouter(dependencies=[Depends(auth.require_model)], responses=schema.errors(401, 403))
    described = schema.errors(400, 404, 503)

    # exclude_none: a field a tensor does not have (optional, parameters) is left out, not sent as null
    meta_doc: dict[str, Any] = {"response_model": schema.ModelMetadata, "response_model_exclude_none": True}

    @router.get("/v2/models/{model_id}", responses=described, **meta_doc)
    async def metadata(model_id: str) -> dict[str, Any]:
        return model_metadata(plane.describe(model_id), plane.versions(model_id))

    @router.get("/v2/models/{model_id}/versions/{version}", responses=described, **meta_doc)
    async def version_metadata(model_id: str, version: int) -> dict[str, Any]:
        return model_metadata(plane.describe(model_id, version), plane.versions(model_id))

    def ready_response(model_id: str, version: int | None) -> Response:
        ok = plane.model_ready(model_id, version)
        return JSONResponse({"name": model_id, "ready": ok}, status_code=200 if ok else 503)

    readiness: dict[int | str, dict[str, Any]] = {
        200: {"model": schema.ModelReady},
        503: {"model": schema.ModelReady, "description": "Known but not ready"},
        **schema.errors(400, 404),
    }

    @router.get("/v2/models/{model_id}/ready", responses=readiness)
    async def ready(model_id: str) -> Response:
        return ready_response(model_id, None)

    @router.get("/v2/models/{model_id}/versions/{version}/ready", responses=readiness)
    async def version_ready(model_id: str, version: int) -> Response:
        return ready_response(model_id, version)

    async def infer(request: Request, model_id: str, version: int | None) -> Response:
        arrived = time.perf_counter()

        async def call() -> Response:
            model = plane.describe(model_id, version)  # unknown model or version: 404 before the body
            deadline = request_deadline(request, arrived)
            parsed = v2.parse_request(await request.body(), request.headers.get(v2.HEADER_LENGTH))
            takes_pair = any(spec.name == "text_pair" for spec in model.inputs)
            items = v2.items_from_inputs(parsed.inputs, model.pair_input, text_pair=takes_pair)
            prediction = await until_disconnect(
                request, plane.infer(InferenceRequest(model_id, items, version, deadline=deadline))
            )
            if prediction.version != model.version:  # a lazy load picked another version
                model = plane.describe(model_id, prediction.version)
            payload, head = v2.build_response(
                model_id, prediction.version, parsed, prediction.results, outputs_metadata(model.outputs)
            )
            headers = load_header(
                prediction.cold,
                prediction.expected_wait_s,
                prediction.expected_service_s,
                prediction.lateness,
            )
            if head is None:
                return Response(payload, media_type="application/json", headers=headers)
            headers[v2.HEADER_LENGTH] = str(head)
            return Response(payload, media_type="application/octet-stream", headers=headers)

        return await timed(metrics, model_id, "v2", call)

    # The body is documented (schema.INFER_BODY) but parsed by `v2`: the binary extension is not JSON.
    infer_doc: dict[str, Any] = {"openapi_extra": schema.INFER_BODY, "responses": schema.INFER_RESPONSES}

    @router.post("/v2/models/{model_id}/infer", **infer_doc)
    async def infer_latest(request: Request, model_id: str) -> Response:
        return await infer(request, model_id, None)

    @router.post("/v2/models/{model_id}/versions/{version}/infer", **infer_doc)
    async def infer_version(request: Request, model_id: str, version: int) -> Response:
        return await infer(request, model_id, version)

    return router


def repository_routes(plane: DataPlane, auth: Authenticator) -> APIRouter:
    """The model repository extension: the index takes any inference token and shows a scoped one only
    its models; load and unload follow the admin rule (and a scope, where that falls back to tokens)."""
    router = APIRouter(responses=schema.errors(400, 401, 403))

    # Bodies are read leniently (empty, or JSON under any content type: tritonclient sends no JSON type)
    # and then checked against the documented model.
    @router.post(
        "/v2/repository/index",
        response_model=list[schema.IndexEntry],
        openapi_extra=schema.json_body(schema.IndexRequest),
    )
    async def index(request: Request, credentials: Credentials = None) -> Response:
        scope = await auth.require_listing(credentials)
        body = schema.parse_body(schema.IndexRequest, await optional_json(request))
        statuses = plane.repository_index(ready_only=body.ready)
        return JSONResponse([index_entry(s) for s in statuses if scope.allows(s.model_id)])

    changes: dict[str, Any] = {
        "dependencies": [Depends(auth.require_admin_model)],
        "response_model": dict[str, Any],
        "responses": schema.errors(404, 503),
    }

    @router.post(
        "/v2/repository/models/{model_id}/load",
        openapi_extra=schema.json_body(schema.LoadRequest),
        **changes,
    )
    async def load(request: Request, model_id: str) -> Response:
        body = schema.parse_body(schema.LoadRequest, await optional_json(request))
        version = body.parameters.version if body.parameters is not None else None
        await plane.load(model_id, version)
        return JSONResponse({})

    @router.post("/v2/repository/models/{model_id}/unload", **changes)
    async def unload(model_id: str) -> Response:
        await plane.unload(model_id)
        return JSONResponse({})

    return router
