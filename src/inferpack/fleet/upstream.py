"""The router's client to its servers: one aiohttp session, pooled keep-alive connections to every server.

Why aiohttp and not httpx: forwarding is the router's whole per-request cost, and the client side
dominates it. Measured on the dev machine against a trivial upstream (docs/benchmarks.md, "Router
overhead"): the router process spent ~2.6 ms of CPU per forwarded request with httpx 0.28 and ~0.8 ms with
aiohttp (the load generator chose aiohttp for the same reason). Failures come out as one exception type
with a kind the router acts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import aiohttp
from yarl import URL

CONNECT_TIMEOUT_S = 2.0
FailureKind = Literal["connect", "timeout", "protocol"]


class Failure(Exception):
    """An upstream call that got no HTTP answer. `kind`: connect (nothing was sent), timeout, protocol (the
    connection broke); `reused`: it ran on a pooled keep-alive connection (which the server may have
    closed before the request reached it)."""

    def __init__(self, kind: FailureKind, message: str, *, reused: bool = False) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.reused = reused


@dataclass(frozen=True)
class Answer:
    """An upstream HTTP answer: status, raw headers (lower-case names, as ASGI wants them) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class UpstreamClient:
    """Pooled HTTP/1.1 keep-alive client for all servers. `start()` inside the event loop before use."""

    def __init__(self, timeout_s: float, max_connections: int = 1024) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(CONNECT_TIMEOUT_S, timeout_s))
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session (it binds to the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30.0),
                timeout=self.timeout,
                # A router must not keep cookies between clients, nor add headers the client did not send.
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                auto_decompress=False,
                trust_env=False,
            )

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Answer:
        """Send one request; the URL's path and query are sent exactly as given (already encoded)."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        timeout = self.timeout
        if timeout_s is not None:
            timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(CONNECT_TIMEOUT_S, timeout_s))
        try:
            async with self._session.request(
                method, URL(url, encoded=True), data=body, headers=headers or [], timeout=timeout
            ) as resp:
                payload = await resp.read()
                return Answer(resp.status, [(k.lower(), v) for k, v in resp.raw_headers], payload)
        except aiohttp.ConnectionTimeoutError as exc:
            raise Failure("connect", f"connect timed out: {exc}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise Failure("connect", f"connection refused: {exc.os_error}") from exc
        except TimeoutError as exc:
            raise Failure("timeout", "no answer in time") from exc
        except aiohttp.ServerDisconnectedError as exc:
            # aiohttp does not say whether the connection came from the pool; a disconnect before any
            # answer is what a stale keep-alive connection looks like, so the router may try once more.
            raise Failure("protocol", "server closed the connection", reused=True) from exc
        except aiohttp.ClientError as exc:
            raise Failure("protocol", f"{type(exc).__name__}: {exc}") from exc
