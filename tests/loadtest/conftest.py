"""A real HTTP server on 127.0.0.1 port 0 that fakes the seed and V2 APIs, for the load-test tests.

It can answer 404 for unknown models, shed load with 503 + Retry-After, mark cold/warm model loads, and
stall (pause every answer) for a while once it has seen N requests: the coordinated-omission test needs a
server that stops answering while the generator keeps its schedule.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FakeServer:
    """ASGI app + the uvicorn server running it in a background thread."""

    def __init__(self, models: set[str] | None = None) -> None:
        self.models = models
        self.token: str | None = None  # when set, answer 401 without `Authorization: Bearer <token>`
        self.calls: list[tuple[str, str]] = []
        self.loaded: set[str] = set()
        self.shed_every = 0
        self.delay_s = 0.0
        self._stall_after = 0
        self._stall_s = 0.0
        self._stall_until = 0.0
        self._seen = 0
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def stall(self, after_requests: int, seconds: float) -> None:
        """Pause every answer for `seconds` from the moment the `after_requests`-th request arrives."""
        self._stall_after, self._stall_s = after_requests, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self._seen += 1
        now = time.monotonic()
        if self._stall_after and self._seen == self._stall_after:
            self._stall_until = now + self._stall_s
        if now < self._stall_until:
            await asyncio.sleep(self._stall_until - now)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, headers, payload = self._answer(scope, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})

    def _answer(self, scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], Any]:
        path: str = scope["path"]
        headers = [(b"content-type", b"application/json")]
        if path == "/health":
            return 200, headers, {"status": "ok"}
        if path.startswith("/predictions/") and scope["method"] == "GET":
            api, model = "seed", unquote(path.removeprefix("/predictions/"))
        elif path.startswith("/v2/models/") and path.endswith("/infer") and scope["method"] == "POST":
            api, model = "v2", unquote(path.removeprefix("/v2/models/").removesuffix("/infer"))
            names = [i["name"] for i in json.loads(body)["inputs"]]
            if names != ["question", "context"]:
                return 400, headers, {"error": "bad inputs"}
        else:
            return 404, headers, {"error": "no route"}
        self.calls.append((api, model))
        if (
            self.token is not None
            and (b"authorization", f"Bearer {self.token}".encode()) not in scope["headers"]
        ):
            return 401, [*headers, (b"www-authenticate", b"Bearer")], {"error": "unauthorized"}
        if self.models is not None and model not in self.models:
            return 404, headers, {"error": f"model {model} not found"}
        if self.shed_every and len(self.calls) % self.shed_every == 0:
            return 503, [*headers, (b"retry-after", b"1")], {"error": "overloaded"}
        load = b"warm" if model in self.loaded else b"cold"
        self.loaded.add(model)
        headers.append((b"x-inferpack-model-load", load))
        if api == "seed":
            return 200, headers, {"detail": "an answer"}
        out = {"name": "answer", "datatype": "BYTES", "shape": [1], "data": ["an answer"]}
        return 200, headers, {"model_name": model, "outputs": [out]}

    def start(self) -> None:
        """Start on a free port and wait (polling) until it answers."""
        config = uvicorn.Config(self, host="127.0.0.1", port=0, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake server did not start")
            time.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        self.calls.clear()

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A started fake server; stopped after the test."""
    server = FakeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[..., FakeServer]]:
    """Factory for several fake servers (e.g. one per plan server)."""
    started: list[FakeServer] = []

    def make(models: set[str] | None = None) -> FakeServer:
        server = FakeServer(models)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
