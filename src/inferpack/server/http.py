"""What the HTTP transports share: timing each inference request (metrics and the per-request debug line),
the cold/warm load and expected-wait headers, the request deadline header, cancelling a request whose
client disconnected, and optional JSON bodies.

On a client disconnect uvicorn does not cancel the handler: it only answers the app's next `receive()`
with `http.disconnect` (and drops whatever the app sends later). So once a handler has read its body,
`until_disconnect` races the inference against a task waiting on `receive()`, and cancels the inference
when the client has gone; the batcher then takes the request out of its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

from inferpack.errors import ClientDisconnected, InferpackError, InvalidInput
from inferpack.server.errors import (
    DEADLINE_HEADER,
    EXPECTED_SERVICE_HEADER,
    EXPECTED_WAIT_HEADER,
    LATENESS_HEADER,
    status_of,
)
from inferpack.server.metrics import ServerMetrics
from inferpack.server.v2 import NESTED_TOO_DEEPLY

# One line per inference request at DEBUG (the reference's quiet=False); its own logger, so it can be
# turned on alone. Off by default: a log line costs more than the framework's share of a MiniLM forward.
request_log = logging.getLogger("inferpack.server.requests")
LOAD_HEADER = "X-Inferpack-Model-Load"
MAX_DEADLINE_MS = 3_600_000.0
# scope key: perf_counter time the request arrived, stamped by the early shed (shed.py) in serve's HTTP
# protocol when its headers were parsed (protocol.py), else at the app's entry (app.ShedFirstApp)
ARRIVED_KEY = "inferpack.arrived"
T = TypeVar("T")


def load_header(
    cold: bool, expected_wait_s: float = 0.0, expected_service_s: float = 0.0, lateness: float = 1.0
) -> dict[str, str]:
    """The headers that say whether this request waited for its model to load, how long a new request
    for the model would wait now and then compute (ms), and the recent lateness of such estimates."""
    return {
        LOAD_HEADER: "cold" if cold else "warm",
        EXPECTED_WAIT_HEADER: str(round(expected_wait_s * 1000)),
        EXPECTED_SERVICE_HEADER: str(round(expected_service_s * 1000)),
        LATENESS_HEADER: f"{lateness:.2f}",
    }


def parse_deadline_ms(value: str | None) -> float | None:
    """The deadline header's milliseconds (None when absent); InvalidInput for anything but a positive
    number up to an hour."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not 0 < ms <= MAX_DEADLINE_MS:  # also false for nan
        raise InvalidInput(
            f"header {DEADLINE_HEADER} must be a number of milliseconds in (0, {MAX_DEADLINE_MS:.0f}], "
            f"got {value!r}"
        )
    return ms


def request_deadline(request: Request, arrived: float) -> float | None:
    """The request's deadline on the perf_counter clock: arrival + its header's budget (None: no header).
    Arrival is when the request reached the app (stamped by `shed.EarlyShed`) when known, else `arrived`."""
    ms = parse_deadline_ms(request.headers.get(DEADLINE_HEADER))
    return None if ms is None else request.scope.get(ARRIVED_KEY, arrived) + ms / 1000


async def _disconnected(request: Request) -> None:
    """Return when the client has disconnected (call only after the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (then ClientDisconnected)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected(f"client disconnected from {request.url.path} before the answer")
    return task.result()


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
    except RecursionError as exc:
        raise InvalidInput(NESTED_TOO_DEEPLY) from exc
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc
