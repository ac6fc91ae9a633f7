"""What the HTTP transports share: timing each inference request (metrics and the per-request debug line),
the cold/warm load header, and optional JSON bodies."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from inferpack.errors import InferpackError, InvalidInput
from inferpack.server.errors import status_of
from inferpack.server.metrics import ServerMetrics

# One line per inference request at DEBUG (the reference's quiet=False); its own logger, so it can be
# turned on alone. Off by default: a log line costs more than the framework's share of a MiniLM forward.
request_log = logging.getLogger("inferpack.server.requests")
LOAD_HEADER = "X-Inferpack-Model-Load"


def load_header(cold: bool) -> dict[str, str]:
    """The header that says whether this request waited for its model to load."""
    return {LOAD_HEADER: "cold" if cold else "warm"}


async def timed(
    metrics: ServerMetrics, model_id: str, api: str, call: Callable[[], Awaitable[Response]]
) -> Response:
    """Run one inference request: count it by status, time it when served, log it at DEBUG."""
    started = time.perf_counter()
    try:
        response = await call()
    except InferpackError as exc:
        code = status_of(exc)
        metrics.observe_request(model_id, api, code, None)
        _log(model_id, api, code, time.perf_counter() - started)
        raise
    seconds = time.perf_counter() - started
    metrics.observe_request(model_id, api, response.status_code, seconds)
    _log(model_id, api, response.status_code, seconds)
    return response


def _log(model_id: str, api: str, code: int, seconds: float) -> None:
    if request_log.isEnabledFor(logging.DEBUG):
        request_log.debug(
            "request model=%s api=%s status=%d latency_ms=%.1f", model_id, api, code, seconds * 1000
        )


async def optional_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; {} for an empty body; InvalidInput for anything else."""
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
