"""The shed answered in uvicorn's HTTP protocol (server/protocol.py) against the same shed answered by the
app through uvicorn's ASGI path: the same bytes on the wire, keep-alive and pipelining intact, and the app
never deciding twice. Both protocols run on a fake transport fed raw HTTP, with a stand-in for the shed's
decision (the decision itself is tested with real models in tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import PlainTextResponse
from starlette.types import Message, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from inferpack.errors import Overloaded
from inferpack.server.app import ShedFirstApp
from inferpack.server.errors import raw_error_answer
from inferpack.server.http import ARRIVED_KEY
from inferpack.server.protocol import ShedHttpToolsProtocol

REFUSAL = Overloaded(
    "model 'qa-0000': expected wait 40 ms + service 20 ms exceeds the request's deadline (0 ms left)",
    retry_after_s=0.06,
    hint="retry later",
    model_id="qa-0000",
    reason="deadline",
    expected_wait_s=0.04,
    expected_service_s=0.02,
)
HOPELESS = b"GET /predictions/qa-0000 HTTP/1.1\r\nHost: t\r\n\r\n"
ADMITTED = b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"


class StandInShed:
    """EarlyShed's interface: refuses every inference path, counts its decisions."""

    def __init__(self) -> None:
        self.decisions = 0

    def answer(self, scope: Scope) -> tuple[Message, Message] | None:
        self.decisions += 1
        scope[ARRIVED_KEY] = 0.0
        return raw_error_answer(REFUSAL) if scope["path"].startswith("/predictions/") else None


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def app_with(shed: StandInShed) -> ShedFirstApp:
    app = ShedFirstApp()
    app.early_shed = shed  # type: ignore[assignment]

    @app.get("/ok")
    async def ok() -> PlainTextResponse:
        return PlainTextResponse("fine")

    return app


async def exchange(
    protocol_class: type[HttpToolsProtocol], *chunks: bytes, shed: StandInShed | None = None
) -> tuple[bytes, int, bool]:
    """Feed `chunks` to a connection of `protocol_class` serving a ShedFirstApp; the bytes it wrote, the
    shed's decisions and whether it closed the connection. Each response completed counts in uvicorn's
    `total_requests` (`--limit-max-requests`): checked against the decisions."""
    shed = shed or StandInShed()
    config = Config(app_with(shed), access_log=False, lifespan="off")
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Wed, 02 Dec 2026 17:00:00 GMT"), (b"server", b"uvicorn")]
    protocol = protocol_class(config=config, server_state=state, app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    for chunk in chunks:
        protocol.data_received(chunk)
        while state.tasks:  # let the ASGI path (when it runs) answer before the next chunk
            await asyncio.gather(*state.tasks)
    assert state.total_requests == shed.decisions
    return bytes(transport.written), shed.decisions, transport.closed


async def test_a_shed_answered_by_the_protocol_is_byte_for_byte_the_asgi_answer() -> None:
    by_app, decisions, _ = await exchange(HttpToolsProtocol, HOPELESS)
    by_protocol, decisions_here, closed = await exchange(ShedHttpToolsProtocol, HOPELESS)
    assert by_app.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"\r\nretry-after: 1\r\n" in by_app
    assert by_app.endswith(raw_error_answer(REFUSAL)[1]["body"])
    assert by_protocol == by_app
    assert decisions == decisions_here == 1 and not closed


async def test_keep_alive_and_pipelining_survive_a_protocol_shed() -> None:
    # pipelined in one packet: two sheds and an admitted request; then a shed queued behind an admitted
    # request (uvicorn starts it when that answer completes) with another behind it; then a shed whose
    # body arrives late, and an admitted request
    post = b"POST /predictions/qa-0000 HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n"
    chunks = (HOPELESS + HOPELESS + ADMITTED, ADMITTED + HOPELESS + ADMITTED, post, b"{not json", ADMITTED)
    by_app, decisions, _ = await exchange(HttpToolsProtocol, *chunks)
    by_protocol, decisions_here, closed = await exchange(ShedHttpToolsProtocol, *chunks)
    assert by_protocol == by_app
    assert by_protocol.count(b"HTTP/1.1 503 ") == 4 and by_protocol.count(b"HTTP/1.1 200 OK") == 4
    assert by_protocol.endswith(b"fine") and not closed
    assert decisions == decisions_here == 8  # one decision per request: the app does not decide again


async def test_http_1_0_sheds_close_the_connection_as_uvicorn_does() -> None:
    old = b"GET /predictions/qa-0000 HTTP/1.0\r\n\r\n"
    by_app, _, closed_by_app = await exchange(HttpToolsProtocol, old)
    by_protocol, _, closed = await exchange(ShedHttpToolsProtocol, old)
    assert by_protocol == by_app and b"\r\nconnection: close\r\n" in by_protocol
    assert closed and closed_by_app


class FaultyShed(StandInShed):
    def answer(self, scope: Scope) -> tuple[Message, Message] | None:
        super().answer(scope)
        raise RuntimeError("a bug in the shed")


async def test_a_fault_in_the_shed_leaves_the_request_to_the_app() -> None:
    written, decisions, closed = await exchange(ShedHttpToolsProtocol, ADMITTED, ADMITTED, shed=FaultyShed())
    assert written.count(b"HTTP/1.1 200 OK") == 2 and not closed and decisions == 2
