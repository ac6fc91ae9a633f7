"""A degraded S3 is an unreachable S3, and a full cache disk is one model's error.

The S3 endpoint refuses connections (a closed port) or answers S3 errors (a small real HTTP server that
answers `InternalError` 500 or `SlowDown` 503 in S3's XML, as a degraded or throttling S3 does): a server
whose cache holds the models starts, serves them, and reports the repository degraded (index, readiness,
metric). The same front then forwards to the real S3 (SeaweedFS): the background re-listing sees a model
pushed meanwhile, clears the degraded state, and the new model loads through it.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from tests.integration.conftest import running_server

from inferpack.repository.demo import make_demo_models
from inferpack.repository.s3 import S3Repository
from inferpack.repository.s3config import make_s3_client, parse_s3_uri
from inferpack.repository.s3push import push_repository

QUESTION = {"question": "Who went home?", "context": "Bob went home after the game."}
ERRORS = {
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "SlowDown": (503, "Please reduce your request rate."),
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class S3Front(ThreadingHTTPServer):
    """An HTTP server on a free port that answers every S3 call with an S3 error (`mode` = its code), or
    forwards it unchanged to `target` (`mode` = "forward"), like a load balancer in front of S3."""

    daemon_threads = True

    def __init__(self, mode: str, target: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.mode = mode
        self.target = target
        self.calls = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: S3Front

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.calls += 1
        if self.server.mode == "forward":
            assert self.server.target is not None
            status, headers, data = _forward(self.server.target, self.command, self.path, self.headers, body)
        else:
            status, message = ERRORS[self.server.mode]
            headers = [("Content-Type", "application/xml")]
            data = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                f"{self.server.mode}</Code><Message>{message}</Message><RequestId>front</RequestId></Error>"
            ).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any


def _forward(
    target: str, method: str, path: str, headers: Any, body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send the request on as it came (the Host header too: it is part of the signature)."""
    parts = urlsplit(target)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(method, path, body=body or None, headers=sent)
        response = conn.getresponse()
        data = response.read()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        return response.status, kept, data
    finally:
        conn.close()


def _closed_port_endpoint() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_demo_models(root, 2, arch="tiny", prefix="s3m")
    return root


def _fill_cache(uri: str, cache: Path, models: list[str]) -> None:
    """Sync every file the models need into the cache, as an earlier run of the server did."""
    repo = S3Repository(parse_s3_uri(uri), cache, make_s3_client())
    for model in models:
        manifest = repo.manifest(model)
        repo.version_dir(model)
        repo.resolve_file(model, repo.latest_version(model), manifest.tokenizer)


