"""Sheds on a real port under `inferpack serve`'s HTTP protocol (server/protocol.py: the shed answered by
uvicorn's protocol, without an ASGI task): 503 with Retry-After and the JSON error body, the shed and
request counters moved, the connection kept alive, and the auth rules still answered first (a shed must
not tell a caller the rules refuse that a model exists)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferpack.server.protocol import ShedHttpToolsProtocol
from inferpack.settings import AuthSettings, BatchingSettings
from tests.integration.conftest import RunningServer, running_server

pytestmark = pytest.mark.slow  # a real server with one model: ~10-30 s to start on a busy 2-core machine

TOKEN = {"Authorization": "Bearer all-token"}
HOPELESS = {"inferpack-deadline-ms": "0.001"} | TOKEN  # 1 us: no batch can make it


@pytest.fixture(scope="module")
def server(demo_repo: Path) -> Iterator[RunningServer]:
    auth = AuthSettings(tokens=["all-token"], metrics_token="metrics-token")
    with running_server(
        demo_repo,
        http=ShedHttpToolsProtocol,
        models=["qa-0000"],
        inference_threads=1,
        batching=BatchingSettings(deadline_ms=0),  # only the tests' headers set a deadline
        auth=auth,
    ) as s:
        # one batch measured: the estimator knows what a batch takes, so the shed can decide
        assert httpx.get(f"{s.url}/predictions/qa-0000", headers=TOKEN, timeout=60).status_code == 200
        yield s


def counter(url: str, name: str, **labels: str) -> float:
    """One counter sample from /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer metrics-token"}, timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_a_shed_answered_by_the_protocol(server: RunningServer) -> None:
    url = server.url
    shed_before = counter(url, "inferpack_requests_shed_total", reason="deadline")
    seed_before = counter(url, "inferpack_requests_total", model="qa-0000", api="seed", code="503")
    v2_before = counter(url, "inferpack_requests_total", model="qa-0000", api="v2", code="503")
    with httpx.Client(base_url=url, timeout=60) as client:  # one keep-alive connection
        for _ in range(3):
            r = client.get("/predictions/qa-0000", headers=HOPELESS)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1 and r.headers["inferpack-error-kind"] == "overloaded"
            assert (
                int(r.headers["inferpack-expected-service-ms"]) >= 0
                and "inferpack-expected-wait-ms" in r.headers
                and float(r.headers["inferpack-lateness"]) >= 1  # what a router multiplies the estimate by
            )
            assert r.headers["content-type"] == "application/json" and "date" in r.headers
            body = r.json()
            assert list(body) == ["error", "hint", "reason", "model"]
            assert body["reason"] == "deadline" and body["model"] == "qa-0000" and "deadline" in body["error"]
        # a body that would answer 400 is never read; the connection still serves what comes next
        r = client.post("/v2/models/qa-0000/infer", content=b"{not json", headers=HOPELESS)
        assert r.status_code == 503 and r.json()["reason"] == "deadline"
        assert client.get("/predictions/qa-0000", headers=TOKEN).status_code == 200
    assert counter(url, "inferpack_requests_shed_total", reason="deadline") == shed_before + 4
    assert (
        counter(url, "inferpack_requests_total", model="qa-0000", api="seed", code="503") == seed_before + 3
    )
    assert counter(url, "inferpack_requests_total", model="qa-0000", api="v2", code="503") == v2_before + 1


def test_callers_the_auth_rules_refuse_hear_about_auth_not_the_model(server: RunningServer) -> None:
    shed_before = counter(server.url, "inferpack_requests_shed_total", reason="deadline")
    hopeless = {"inferpack-deadline-ms": "0.001"}
    for headers in (hopeless, hopeless | {"Authorization": "Bearer wrong"}):
        r = httpx.get(f"{server.url}/predictions/qa-0000", headers=headers, timeout=60)
        assert r.status_code == 401 and "qa-0000" not in r.text, r.text
    assert counter(server.url, "inferpack_requests_shed_total", reason="deadline") == shed_before
