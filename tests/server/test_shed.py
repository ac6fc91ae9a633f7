"""The early shed's pure parts: which paths are inference routes, and the deadline header's budget."""

from __future__ import annotations

import pytest

from inferpack.server.shed import header_deadline_s, inference_target


def test_inference_routes_name_their_model_and_version() -> None:
    assert inference_target("/predictions/qa-0000") == ("qa-0000", "seed", None)
    assert inference_target("/v2/models/qa-0000/infer") == ("qa-0000", "v2", None)
    assert inference_target("/v2/models/qa-0000/versions/3/infer") == ("qa-0000", "v2", 3)
    for other in (
        "/predictions/",
        "/predictions/a/b",
        "/v2/models/qa-0000",
        "/v2/models/qa-0000/ready",
        "/v2/models//infer",
        "/v2/models/qa-0000/versions/x/infer",
        "/v2/repository/models/qa-0000/load",
        "/metrics",
    ):
        assert inference_target(other) is None, other


def test_the_deadline_header_budget() -> None:
    assert header_deadline_s(None) is None
    assert header_deadline_s(b"250") == pytest.approx(0.25)
    # what the route answers with 400 passes through untouched: never shed, never admitted here
    for bad in (b"soon", b"0", b"-5", b"nan", b"3600001"):
        assert header_deadline_s(bad) is False, bad
