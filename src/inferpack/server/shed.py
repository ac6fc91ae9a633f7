"""Early shed: refuse an inference request the server cannot answer within its deadline before any of the
request's work is done (routing, dependencies, reading and parsing the body, tokenising).

Under overload most requests are shed, so what a shed costs decides how much CPU is left for the requests
that are admitted: a shed answered by the route (after FastAPI's routing and dependency injection, the
body read, the JSON parsed and validated) costs several times one answered here. The shed runs before
anything else: in `inferpack serve`'s HTTP protocol once the headers are parsed (`protocol.py`), else at
the app's entry before its whole middleware stack (`app.ShedFirstApp`). It looks at the path and headers
only: for an inference route (`/predictions/{model}`, `/v2/models/{model}[/versions/{v}]/infer`) of a
loaded model, it asks the model's batcher for the same admission decision the batcher makes at enqueue
(`ModelBatcher.admit`, one item: the fewest a request can carry) and answers 503 + Retry-After at once
when it fails. Everything else passes through untouched: a model not loaded (lazy loads, 404s), an
invalid deadline header (400 from the route), and any caller that the auth rules refuse (the route
answers 401/403: a shed must not tell a stranger that a model exists).
What one shed costs the server, as an ASGI middleware and now: docs/benchmarks.md, "What a shed costs".

It also stamps the request's arrival time into the scope, so the deadline counts from here
rather than from the handler (`http.request_deadline`, key `ARRIVED_KEY`).
"""

from __future__ import annotations

import time

from starlette.types import Message, Scope

from inferpack.errors import InferpackError, Overloaded
from inferpack.runtime.registry import ModelRegistry
from inferpack.server.auth import Authenticator
from inferpack.server.errors import DEADLINE_HEADER, raw_error_answer
from inferpack.server.http import ARRIVED_KEY, MAX_DEADLINE_MS
from inferpack.server.metrics import ServerMetrics

_DEADLINE = DEADLINE_HEADER.encode()


def inference_target(path: str) -> tuple[str, str, int | None] | None:
    """(model id, api, version) of an inference route's path, else None."""
    if path.startswith("/predictions/"):
        model = path[len("/predictions/") :]
        return (model, "seed", None) if model and "/" not in model else None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        parts = path[len("/v2/models/") : -len("/infer")].split("/")
        if len(parts) == 1 and parts[0]:
            return parts[0], "v2", None
        if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2].isdigit():
            return parts[0], "v2", int(parts[2])
    return None


def header_deadline_s(value: bytes | None) -> float | bool | None:
    """The deadline header's budget in seconds, None when absent, False when invalid (the route answers
    it with 400)."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        return False
    return ms / 1000 if 0 < ms <= MAX_DEADLINE_MS else False


class EarlyShed:
    """The admission decision before anything else of the server runs (see the module's doc).

    Not an ASGI middleware: serve's HTTP protocol (`protocol.ShedHttpToolsProtocol`) or the app's entry
    (`app.ShedFirstApp`) calls `answer` first thing, so a shed runs no middleware frame at all (FastAPI's
    error, telemetry and body-limit layers, Starlette's app) and builds no Response; it answers with two
    raw ASGI messages (`errors.raw_error_answer`, the same bytes as the routes' error answers)."""

    def __init__(self, registry: ModelRegistry, auth: Authenticator, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.auth = auth
        self.metrics = metrics

    def answer(self, scope: Scope) -> tuple[Message, Message] | None:
        """Stamp an HTTP request's arrival into its scope; the two ASGI messages of its 503 when it is
        shed (counted in the metrics), else None (the app handles it)."""
        arrived = time.perf_counter()
        scope[ARRIVED_KEY] = arrived
        refusal = self._refusal(scope, arrived)
        if refusal is None:
            return None
        model_id, api, exc = refusal
        self.metrics.observe_early_shed(model_id, api, exc.reason)
        return raw_error_answer(exc)

    def _refusal(self, scope: Scope, arrived: float) -> tuple[str, str, Overloaded] | None:
        target = inference_target(scope["path"])
        if target is None:
            return None
        model_id, api, version = target
        batcher = self.registry.ready_batcher(model_id)
        if batcher is None or (version is not None and version != batcher.model.version):
            return None
        deadline_header = authorization = None
        for name, value in scope["headers"]:
            if name == _DEADLINE:
                deadline_header = value
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        budget = header_deadline_s(deadline_header)
        if budget is False:
            return None
        try:
            self.auth.check_model(authorization, model_id)
        except InferpackError:
            return None  # the route gives the auth answer
        soft = budget is None and batcher.default_is_soft
        if budget is None:
            budget = batcher.default_deadline_s()
        try:
            batcher.admit(1, None if budget is None else arrived + budget, arrived, soft=soft)
        except Overloaded as exc:
            return model_id, api, exc
        return None