@contextmanager
def serving(tmp_path: Path, repository: S3Repository, **settings: Any) -> Iterator[httpx.Client]:
    """A real server (port 0) on the repository object, and a client of it."""
    with (
        running_server(tmp_path / "unused", repository=repository, **settings) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        yield client


def poll(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["refused", "InternalError", "SlowDown"])
def test_a_failing_s3_serves_the_cache_degraded(
    tmp_path: Path, bucket: str, tiny_repo: Path, failure: str
) -> None:
    uri = f"s3://{bucket}/zoo"
    push_repository(tiny_repo, uri)
    cache = tmp_path / "cache"
    _fill_cache(uri, cache, ["s3m-0000", "s3m-0001"])
    front = None if failure == "refused" else S3Front(failure)
    endpoint = _closed_port_endpoint() if front is None else front.endpoint
    repository = S3Repository(parse_s3_uri(uri), cache, make_s3_client(endpoint))
    try:
        with serving(tmp_path, repository, inference_threads=1) as client:
            ready = client.get("/v2/health/ready")
            index = client.post("/v2/repository/index", json={}).json()
            answers = [client.post(f"/predictions/{m}", json=QUESTION) for m in ("s3m-0000", "s3m-0001")]
            degraded = _metric(client, "inferpack_repository_degraded")
    finally:
        if front is not None:
            front.stop()
    assert ready.status_code == 200, ready.text
    reason = ready.json()["repository"]["reason"]
    assert f"listing {uri} failed" in reason
    assert ("Could not connect" in reason) if failure == "refused" else (failure in reason)
    assert [e["name"] for e in index] == ["s3m-0000", "s3m-0001"]
    assert all(e["state"] == "READY" and e["repository_degraded"] == reason for e in index)
    assert [a.status_code for a in answers] == [200, 200]
    assert degraded == 1.0
    if front is not None:
        assert front.calls >= 1  # S3 was asked, and answered errors


@pytest.mark.slow
def test_s3_coming_back_refreshes_the_listing_and_clears_degraded(
    tmp_path: Path, bucket: str, s3_endpoint: str, tiny_repo: Path
) -> None:
    uri = f"s3://{bucket}/back"
    first = tmp_path / "first"
    shutil.copytree(tiny_repo / "s3m-0000", first / "s3m-0000")
    shutil.copytree(tiny_repo / "_shared", first / "_shared")
    push_repository(first, uri)
    cache = tmp_path / "cache"
    _fill_cache(uri, cache, ["s3m-0000"])
    front = S3Front("SlowDown", target=s3_endpoint)
    repository = S3Repository(parse_s3_uri(uri), cache, make_s3_client(front.endpoint))
    settings = {"inference_threads": 1, "repository_retry_initial_s": 0.1, "repository_retry_max_s": 0.3}
    try:
        with serving(tmp_path, repository, **settings) as client:
            assert "SlowDown" in client.get("/v2/health/ready").json()["repository"]["reason"]
            assert client.post("/predictions/s3m-0000", json=QUESTION).status_code == 200
            push_repository(tiny_repo, uri)  # s3m-0001 arrives while S3 is failing for this server
            missing = client.post("/v2/repository/models/s3m-0001/load")
            front.mode = "forward"  # S3 answers again
            poll(lambda: "repository" not in client.get("/v2/health/ready").json())
            index = {e["name"]: e for e in client.post("/v2/repository/index", json={}).json()}
            load = client.post("/v2/repository/models/s3m-0001/load")
            answer = client.post("/predictions/s3m-0001", json=QUESTION)
            degraded = _metric(client, "inferpack_repository_degraded")
    finally:
        front.stop()
    assert missing.status_code == 404  # not in the last listing: unknown until S3 answers
    assert sorted(index) == ["s3m-0000", "s3m-0001"]
    assert not any("repository_degraded" in e for e in index.values())
    assert load.status_code == 200, load.text
    assert answer.status_code == 200 and degraded == 0.0


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 30 MiB tmpfs: a real disk that fills up (mounting needs root; without it the test cannot run)."""
    mount = Path(f"/tmp/inferpack-small-disk-{uuid.uuid4().hex[:8]}")
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


@pytest.mark.slow
def test_a_full_cache_disk_fails_only_the_model_that_does_not_fit(
    tmp_path: Path, bucket: str, tiny_repo: Path, small_disk: Path
) -> None:
    """Each tiny model's weights take ~17 MiB: the first fits the 30 MiB disk, the second does not. fp32
    keeps the loaded model's weights mapped from its file, so evicting its cached copy frees nothing while
    it serves: the answer is a 507 naming the model, the cache and what to do."""
    uri = f"s3://{bucket}/full"
    push_repository(tiny_repo, uri)
    repository = S3Repository(parse_s3_uri(uri), small_disk / "cache", make_s3_client())
    settings = {"models": ["s3m-0000"], "inference_threads": 1, "dtype": "fp32"}
    with serving(tmp_path, repository, **settings) as client:
        assert client.post("/predictions/s3m-0000", json=QUESTION).status_code == 200
        load = client.post("/v2/repository/models/s3m-0001/load")
        index = {e["name"]: e for e in client.post("/v2/repository/index", json={}).json()}
        again = client.post("/predictions/s3m-0000", json=QUESTION)
    assert load.status_code == 507, load.text
    assert load.headers["inferpack-error-kind"] == "insufficient-storage"
    body = load.json()
    assert "'s3m-0001'" in body["error"] and str(small_disk / "cache") in body["error"]
    assert "out of disk space" in body["error"] and "INFERPACK_S3_CACHE_MAX_MB" in body["hint"]
    assert index["s3m-0001"]["state"] == "FAILED" and "out of disk space" in index["s3m-0001"]["reason"]
    assert index["s3m-0000"]["state"] == "READY" and again.status_code == 200
    assert not [p for p in small_disk.rglob("*") if p.name.startswith((".sync-", ".part-", ".evict-"))]
