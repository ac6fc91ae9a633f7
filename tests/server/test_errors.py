"""The HTTP error mapping: the runtime says what would help in neutral words, the transport in HTTP."""

from __future__ import annotations

import json

from inferpack.errors import ModelNotFound, ModelNotReady, Overloaded, Unauthorized
from inferpack.server.errors import error_response, raw_error_answer


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


def test_the_raw_answer_is_the_responses_bytes() -> None:
    """The early shed's two raw ASGI messages carry exactly what `error_response` sends."""
    errors = [
        Overloaded("full", retry_after_s=2.4, hint="retry later", model_id="m", expected_wait_s=0.0123),
        Overloaded("late: ünïcode ✓", retry_after_s=0.2, model_id="qa-0000", reason="deadline"),
        Overloaded("no model named", expected_wait_s=None),
        ModelNotReady("model 'a' is unavailable", hint="load it first", model_id="a"),
        Unauthorized("no token"),
    ]
    for exc in errors:
        response = error_response(exc)
        start, body = raw_error_answer(exc)
        assert start == {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
        assert body == {"type": "http.response.body", "body": response.body}
