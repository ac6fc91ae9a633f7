"""The router against real fake upstreams (tiny ASGI apps on uvicorn threads, loopback ports):
forwarding, choice among copies, retries, 404, aggregation, metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferpack.fleet.router import create_router_app, merge_index
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan
from inferpack.settings import RouterSettings


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


@dataclass
class Seen:
    """One request as an upstream received it."""

    server: str
    method: str
    path: str
    query: bytes
    body: bytes
    headers: dict[str, str]


@dataclass
class FakeServers:
    """Two upstream servers: record every request, answer inference with a binary echo."""

    ready: dict[str, bool] = field(default_factory=lambda: {"s0": True, "s1": True})
    # server -> error kind it answers every model-scoped request with (a 503 like the real server's)
    refuse: dict[str, str] = field(default_factory=dict)
    # servers that hold every request (health included) without answering, like a SIGSTOPped process
    hang: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    # server -> the expected wait (ms) it reports on its answers, as a real server does under load
    wait_ms: dict[str, int] = field(default_factory=dict)
    # server -> the compute (ms) it reports a new request's batch would take
    service_ms: dict[str, int] = field(default_factory=dict)
    # server -> the lateness it reports (how much longer than estimated its admitted requests took lately)
    lateness: dict[str, str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    servers: dict[str, uvicorn.Server] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)

    def app(self, name: str) -> Starlette:
        async def handle(request: Request) -> Response:
            while name in self.hang:
                await asyncio.sleep(0.01)
            path = request.url.path
            if path == "/v2/health/ready":
                ok = self.ready[name]
                return JSONResponse({"ready": ok}, status_code=200 if ok else 503)
            body = await request.body()
            self.seen.append(
                Seen(name, request.method, path, request.scope["query_string"], body, dict(request.headers))
            )
            if path == "/v2/repository/index":
                models = {"s0": ["a", "b"], "s1": ["a", "c"]}[name]
                return JSONResponse([{"name": m, "state": "READY", "version": "1"} for m in models])
            kind = self.refuse.get(name)
            if kind is not None and (path.startswith("/predictions/") or path.startswith("/v2/models/")):
                headers = {"inferpack-error-kind": kind, "x-served-by": name}
                if kind == "overloaded":
                    headers["retry-after"] = "1"
                return JSONResponse({"error": f"{kind} on {name}"}, status_code=503, headers=headers)
            if path.endswith("/bad"):
                return JSONResponse({"error": "bad input"}, status_code=400)
            return Response(
                b'{"x":1}\x00\x01binary',
                headers={
                    "content-type": "application/octet-stream",
                    "inference-header-content-length": "7",
                    "x-inferpack-model-load": "warm",
                    "x-served-by": name,
                    "inferpack-expected-wait-ms": str(self.wait_ms.get(name, 0)),
                    "inferpack-expected-service-ms": str(self.service_ms.get(name, 0)),
                    "inferpack-lateness": self.lateness.get(name, "1.00"),
                },
            )

        return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])

    def start(self) -> None:
        for name in ("s0", "s1"):
            config = uvicorn.Config(self.app(name), host="127.0.0.1", port=0, log_level="warning")
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            _wait(lambda s=server: s.started, 10)  # type: ignore[misc]
            self.servers[name], self.threads[name] = server, thread
            self.urls[name] = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    def kill(self, name: str) -> None:
        """Stop a server: its port refuses connections from now on."""
        self.servers[name].should_exit = True
        self.threads[name].join(10)

    def stop(self) -> None:
        self.hang.clear()
        for name in self.servers:
            self.kill(name)


def _wait(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Poll a condition with a deadline (servers and probes run on other threads)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[FakeServers]:
    servers = FakeServers()
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


def _router(
    fake: FakeServers, probe_interval_s: float, clock: Callable[[], float] = time.monotonic, **settings: float
) -> TestClient:
    config = RouterSettings(probe_interval_s=probe_interval_s, upstream_timeout_s=5, **settings)  # type: ignore[arg-type]
    return TestClient(create_router_app(_plan(), fake.urls, config, clock=clock))


@pytest.fixture
def client(fake: FakeServers) -> Iterator[TestClient]:
    # No probe during a test (interval of an hour): each test decides what the router learns and when.
    with _router(fake, 3600) as c:
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
    upstream = fake.seen[-1]
    assert upstream.server == "s0"  # b is held by s0 only
    assert upstream.method == "POST"
    assert upstream.path == "/v2/models/b/versions/1/infer"
    assert upstream.query == b"trace=yes"
    assert upstream.body == body
    assert upstream.headers["inference-header-content-length"] == "13"
    assert upstream.headers["authorization"] == "Bearer secret"
    assert upstream.headers["content-type"] == "application/octet-stream"


def test_seed_get_with_query_and_error_status_passed_back(client: TestClient, fake: FakeServers) -> None:
    resp = client.get("/predictions/c", params={"seq_0": "who?", "seq_1": "Bob & Alice"})
    assert resp.status_code == 200 and resp.headers["x-served-by"] == "s1"
    assert fake.seen[-1].query == b"seq_0=who%3F&seq_1=Bob+%26+Alice"  # the query string exactly as sent
    bad = client.get("/v2/models/c/bad")
    assert bad.status_code == 400 and bad.json() == {"error": "bad input"}


def test_unknown_model_is_404_naming_it(client: TestClient, fake: FakeServers) -> None:
    for resp in (client.get("/predictions/nope"), client.post("/v2/models/nope/infer", content=b"{}")):
        assert resp.status_code == 404
        assert "'nope'" in resp.json()["error"]
    assert fake.seen == []


def test_an_invalid_model_id_is_400_as_on_a_server(client: TestClient, fake: FakeServers) -> None:
    # The router said 404 "not held by any server of this fleet; check the plan" for ".." or "café".
    for path in ("/predictions/%2e%2e", "/predictions/caf%C3%A9", "/v2/models/%2e%2e/infer"):
        resp = client.post(path, content=b"{}")
        assert resp.status_code == 400, (path, resp.text)
        assert "invalid model id" in resp.json()["error"] and "ids are" in resp.json()["hint"]
    assert fake.seen == []


def test_copies_share_the_load(client: TestClient) -> None:
    served = [client.get("/predictions/a").headers["x-served-by"] for _ in range(10)]
    assert sorted(set(served)) == ["s0", "s1"]


def test_connection_failure_retries_on_the_other_copy(client: TestClient, fake: FakeServers) -> None:
    assert {client.get("/predictions/a").headers["x-served-by"] for _ in range(4)} == {"s0", "s1"}
    fake.kill("s0")  # its pooled keep-alive connections die with it
    served = [client.get("/predictions/a") for _ in range(6)]
    assert all(r.status_code == 200 and r.headers["x-served-by"] == "s1" for r in served)
    metrics = client.get("/metrics").text
    assert 'inferpack_router_upstream_failures_total{kind="connect",server="s0"}' in metrics
    # a model held only by the dead server: 503 naming it, not a hang or a 500
    only = client.get("/predictions/b")
    assert only.status_code == 503 and "'b'" in only.json()["error"]


def test_probe_marks_servers_down_and_back(fake: FakeServers) -> None:
    with _router(fake, 0.05) as client:
        balancer = client.app.state.balancer  # type: ignore[attr-defined]
        fake.ready["s1"] = False
        _wait(lambda: not balancer.healthy["s1"])
        ready = client.get("/v2/health/ready")  # the router stays ready: other models still have copies
        assert ready.status_code == 200 and ready.json()["unavailable_models"] == ["c"]
        metrics = client.get("/metrics").text
        assert "inferpack_router_models_unavailable 1.0" in metrics
        assert 'inferpack_router_models_by_healthy_copies{copies="1"} 2.0' in metrics  # a and b
        # while s1 is marked down, its models with another copy go there only
        assert {client.get("/predictions/a").headers["x-served-by"] for _ in range(4)} == {"s0"}
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
    hit = sorted(r.server for r in fake.seen if r.path == "/v2/repository/models/a/load")
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
        create_router_app(_plan(), {"s0": "http://127.0.0.1:1"})


def test_json_bodies_roundtrip(client: TestClient, fake: FakeServers) -> None:
    payload = {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["q"]}]}
    client.post("/v2/models/a/infer", json=payload)
    assert json.loads(fake.seen[-1].body) == payload
    assert fake.seen[-1].headers["content-type"] == "application/json"


def test_no_cookies_or_client_headers_added(client: TestClient, fake: FakeServers) -> None:
    client.get("/predictions/a", headers={"X-Custom": "1"})
    sent = fake.seen[-1].headers
    assert sent["x-custom"] == "1"
    assert "cookie" not in sent and "accept-encoding" not in sent


@pytest.mark.parametrize("kind", ["model-not-ready", "model-load-failed", "shutting-down"])
def test_model_not_ready_answer_is_retried_on_the_other_copy(
    client: TestClient, fake: FakeServers, kind: str
) -> None:
    fake.refuse["s0"] = kind
    served = [client.get("/predictions/a") for _ in range(6)]
    assert all(r.status_code == 200 and r.headers["x-served-by"] == "s1" for r in served)
    metrics = client.get("/metrics").text
    assert f'inferpack_router_upstream_failures_total{{kind="{kind}",server="s0"}}' in metrics
    assert client.app.state.balancer.healthy["s0"]  # type: ignore[attr-defined]  # only the model failed
    # the only copy cannot serve it: its own 503 goes back (body and kind), not a router refusal
    only = client.get("/predictions/b")
    assert only.status_code == 503 and only.json() == {"error": f"{kind} on s0"}
    assert only.headers["inferpack-error-kind"] == kind


def test_shed_is_passed_back_not_retried(client: TestClient, fake: FakeServers) -> None:
    fake.refuse["s0"] = fake.refuse["s1"] = "overloaded"
    before = len(fake.seen)
    resp = client.get("/predictions/a")
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert len(fake.seen) == before + 1  # one copy saw it: a shed is not spread to the other copy
    assert "inferpack_router_retries_total 0.0" in client.get("/metrics").text


def test_ready_with_placement_and_availability_in_metrics(client: TestClient, fake: FakeServers) -> None:
    assert client.get("/v2/health/ready").json() == {"ready": True, "servers": {"s0": True, "s1": True}}
    text = client.get("/metrics").text
    assert 'inferpack_router_models_by_healthy_copies{copies="2"} 1.0' in text  # a
    assert 'inferpack_router_models_by_healthy_copies{copies="1"} 2.0' in text  # b, c
    assert 'inferpack_router_models_by_healthy_copies{copies="4+"} 0.0' in text
    assert "inferpack_router_models_unavailable 0.0" in text


def test_hung_copy_misses_its_deadline_is_ejected_and_probed_back(fake: FakeServers) -> None:
    """A copy that stops answering (SIGSTOP-like: connections accepted, nothing answered) costs a request
    one deadline derived from the model's latency, then is ejected; a readiness probe brings it back once
    the (fake) clock has passed the ejection period."""
    now = [1000.0]
    settings = {
        "deadline_floor_s": 0.3,
        "deadline_min_samples": 1,
        "eject_after_failures": 2,
        "eject_base_s": 30,
    }
    with _router(fake, 0.05, clock=lambda: now[0], **settings) as client:
        balancer = client.app.state.balancer  # type: ignore[attr-defined]
        deadlines = client.app.state.deadlines  # type: ignore[attr-defined]
        for _ in range(4):
            assert client.get("/predictions/a").status_code == 200
        assert deadlines.deadline("a") == pytest.approx(0.3)  # fast answers: the floor
        fake.hang.add("s0")
        served = [client.get("/predictions/a") for _ in range(6)]
        assert all(r.status_code == 200 and r.headers["x-served-by"] == "s1" for r in served)
        assert balancer.ejected["s0"]
        metrics = client.get("/metrics").text
        assert 'inferpack_router_ejections_total{server="s0"} 1.0' in metrics
        assert 'inferpack_router_server_ejected{server="s0"} 1.0' in metrics
        assert 'inferpack_router_upstream_failures_total{kind="timeout",server="s0"} 2.0' in metrics
        assert "inferpack_router_deadline_retries_total 2.0" in metrics  # later ones went to s1 at once
        # a model whose only copy is ejected is refused at once, not after a deadline
        started = time.perf_counter()
        only = client.get("/predictions/b")
        assert only.status_code == 503 and "ejected" in only.json()["error"]
        assert time.perf_counter() - started < 0.3
        assert client.get("/v2/health/ready").json()["ejected"] == ["s0"]
        fake.hang.clear()
        time.sleep(0.3)  # probes run, but the ejection period (fake clock) is not over: it stays out
        assert balancer.ejected["s0"]
        now[0] += 30.0
        _wait(lambda: not balancer.ejected["s0"])
        assert {client.get("/predictions/a").headers["x-served-by"] for _ in range(4)} == {"s0", "s1"}


def test_deadline_with_no_copy_left_is_504(fake: FakeServers) -> None:
    settings = {"deadline_floor_s": 0.2, "deadline_min_samples": 1}
    with _router(fake, 3600, **settings) as client:
        assert client.get("/predictions/b").status_code == 200
        fake.hang.add("s0")
        resp = client.get("/predictions/b")
        assert resp.status_code == 504 and "deadline" in resp.json()["error"]


def test_least_expected_wait_wins_and_the_deadline_travels_on(client: TestClient, fake: FakeServers) -> None:
    fake.wait_ms["s0"] = 60_000  # s0's queue for "a" is a minute deep; it counts down with time
    assert {client.get("/predictions/a").headers["x-served-by"] for _ in range(4)} >= {"s0"}
    served = [client.get("/predictions/a", headers={"inferpack-deadline-ms": "1000"}) for _ in range(4)]
    assert {r.headers["x-served-by"] for r in served} == {"s1"}
    forwarded = float(fake.seen[-1].headers["inferpack-deadline-ms"])
    assert 0 < forwarded <= 1000  # what is left of the budget when the router forwards


def test_every_copy_missing_the_deadline_is_shed_by_the_router(client: TestClient, fake: FakeServers) -> None:
    fake.wait_ms.update(s0=60_000, s1=60_000)
    for _ in range(4):  # both copies report their queues
        client.get("/predictions/a")
    before = len(fake.seen)
    shed = client.get("/predictions/a", headers={"inferpack-deadline-ms": "2000"})
    assert shed.status_code == 503 and len(fake.seen) == before  # nothing forwarded
    assert int(shed.headers["retry-after"]) >= 59 and shed.headers["inferpack-error-kind"] == "overloaded"
    assert shed.json()["model"] == "a" and shed.json()["reason"] == "deadline"
    # without a deadline the router has no reason to refuse: the server decides
    assert client.get("/predictions/a").status_code == 200


def test_the_router_sheds_by_the_servers_rule_wait_plus_compute(
    client: TestClient, fake: FakeServers
) -> None:
    """A wait alone within the deadline is not enough: the batch must also compute in time, as the server's
    admission says (runtime/admission.py shed_reason); so the router does not forward what the server
    would only shed."""
    fake.wait_ms.update(s0=60_000, s1=60_000)
    fake.service_ms.update(s0=60_000, s1=60_000)
    for _ in range(4):
        client.get("/predictions/a")
    fake.wait_ms.update(s0=0, s1=0)  # the queues drain; each batch still computes for a minute
    for _ in range(4):
        client.get("/predictions/a")
    before = len(fake.seen)
    shed = client.get("/predictions/a", headers={"inferpack-deadline-ms": "2000"})
    assert shed.status_code == 503 and len(fake.seen) == before, shed.text
    assert "service 60000 ms" in shed.json()["error"] and int(shed.headers["retry-after"]) >= 60
    fake.service_ms.update(s0=10, s1=10)
    for _ in range(4):
        client.get("/predictions/a")
    assert client.get("/predictions/a", headers={"inferpack-deadline-ms": "2000"}).status_code == 200


def test_the_router_multiplies_the_estimate_by_the_copys_lateness(
    client: TestClient, fake: FakeServers
) -> None:
    """As the server's admission does for a deadline someone set (admission.Lateness): an estimate that fits
    the deadline alone, but not times the copy's recent lateness, is shed by the router, not forwarded
    only to be shed by the server."""
    fake.service_ms.update(s0=1500, s1=1500)
    fake.lateness.update(s0="1.50", s1="1.50")
    for _ in range(4):
        client.get("/predictions/a")
    before = len(fake.seen)
    shed = client.get("/predictions/a", headers={"inferpack-deadline-ms": "2000"})
    assert shed.status_code == 503 and len(fake.seen) == before, shed.text
    assert "service 1500 ms (x 1.50, the copy's recent lateness)" in shed.json()["error"]
    assert shed.json()["reason"] == "deadline"
    # on time again (or an older server that reports no lateness, or garbage): the estimate alone decides
    fake.lateness.update(s0="1.00", s1="not a number")
    for _ in range(4):
        client.get("/predictions/a")
    assert client.get("/predictions/a", headers={"inferpack-deadline-ms": "2000"}).status_code == 200


class ResettingServer:
    """A port that accepts a connection, reads the request and resets it without an answer: what the router
    meets when the supervisor SIGKILLs a stopped server that holds its request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.resets = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            conn.close()
            self.resets += 1

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_copy_killed_while_it_holds_the_request_is_retried_on_the_other(
    fake: FakeServers, method: str
) -> None:
    killed = ResettingServer()
    try:
        urls = {**fake.urls, "s0": killed.url}
        config = RouterSettings(probe_interval_s=3600, upstream_timeout_s=5)
        with TestClient(create_router_app(_plan(), urls, config)) as client:
            balancer = client.app.state.balancer  # type: ignore[attr-defined]
            for _ in range(4):  # each copy is chosen in turn: s0 gets some of them
                if method == "GET":
                    resp = client.get("/predictions/a")
                else:
                    resp = client.post("/v2/models/a/infer", content=b"{}")
                assert resp.status_code == 200 and resp.headers["x-served-by"] == "s1"
            assert killed.resets >= 1 and not balancer.healthy["s0"]
    finally:
        killed.close()


def test_an_ejected_copy_and_a_copy_marked_down_still_serve_through_the_second(
    client: TestClient, fake: FakeServers
) -> None:
    # s0 ejected (missed deadlines) while a readiness probe of s1 timed out on a busy host: the router
    # tries s1 anyway (a mark may be older than its recovery), never answers 503 for a model s1 holds
    balancer = client.app.state.balancer  # type: ignore[attr-defined]
    balancer.eject("s0")
    balancer.mark_down("s1")
    resp = client.get("/predictions/a")
    assert resp.status_code == 200 and resp.headers["x-served-by"] == "s1"
