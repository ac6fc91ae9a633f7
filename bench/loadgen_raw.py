"""A cheap HTTP/1.1 load generator for benchmarks that share their cores with the server they load.

bench/overload.py offers 3x a server's capacity from the same two cores the server runs on, so every
microsecond the generator spends per request is taken from the server. aiohttp's client costs several
hundred microseconds of CPU per request; this one pre-encodes each request once, keeps connections alive
in a pool, parses only the status line and Content-Length of an answer, and runs on callbacks (no task per
request): the CPU it takes is measured and printed next to every figure (`Generator.cpu_s`).

Requests are GETs (the body travels in the query string), one in flight per connection; a request that
finds no idle connection opens a new one. A request not answered within its timeout has its connection
closed, as a client that gives up does (the server then drops its queued work).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Done = Callable[[int, float], None]  # status (0: time-out or connection error), latency s


def encode_get(host: str, target: str, headers: dict[str, str]) -> bytes:
    """One GET request, ready to write."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.done: Done | None = None
        self.sent = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, done: Done, timeout: float) -> None:
        assert self.transport is not None
        self.done, self.sent = done, time.perf_counter()
        self.timer = self.pool.loop.call_later(timeout, self.give_up)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.done is None:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
                break
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        del self.buf[: end + 4 + length]
        self._finish(status, keep=b"\r\nconnection: close" not in head)

    def _finish(self, status: int, keep: bool) -> None:
        done, self.done = self.done, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        latency = time.perf_counter() - self.sent
        self.pool.busy.discard(self)
        if keep and self.transport is not None and not self.transport.is_closing():
            self.pool.idle.append(self)
        elif self.transport is not None:
            self.transport.close()
        if done is not None:
            done(status, latency)

    def give_up(self) -> None:
        """The client's timeout: close the connection (the server sees the client go)."""
        self.timer = None
        if self.transport is not None:
            self.transport.close()
        self._finish(0, keep=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done is not None:
            self._finish(0, keep=False)
        elif self in self.pool.idle:
            self.pool.idle.remove(self)


@dataclass
class Pool:
    """Keep-alive connections to one server."""

    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    idle: list[_Conn] = field(default_factory=list)
    busy: set[_Conn] = field(default_factory=set)
    opening: int = 0
    epoch: int = 0  # bumped when outstanding requests are dropped: connections still opening then close

    async def warm(self, n: int) -> None:
        """Open `n` idle connections ahead of a phase (so opening them is not timed)."""
        conns = await asyncio.gather(*(self._open() for _ in range(max(0, n - len(self.idle)))))
        self.idle.extend(conns)

    async def _open(self) -> _Conn:
        _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        return conn

    def request(self, request: bytes, done: Done, timeout: float) -> None:
        """Send `request` on an idle connection (or a new one); `done` gets the status and latency."""
        if self.idle:
            conn = self.idle.pop()
            self.busy.add(conn)
            conn.send(request, done, timeout)
            return
        started, epoch = time.perf_counter(), self.epoch

        def opened(task: asyncio.Future[_Conn]) -> None:
            self.opening -= 1
            if task.exception() is not None:
                if epoch == self.epoch:
                    done(0, time.perf_counter() - started)
                return
            conn = task.result()
            if epoch != self.epoch:  # dropped while it connected
                if conn.transport is not None:
                    conn.transport.close()
                return
            self.busy.add(conn)
            conn.send(request, done, max(0.001, timeout - (time.perf_counter() - started)))
            conn.sent = started  # latency counts the connect

        self.opening += 1
        self.loop.create_task(self._open()).add_done_callback(opened)

    def drop_outstanding(self) -> int:
        """Close every connection with a request in flight (the clients go away); returns how many."""
        self.epoch += 1
        gone = list(self.busy)
        for conn in gone:
            conn.done = None  # not an outcome: unanswered when the load stopped
            if conn.timer is not None:
                conn.timer.cancel()
            if conn.transport is not None:
                conn.transport.close()
        self.busy.clear()
        return len(gone) + self.opening

    def close(self) -> None:
        self.drop_outstanding()
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far, all its threads (from /proc)."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
