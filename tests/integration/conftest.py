"""A real server on a real port (port 0: the OS picks a free one), run in a thread of the test process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from inferpack.repository.folder import ModelRepository
from inferpack.server.app import create_app
from inferpack.settings import ServerSettings
from tests.conftest import COMPUTE_DTYPES, SERVER_DTYPE


class RunningServer:
    """A uvicorn server in a background thread; `url` is its base URL once started."""

    def __init__(
        self,
        settings: ServerSettings,
        repository: ModelRepository | None = None,
        http: type[asyncio.Protocol] | str = "auto",
    ) -> None:
        self.app = create_app(settings, repository)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", access_log=False, http=http
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def start(self, timeout: float = 120.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        # poll for readiness (uvicorn sets `started` after the lifespan loaded the models)
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def running_server(
    repo: Path,
    *,
    repository: ModelRepository | None = None,
    http: type[asyncio.Protocol] | str = "auto",
    **overrides: Any,
) -> Iterator[RunningServer]:
    """Start a server on `repo` (or on the `repository` object given) with settings overrides and uvicorn's
    HTTP protocol `http` (`inferpack serve`'s is server.protocol.ShedHttpToolsProtocol); stop it
    afterwards."""
    settings = ServerSettings(repository=str(repo), **{"dtype": SERVER_DTYPE, **overrides})
    server = RunningServer(settings, repository, http)
    server.start()
    try:
        yield server
    finally:
        server.stop()


ServerFactory = Callable[..., Any]


@pytest.fixture(scope="module")
def server(demo_repo: Path) -> Iterator[RunningServer]:
    """One server holding every demo model (the broken one fails to load and is reported)."""
    with running_server(demo_repo, inference_threads=2) as s:
        yield s


@pytest.fixture(scope="module", params=COMPUTE_DTYPES)
def numeric_server(demo_repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """A server per compute dtype, for tests of numbers (norms, probabilities) that must hold in each."""
    models = ["qa-0000", "cls-0000", "emb-0000"]
    with running_server(demo_repo, inference_threads=1, models=models, dtype=request.param) as s:
        yield s


@pytest.fixture
def numeric_client(numeric_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=numeric_server.url, timeout=60) as c:
        yield c


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
