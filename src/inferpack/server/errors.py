"""The one place that maps inferpack errors to HTTP status codes and JSON bodies, and turns the runtime's
neutral remedies (load this model, list the models) into HTTP how-tos."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferpack import errors as e

log = logging.getLogger("inferpack.server")

STATUS: list[tuple[type[e.InferpackError], int]] = [
    (e.InvalidModelId, 400),
    (e.InvalidInput, 400),
    (e.Unauthorized, 401),
    (e.Forbidden, 403),
    (e.ModelNotFound, 404),
    (e.PayloadTooLarge, 413),
    (e.Overloaded, 503),
    (e.ModelNotReady, 503),
    (e.InsufficientStorage, 507),  # before ModelLoadFailed, its base: a memory budget or a disk too small
    (e.ModelLoadFailed, 503),
    (e.RepositoryError, 503),  # e.g. an unreadable manifest: the server is at fault, not the request
    (e.ShuttingDown, 503),
    (e.DeadlineExceeded, 504),  # it waited its whole budget in the queue: a timeout, not a refusal
    (e.ClientDisconnected, 499),  # nobody reads it: the status only counts it in metrics and logs
]


# The time a request may take, in milliseconds from its arrival (a relative budget: no clock is shared
# between client, router and server). The router rewrites it to what is left when it forwards.
DEADLINE_HEADER = "inferpack-deadline-ms"
# The wait a new request for this model would expect on this server now (ms), on answers and sheds: the
# router prefers the copy with the least of it.
EXPECTED_WAIT_HEADER = "inferpack-expected-wait-ms"
# ... and the compute its batch would take (ms): wait + service against the time left is the admission rule
# (runtime/admission.py), which the router applies to what the servers report.
EXPECTED_SERVICE_HEADER = "inferpack-expected-service-ms"
# ... and how much longer than that estimate admitted requests have taken lately (`admission.Lateness`, >= 1),
# which admission multiplies the estimate by for a deadline someone set: so does the router.
LATENESS_HEADER = "inferpack-lateness"

# A 503 says why in this header, so a router can tell "this copy cannot serve the model now" (try
# another copy) from "this copy is overloaded" (a shed: retrying elsewhere would only spread the overload).
ERROR_KIND_HEADER = "inferpack-error-kind"
KINDS: list[tuple[type[e.InferpackError], str]] = [
    (e.Overloaded, "overloaded"),
    (e.ModelNotReady, "model-not-ready"),
    (e.InsufficientStorage, "insufficient-storage"),
    (e.ModelLoadFailed, "model-load-failed"),
    (e.ShuttingDown, "shutting-down"),
    (e.DeadlineExceeded, "deadline-exceeded"),
]
# Kinds a router retries on another copy: the request did not run, and another copy may hold the model.
RETRY_ELSEWHERE = frozenset({"model-not-ready", "model-load-failed", "shutting-down"})


def kind_of(exc: e.InferpackError) -> str | None:
    """The error-kind header's value for a 503 worth telling apart, else None."""
    for cls, kind in KINDS:
        if isinstance(exc, cls):
            return kind
    return None


def status_of(exc: e.InferpackError) -> int:
    """HTTP status for an inferpack error (500 for anything unexpected)."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def http_hint(exc: e.InferpackError) -> str | None:
    """What to do next, said in HTTP where the remedy is a call to this server; else the error's own hint."""
    if isinstance(exc, e.ModelNotReady) and exc.model_id is not None:
        return f"load it with POST /v2/repository/models/{exc.model_id}/load"
    if isinstance(exc, e.ModelNotFound) and exc.model_id is not None:
        return "POST /v2/repository/index lists the models this server knows"
    return exc.hint


def error_parts(exc: e.InferpackError) -> tuple[int, dict[str, str], dict[str, str]]:
    """An error's answer: status, JSON body `{"error": ..., "hint": ...}` and headers (the one place
    that says what an error answer holds; `error_response` and `raw_error_answer` only encode it)."""
    body = {"error": exc.message}
    hint = http_hint(exc)
    if hint:
        body["hint"] = hint
    headers: dict[str, str] = {}
    if isinstance(exc, e.Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        body["reason"] = exc.reason
        if exc.expected_wait_s is not None:
            headers[EXPECTED_WAIT_HEADER] = str(round(exc.expected_wait_s * 1000))
            headers[EXPECTED_SERVICE_HEADER] = str(round(exc.expected_service_s * 1000))
            headers[LATENESS_HEADER] = f"{exc.lateness:.2f}"
    if isinstance(exc, e.Overloaded | e.DeadlineExceeded) and exc.model_id is not None:
        body["model"] = exc.model_id
    if isinstance(exc, e.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    kind = kind_of(exc)
    if kind is not None:
        headers[ERROR_KIND_HEADER] = kind
    return status_of(exc), body, headers


def error_response(exc: e.InferpackError) -> JSONResponse:
    """A JSON error body `{"error": ..., "hint": ...}` with the right status and headers."""
    status, body, headers = error_parts(exc)
    return JSONResponse(body, status_code=status, headers=headers)


# JSONResponse's encoding (starlette.responses.JSONResponse.render), made once: json.dumps with arguments
# builds a new encoder on every call.
_encode_json = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
).encode
_JSON_TYPE = (b"content-type", b"application/json")


def raw_error_answer(exc: e.InferpackError) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages (`http.response.start`, `http.response.body`) of `error_response(exc)`, the
    same bytes on the wire, without building a Response: for the early shed, which answers hundreds of
    requests a second under overload from the event loop the inference threads share the GIL with."""
    status, body, headers = error_parts(exc)
    data = _encode_json(body).encode()
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    raw += [(b"content-length", str(len(data)).encode()), _JSON_TYPE]
    return (
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": data},
    )


def problems_of(errors: Sequence[Any]) -> str:
    """Validation errors (pydantic's, FastAPI's) as one line: `where: what; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: inferpack errors, request validation, plain HTTP errors, and the rest."""

    async def on_inferpack(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, e.InferpackError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": f"invalid request: {problems_of(exc.errors())}"}, status_code=400)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    app.add_exception_handler(e.InferpackError, on_inferpack)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
