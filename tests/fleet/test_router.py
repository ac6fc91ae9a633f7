"""The router against fake upstreams (httpx.MockTransport): forwarding, choice, retries, 404, aggregation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from inferpack.fleet.router import create_router_app, merge_index
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan

SERVERS = {"s0": 9100, "s1": 9101}
URLS = {name: f"http://127.0.0.1:{port}" for name, port in SERVERS.items()}


def _plan() -> Plan:
    return Plan(
        created_by="test",
        groups=[
            ServerGroup(
                name="local",
                resources=Resources(cpu=1, memory_mb=1000),
                servers=[
                    ServerPlan(name="s0", models=["a", "b"]),
                    ServerPlan(name="s1", models=["a", "c"]),
                ],
            )
        ],
    )


class FakeServers:
    """Upstream servers: answer inference with an echo, refuse connections for those in `down`."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.ready = {"s0": True, "s1": True}
        self.seen: list[tuple[str, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        server = next(n for n, p in SERVERS.items() if p == request.url.port)
        path = request.url.path
        if path == "/v2/health/ready":
            return httpx.Response(200 if self.ready[server] else 503, json={"ready": self.ready[server]})
        if server in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        self.seen.append((server, request))
        if path == "/v2/repository/index":
            models = {"s0": ["a", "b"], "s1": ["a", "c"]}[server]
            return httpx.Response(200, json=[{"name": m, "state": "READY", "version": "1"} for m in models])
        if path.endswith("/bad"):
            return httpx.Response(400, json={"error": "bad input"})
        return httpx.Response(
            200,
            content=b'{"x":1}\x00\x01binary',
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": "7",
                "x-inferpack-model-load": "warm",
                "x-served-by": server,
            },
        )


@pytest.fixture
def fake() -> FakeServers:
    return FakeServers()


@pytest.fixture
def client(fake: FakeServers) -> Iterator[TestClient]:
    app = create_router_app(
        _plan(), URLS, transport=httpx.MockTransport(fake), probe_interval_s=0.05, upstream_timeout_s=5
    )
    with TestClient(app) as c:
        yield c


def test_forwards_method_path_query_body_and_headers_both_ways(client: TestClient, fake: FakeServers) -> None:
    body = b'{"inputs":[]}\x00\x01\x02'
    resp = client.post(
        "/v2/models/b/versions/1/infer?trace=yes",
        content=body,
        headers={
            "Inference-Header-Content-Length": "13",
            "Content-Type": "application/octet-stream",
            "Authorization": "Bearer secret",
        },
    )
    assert resp.status_code == 200
    assert resp.content == b'{"x":1}\x00\x01binary'
    assert resp.headers["inference-header-content-length"] == "7"
    assert resp.headers["x-inferpack-model-load"] == "warm"
    assert resp.headers["content-type"] == "application/octet-stream"
    server, upstream = fake.seen[-1]
    assert server == "s0"  # b is held by s0 only
    assert upstream.method == "POST"
    assert upstream.url.path == "/v2/models/b/versions/1/infer"
    assert upstream.url.query == b"trace=yes"
    assert upstream.content == body
    assert upstream.headers["inference-header-content-length"] == "13"
    assert upstream.headers["authorization"] == "Bearer secret"
    assert upstream.headers["content-type"] == "application/octet-stream"


def test_seed_get_with_query_and_error_status_passed_back(client: TestClient, fake: FakeServers) -> None:
    resp = client.get("/predictions/c", params={"seq_0": "who?", "seq_1": "Bob & Alice"})
    assert resp.status_code == 200 and resp.headers["x-served-by"] == "s1"
    assert fake.seen[-1][1].url.params["seq_1"] == "Bob & Alice"
    bad = client.get("/v2/models/c/bad")
    assert bad.status_code == 400 and bad.json() == {"error": "bad input"}


def test_unknown_model_is_404_naming_it(client: TestClient, fake: FakeServers) -> None:
    for resp in (client.get("/predictions/nope"), client.post("/v2/models/nope/infer", content=b"{}")):
        assert resp.status_code == 404
        assert "'nope'" in resp.json()["error"]
    assert fake.seen == []


def test_copies_share_the_load(client: TestClient) -> None:
    served = [client.get("/predictions/a").headers["x-served-by"] for _ in range(10)]
    assert sorted(set(served)) == ["s0", "s1"]


def test_connection_failure_retries_on_the_other_copy(client: TestClient, fake: FakeServers) -> None:
    fake.down.add("s0")
    served = [client.get("/predictions/a") for _ in range(6)]
    assert all(r.status_code == 200 and r.headers["x-served-by"] == "s1" for r in served)
    metrics = client.get("/metrics").text
    assert 'inferpack_router_upstream_failures_total{kind="connect",server="s0"}' in metrics
    # a model held only by the dead server: 503 naming it, not a hang or a 500
    only = client.get("/predictions/b")
    assert only.status_code == 503 and "'b'" in only.json()["error"]


def test_probe_marks_servers_down_and_back(client: TestClient, fake: FakeServers) -> None:
    balancer = client.app.state.balancer  # type: ignore[attr-defined]
    fake.ready["s1"] = False
    _wait(lambda: not balancer.healthy["s1"])
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json()["unavailable_models"] == ["c"]
    fake.ready["s1"] = True
    _wait(lambda: balancer.healthy["s1"])
    assert client.get("/v2/health/ready").json() == {"ready": True, "servers": {"s0": True, "s1": True}}


def test_repository_index_is_merged(client: TestClient) -> None:
    index = client.post("/v2/repository/index", content=b"{}").json()
    assert [(m["name"], m["state"], m["servers"]) for m in index] == [
        ("a", "READY", ["s0", "s1"]),
        ("b", "READY", ["s0"]),
        ("c", "READY", ["s1"]),
    ]


def test_load_is_sent_to_every_copy(client: TestClient, fake: FakeServers) -> None:
    assert client.post("/v2/repository/models/a/load", content=b"{}").status_code == 200
    hit = sorted(s for s, r in fake.seen if r.url.path == "/v2/repository/models/a/load")
    assert hit == ["s0", "s1"]


def test_metrics_count_requests(client: TestClient) -> None:
    client.get("/predictions/a")
    client.get("/predictions/nope")
    text = client.get("/metrics").text
    assert 'inferpack_router_requests_total{code="200"} 1.0' in text
    assert 'inferpack_router_requests_total{code="404"} 1.0' in text
    assert "inferpack_router_outstanding" in text


def test_merge_index_marks_missing_models() -> None:
    merged = merge_index({"a": ["s0"], "b": ["s1"]}, {"s0": [{"name": "a", "state": "LOADING"}], "s1": []})
    assert merged == [
        {"name": "a", "state": "LOADING", "servers": []},
        {"name": "b", "state": "UNAVAILABLE", "reason": "no holder answered", "servers": []},
    ]


def test_plan_server_without_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="no URL"):
        create_router_app(_plan(), {"s0": URLS["s0"]})


def _wait(condition: object, timeout_s: float = 5.0) -> None:
    """Poll a condition (the probe runs on the app's own loop) with a deadline."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_json_bodies_roundtrip(client: TestClient, fake: FakeServers) -> None:
    payload = {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["q"]}]}
    client.post("/v2/models/a/infer", json=payload)
    assert json.loads(fake.seen[-1][1].content) == payload
