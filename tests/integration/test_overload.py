"""Overload on a real port: sheds answer 503 + Retry-After with a JSON body naming the model and the
reason, a queued request whose client disconnected never runs, an expired one answers 504, and the other
models keep serving. The test holds the server's only inference thread itself, so queues build exactly as
the test says (no timing luck)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from inferpack.runtime.batcher import InferencePool
from inferpack.settings import BatchingSettings
from tests.integration.conftest import RunningServer, running_server

pytestmark = pytest.mark.slow  # a real server with two models: ~10-30 s to start on a busy 2-core machine


class Threads:
    """Takes and gives back the server's inference threads from the test (on the server's own loop)."""

    def __init__(self, server: RunningServer) -> None:
        registry = server.app.state.dataplane.registry
        self.pool: InferencePool = registry.pool
        self.loop = registry.entry("qa-0000").batcher._dispatcher.get_loop()

    def hold(self) -> None:
        asyncio.run_coroutine_threadsafe(self.pool.acquire(), self.loop).result(timeout=30)

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.pool.release)


def metric(url: str, name: str) -> float:
    """The value of one series in /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(demo_repo: Path) -> Iterator[RunningServer]:
    # no default deadline: only the tests' own headers set one, so a slow machine cannot expire requests
    batching = BatchingSettings(max_batch_size=1, max_wait_ms=0, max_queue=2, deadline_ms=0)
    with running_server(
        demo_repo, models=["qa-0000", "cls-0000"], inference_threads=1, batching=batching
    ) as s:
        for model in ("qa-0000", "cls-0000"):  # measured once: the estimator knows a batch's time
            assert httpx.get(f"{s.url}/predictions/{model}", timeout=60).status_code == 200
        yield s


def test_a_request_that_cannot_make_its_deadline_is_shed_at_once(server: RunningServer) -> None:
    before = metric(server.url, 'inferpack_requests_shed_total{reason="deadline"}')
    r = httpx.get(f"{server.url}/predictions/qa-0000", headers={"inferpack-deadline-ms": "0.01"}, timeout=60)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1 and r.headers["inferpack-error-kind"] == "overloaded"
    body = r.json()
    assert body["model"] == "qa-0000" and body["reason"] == "deadline" and "deadline" in body["error"]
    assert metric(server.url, 'inferpack_requests_shed_total{reason="deadline"}') == before + 1
    bad = httpx.get(f"{server.url}/predictions/qa-0000", headers={"inferpack-deadline-ms": "soon"})
    assert bad.status_code == 400 and "inferpack-deadline-ms" in bad.json()["error"]
    # shed before the body is read (server/shed.py): a body that would answer 400 is never parsed
    hopeless = {"inferpack-deadline-ms": "0.01", "content-type": "application/json"}
    for path in ("/predictions/qa-0000", "/v2/models/qa-0000/infer"):
        r = httpx.post(f"{server.url}{path}", content=b"{not json", headers=hopeless, timeout=60)
        assert r.status_code == 503 and r.json()["reason"] == "deadline", (path, r.text)
        assert r.json()["model"] == "qa-0000" and int(r.headers["retry-after"]) >= 1
    assert metric(server.url, 'inferpack_requests_shed_total{reason="deadline"}') == before + 3


def test_overload_sheds_one_model_drops_the_gone_and_serves_the_rest(server: RunningServer) -> None:
    url, threads = server.url, Threads(server)
    batches_before = metric(url, "inferpack_batch_size_count")
    depth = lambda: metric(url, "inferpack_queue_depth")  # noqa: E731
    threads.hold()
    held = True
    try:
        # a client that queues a request and goes away: its request leaves the queue, counted
        gone = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        gone.sendall(b"GET /predictions/qa-0000 HTTP/1.1\r\nHost: test\r\n\r\n")
        wait_for(lambda: depth() == 1)
        gone.close()
        wait_for(lambda: metric(url, "inferpack_requests_dropped_disconnected_total") == 1)
        assert depth() == 0

        with ThreadPoolExecutor(max_workers=4) as pool:
            get: Callable[[str], Future[httpx.Response]] = lambda m: pool.submit(  # noqa: E731
                httpx.get, f"{url}/predictions/{m}", timeout=120
            )
            queued = [get("qa-0000"), get("qa-0000")]
            wait_for(lambda: depth() == 2)
            full = httpx.get(f"{url}/predictions/qa-0000", timeout=60)  # qa-0000's queue is full
            assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
            assert full.json()["model"] == "qa-0000" and full.json()["reason"] == "queue_full"
            other = get("cls-0000")  # another model's queue still takes requests
            wait_for(lambda: depth() == 3)
            threads.release()
            held = False
            assert [f.result().status_code for f in [*queued, other]] == [200, 200, 200]
    finally:
        if held:
            threads.release()
    # three batches ran after the hold: the two queued qa requests and the cls one, not the gone one
    assert metric(url, "inferpack_batch_size_count") == batches_before + 3
    assert metric(url, 'inferpack_requests_shed_total{reason="queue_full"}') >= 1
    assert httpx.get(f"{url}/predictions/qa-0000", timeout=60).status_code == 200


def test_a_request_whose_deadline_passes_in_the_queue_answers_504(server: RunningServer) -> None:
    url, threads = server.url, Threads(server)
    threads.hold()
    with ThreadPoolExecutor(max_workers=1) as pool:
        late = pool.submit(
            httpx.get, f"{url}/predictions/qa-0000", headers={"inferpack-deadline-ms": "1000"}, timeout=120
        )
        wait_for(lambda: metric(url, "inferpack_queue_depth") == 1 or late.done())
        assert not late.done(), late.result().text
        queued = time.monotonic()  # it arrived before this, so its deadline is before queued + 1 s
        while time.monotonic() < queued + 1.05:  # past its deadline, whatever the machine's speed
            time.sleep(0.05)
        threads.release()
        r = late.result()
    assert r.status_code == 504 and r.headers["inferpack-error-kind"] == "deadline-exceeded"
    assert r.json()["model"] == "qa-0000" and "deadline" in r.json()["error"]
    assert metric(url, 'inferpack_requests_shed_total{reason="expired"}') >= 1
