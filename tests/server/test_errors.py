"""The HTTP error mapping: the runtime says what would help in neutral words, the transport in HTTP."""

from __future__ import annotations

import json

from inferpack.errors import ModelNotFound, ModelNotReady, Overloaded
from inferpack.server.errors import error_response


def _body(exc: Exception) -> dict[str, str]:
    return json.loads(error_response(exc).body)  # type: ignore[arg-type]


def test_load_and_list_remedies_become_http_calls() -> None:
    not_ready = ModelNotReady("model 'a' is unavailable", hint="load it first", model_id="a")
    assert error_response(not_ready).status_code == 503
    assert _body(not_ready)["hint"] == "load it with POST /v2/repository/models/a/load"
    unknown = ModelNotFound("model 'z' not found", hint="the repository index lists them", model_id="z")
    assert _body(unknown)["hint"] == "POST /v2/repository/index lists the models this server knows"


def test_other_errors_keep_their_own_hint() -> None:
    assert _body(ModelNotFound("model 'a' has no version 7")) == {"error": "model 'a' has no version 7"}
    assert _body(ModelNotReady("retry", hint="soon")) == {"error": "retry", "hint": "soon"}
    shed = error_response(Overloaded("full", retry_after_s=2.4, hint="retry later"))
    assert shed.status_code == 503 and shed.headers["retry-after"] == "3"  # rounded up: never too early
