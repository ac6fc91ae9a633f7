"""The Open Inference Protocol's JSON documents as pydantic models: the OpenAPI schema of the V2 and
repository routes (what fuzzers and client generators read).

The infer routes document their body here but parse it themselves (`inferpack.server.v2`), because the
binary tensor extension sends a JSON header followed by raw bytes, which no JSON body model can take.
The repository routes read their small, optional JSON bodies leniently and check them with these models.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from inferpack.errors import InvalidInput
from inferpack.repository.ids import MODEL_ID_PATTERN
from inferpack.server import v2
from inferpack.server.errors import problems_of

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip
REF = "#/components/schemas/{model}"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")  # the protocol lets clients add parameters


class TensorParameters(_Doc):
    """Per-tensor parameters: the binary extension's size of this tensor's bytes after the JSON header, and
    for an output of JSON documents (token-classification's `entities`) their content type."""

    binary_data_size: int | None = Field(default=None, ge=0)
    content_type: str | None = Field(
        default=None,
        description=f"{v2.JSON_CONTENT_TYPE!r} on a BYTES output: each element is one item's JSON "
        "document (UTF-8 text), e.g. its list of entities.",
    )


class RequestInput(BaseModel):
    """One input tensor: text inputs are BYTES of shape [batch] or [batch, 1]."""

    name: str
    shape: list[int] = Field(description="Non-negative dimensions; their product is the element count.")
    datatype: Datatype
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(
        default=None, description="The elements (nested lists are flattened); absent with binary_data_size."
    )


class OutputParameters(_Doc):
    """Per-output parameters: `binary_data` asks for this output in binary form."""

    binary_data: bool | None = None


class RequestOutput(BaseModel):
    """An output the client wants (default: every output of the model)."""

    name: str
    parameters: OutputParameters | None = None


class RequestParameters(_Doc):
    """Request parameters: `binary_data_output` asks for every output in binary form."""

    binary_data_output: bool | None = None


class InferenceRequest(BaseModel):
    """A V2 inference request (JSON, or the JSON header of a binary-extension body)."""

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor: `data` in JSON, or `parameters.binary_data_size` bytes after the JSON header."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: TensorParameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """A V2 inference response."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class MetadataParameters(_Doc):
    """Parameters of an input or output in model metadata."""

    content_type: str | None = Field(
        default=None,
        description=f"{v2.JSON_CONTENT_TYPE!r}: a BYTES output of one JSON document per item, of any "
        "length (token-classification's `entities`: a list of {entity_group, score, word, start, end}).",
    )


class TensorMetadata(BaseModel):
    """An input or output as model metadata describes it (-1: any size)."""

    name: str
    datatype: Datatype
    shape: list[int]
    optional: bool | None = None
    parameters: MetadataParameters | None = None


class ModelMetadata(BaseModel):
    """V2 model metadata."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class ModelReady(BaseModel):
    """Model readiness: 200 when ready, 503 when known but not ready."""

    name: str
    ready: bool


class ServerMetadata(BaseModel):
    """V2 server metadata, with the device the server computes on."""

    name: str
    version: str
    extensions: list[str]
    device: dict[str, Any] | None = None


class IndexRequest(BaseModel):
    """Repository index request: `ready` lists only the models ready to serve."""

    ready: bool = False


class IndexEntry(BaseModel):
    """One model of the repository index."""

    name: str
    state: str = Field(description="UNAVAILABLE, LOADING, READY, UNLOADING or FAILED.")
    version: str | None = None
    reason: str | None = None


class LoadParameters(_Doc):
    """Load parameters: `version` picks a version (default: the latest)."""

    version: int | None = Field(default=None, ge=0)


class LoadRequest(BaseModel):
    """Repository load request (the body may be empty)."""

    parameters: LoadParameters | None = None


class ErrorBody(BaseModel):
    """Every error answer: what went wrong and, when there is one, what to do next."""

    error: str
    hint: str | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entries of a route's error answers (all share one body)."""
    said = {
        400: "Invalid request",
        401: "Missing or wrong bearer token",
        403: "The token may not use this model, or the API is switched off",
        404: "Unknown model or version",
        413: "Body over the size limit",
        503: "The model is not ready, failed to load, the queue is full, or the server is draining "
        "(the inferpack-error-kind header says which; Retry-After on a full queue)",
    }
    return {code: {"model": ErrorBody, "description": said[code]} for code in codes}


Body = TypeVar("Body", bound=BaseModel)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads an optional JSON body itself: the documented model."""
    ref = {"$ref": REF.format(model=model.__name__)}
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": ref}}}}


def parse_body(model: type[Body], doc: dict[str, Any]) -> Body:
    """A JSON object as the documented model; InvalidInput naming each problem."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise InvalidInput(f"invalid request body: {problems_of(exc.errors())}") from exc


def _example(**texts: str) -> dict[str, Any]:
    """A JSON infer request with one text per named input."""
    inputs = [{"name": n, "datatype": "BYTES", "shape": [1], "data": [t]} for n, t in texts.items()]
    return {"inputs": inputs}


INFER_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": v2.HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "Binary tensor extension: length of the JSON header that starts the body.",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": REF.format(model="InferenceRequest")},
                "examples": {
                    "question-answering": {"value": _example(question="Who climbs?", context="The engine.")},
                    "text": {"value": _example(text="A short text to classify, tag or embed.")},
                },
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Binary tensor extension: an InferenceRequest JSON header of "
                    f"{v2.HEADER_LENGTH} bytes, then the tensors' bytes in input order.",
                }
            },
        },
    },
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": "The outputs: JSON, or with binary outputs an InferenceResponse JSON header of "
        f"{v2.HEADER_LENGTH} bytes followed by the outputs' bytes (application/octet-stream).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **errors(400, 401, 403, 404, 413, 503),
}


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` carry the documents the routes name by reference (the infer request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            documents: list[type[BaseModel]] = [InferenceRequest, IndexRequest, LoadRequest]
            _, defs = models_json_schema([(m, "validation") for m in documents], ref_template=REF)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in defs.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            _invalid_is_400(doc)
            _path_parameters(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _invalid_is_400(doc: dict[str, Any]) -> None:
    """FastAPI documents a 422 on every route with parameters; this server answers invalid requests with
    400 and its one error body (server/errors.py), so the document says that instead."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": "Invalid request", "content": _ERROR_JSON})
    schemas = doc.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def _path_parameters(doc: dict[str, Any]) -> None:
    """Say what a model id is (repository/ids.py: other ids answer 400)."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                if param["name"] == "model_id" and param["in"] == "path":
                    param["schema"] = {"type": "string", "pattern": MODEL_ID_PATTERN, "maxLength": 128}
                    param["description"] = "A model id: letters, digits, '.', '_' and '-', no '..'."


_ERROR_JSON = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
