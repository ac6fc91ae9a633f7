"""The engine of one worker: sends requests on a load shape, records them, returns a BenchResult.

One event loop (uvloop), one aiohttp session with a connection per user (closed loop) or per in-flight
slot (open loop). aiohttp, not httpx: it costs ~5x less CPU per request, which sets the generator's
ceiling (bench/bench_loadgen.py). Latency is always measured from the intended send time with
`time.perf_counter()`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import aiohttp
import numpy as np
from yarl import URL

from inferpack import __version__
from inferpack.loadtest.ceiling import generator_warnings
from inferpack.loadtest.config import BenchConfig
from inferpack.loadtest.protocol import MODEL_LOAD_HEADER, RequestBuilder, model_load, status_key
from inferpack.loadtest.recorder import Recorder, Snapshot
from inferpack.loadtest.result import BenchResult, RunMetadata, WorkerInfo
from inferpack.loadtest.shapes import ClosedLoop, OpenLoop, intended_times, split_count, split_shape
from inferpack.loadtest.targets import UrlChooser
from inferpack.loadtest.traffic import ModelPicker, ReplayPicker, uniform_picker, zipf_picker

ProgressFn = Callable[[Snapshot], None]

PROGRESS_PERIOD_S = 0.5


class _Calls:
    """Yields (base URL, model index) for each request: from a picker + router, or a fixed pair list."""

    def __init__(self, config: BenchConfig, index: int, workers: int, rng: np.random.Generator) -> None:
        self._pairs: list[tuple[str, int]] | None = None
        self._pos = 0
        if config.mode == "seq":
            position = {m: i for i, m in enumerate(config.models)}
            pairs = config.seq_pairs()
            # Contiguous chunks keep each server's models in order within a worker.
            lo = split_offset(len(pairs), workers, index)
            hi = lo + split_count(len(pairs), workers, index)
            self._pairs = [(url, position[m]) for url, m in pairs[lo:hi]]
            return
        n = len(config.models)
        self._picker: ModelPicker
        if config.traffic.kind == "zipf":
            self._picker = zipf_picker(n, config.traffic.zipf_s, rng)
        elif config.traffic.kind == "replay":
            trace = config.traffic.trace or []
            # Worker i replays every workers-th request: together the workers replay the whole trace.
            self._picker = ReplayPicker(trace[index::workers] or trace)
        else:
            self._picker = uniform_picker(n, rng)
        self._chooser = UrlChooser(config.target, config.models, rng)

    @property
    def total(self) -> int | None:
        """Number of calls when finite (seq), else None."""
        return None if self._pairs is None else len(self._pairs)

    def next(self) -> tuple[str, int] | None:
        """The next call, or None when a finite list is exhausted."""
        if self._pairs is not None:
            if self._pos >= len(self._pairs):
                return None
            self._pos += 1
            return self._pairs[self._pos - 1]
        i = self._picker.next_index()
        if i is None:
            return None
        return self._chooser.url_for(i), i


def split_offset(total: int, workers: int, index: int) -> int:
    """Start of worker `index`'s contiguous chunk when `total` items are split by `split_count`."""
    return sum(split_count(total, workers, i) for i in range(index))


def versions() -> dict[str, str]:
    """Versions that matter to the figures."""
    out = {"inferpack": __version__, "python": platform.python_version()}
    for pkg in ("aiohttp", "hdrhistogram", "uvloop"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    """The generator's machine."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }


async def wait_until(
    start_at_unix: float | None,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> float:
    """Wait until the common start time of all workers (Unix seconds; None or 0: start now); returns the
    seconds waited. The wall clock only lines up workers' starts: every measured time uses perf_counter."""
    if not start_at_unix:
        return 0.0
    left = max(0.0, start_at_unix - clock())
    await sleep(left)
    return left


async def _sleep_until(deadline: float) -> None:
    """Sleep until about `deadline` (perf_counter); always yields at least once, even when late.

    uvloop rounds timers to whole milliseconds, so this may return up to ~0.5 ms early. Spinning out the
    rest cost more CPU than the requests themselves at a few hundred req/s; instead the recorder measures
    an early request from its actual send (`Recorder.record`), so latency is never understated."""
    left = deadline - time.perf_counter()
    await asyncio.sleep(left if left > 0 else 0)


class _Connections:
    """Connection slots over one aiohttp session. The slot is taken before the send time is read, so
    waiting for a free connection counts in open-loop latency but not in the service time."""

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)
        # The connector never makes a request wait (the semaphore already bounds in-flight requests);
        # its per-host idle deque hands connections out in O(1).
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=size, limit_per_host=0),
            auto_decompress=False,
            trust_env=False,
        )

    async def acquire(self) -> None:
        """Wait for a free slot."""
        await self._slots.acquire()

    def release(self) -> None:
        """Give a slot back."""
        self._slots.release()

    async def aclose(self) -> None:
        """Close the session and its connections."""
        await self.session.close()


class Worker:
    """Runs one worker's share of a BenchConfig."""

    def __init__(
        self, config: BenchConfig, index: int = 0, workers: int = 1, token: str | None = None
    ) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} outside 0..{workers - 1}")
        self.config = config
        self.index = index
        self.workers = workers
        self.rng = np.random.default_rng([config.seed, index])
        self.calls = _Calls(config, index, workers, self.rng)
        self.shape = split_shape(config.shape, workers, index, at_least_one_user=config.mode == "seq")
        self.count = None if config.requests is None else split_count(config.requests, workers, index)
        self.builder = RequestBuilder(config.api, config.question, config.context)
        self.recorder: Recorder | None = None
        self._headers = {"Content-Type": "application/json"} if config.api == "v2" else {}
        if token:  # kept out of the config: configs and results are written to disk, tokens never are
            self._headers["Authorization"] = f"Bearer {token}"

    def _concurrency(self) -> int:
        if isinstance(self.shape, ClosedLoop):
            return self.shape.users
        return self.shape.max_in_flight

    async def _send(self, conns: _Connections, rec: Recorder, call: tuple[str, int], intended: float) -> None:
        url, model_index = call
        req = self.builder.build(url, self.config.models[model_index])
        target = URL(req.url, encoded=True)  # already quoted: model ids like "a/b" stay one segment
        await conns.acquire()
        sent = time.perf_counter()
        error: str | None = None
        load = None
        try:
            # One deadline for the whole exchange, from the actual send.
            async with (
                asyncio.timeout(self.config.timeout_s),
                conns.session.request(req.method, target, data=req.body, headers=self._headers) as resp,
            ):
                await resp.read()
                error = status_key(resp.status)
                load = model_load(resp.headers.get(MODEL_LOAD_HEADER))
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientConnectorError:
            error = "connect error"
        except aiohttp.ClientError as exc:
            error = f"transport {type(exc).__name__}"
        finally:
            conns.release()
        rec.record(model_index, intended, sent, time.perf_counter(), error, load)

    async def _closed(self, conns: _Connections, rec: Recorder, end: float | None) -> None:
        assert isinstance(self.shape, ClosedLoop)
        tickets = [self.count]

        async def user() -> None:
            while True:
                now = time.perf_counter()
                if end is not None and now >= end:
                    return
                if tickets[0] is not None and now >= rec.measure_start:
                    if tickets[0] <= 0:
                        return
                    tickets[0] -= 1
                call = self.calls.next()
                if call is None:
                    return
                # Closed loop: the next request is due exactly when the previous one finished.
                await self._send(conns, rec, call, now)

        await asyncio.gather(*(user() for _ in range(self.shape.users)))

    async def _open(self, conns: _Connections, rec: Recorder, end: float | None) -> None:
        assert isinstance(self.shape, OpenLoop)
        pending: set[asyncio.Task[None]] = set()
        issued = 0

        phase = self.index / self.workers
        for offset in intended_times(self.shape, -self.config.warmup_s, self.rng, phase):
            intended = rec.measure_start + offset
            if end is not None and intended >= end:
                break
            if self.count is not None and offset >= 0:
                if issued >= self.count:
                    break
                issued += 1
            await _sleep_until(intended)
            rec.record_schedule_lag(intended, time.perf_counter())
            call = self.calls.next()
            if call is None:
                break
            task = asyncio.create_task(self._send(conns, rec, call, intended))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def run(
        self, progress: ProgressFn | None = None, start_at_unix: float | None = None
    ) -> BenchResult:
        """Run this worker's share and return its result."""
        await wait_until(start_at_unix)
        conns = _Connections(self._concurrency())
        try:
            t_begin = time.perf_counter()
            cpu_begin = time.thread_time()
            started_at = datetime.now(UTC).isoformat(timespec="seconds")
            measure_start = t_begin + self.config.warmup_s
            start_unix = time.time() + self.config.warmup_s
            rec = Recorder(self.config.models, measure_start, self.config.interval_s)
            self.recorder = rec
            end = None if self.config.duration_s is None else measure_start + self.config.duration_s
            ticker = asyncio.create_task(self._tick(rec, progress)) if progress else None
            try:
                if isinstance(self.shape, ClosedLoop):
                    await self._closed(conns, rec, end)
                else:
                    await self._open(conns, rec, end)
            finally:
                if ticker is not None:
                    ticker.cancel()
            t_end = time.perf_counter()
            cpu_s = time.thread_time() - cpu_begin
        finally:
            await conns.aclose()
        if progress is not None:
            progress(rec.snapshot(t_end))
        measured_s = max(rec.last_done, t_end if end is None else min(t_end, end)) - measure_start
        info = WorkerInfo(
            index=self.index,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            start_unix=start_unix,
            measured_s=max(measured_s, 1e-9),
            wall_s=t_end - t_begin,
            cpu_s=cpu_s,
            requests=rec.done,
            warmup_requests=rec.warmup_requests,
        )
        result = BenchResult(
            metadata=self._metadata(started_at),
            workers=[info],
            interval_s=self.config.interval_s,
            histograms=rec.histograms(),
            errors=dict(sorted(rec.errors.items())),
            models=rec.model_stats(),
            series=rec.series(),
        )
        result.warnings = generator_warnings(result, info)
        result.summary = result.compute_summary()
        return result

    async def _tick(self, rec: Recorder, progress: ProgressFn) -> None:
        while True:
            await asyncio.sleep(PROGRESS_PERIOD_S)
            progress(rec.snapshot(time.perf_counter()))

    def _metadata(self, started_at: str) -> RunMetadata:
        c = self.config
        traffic: dict[str, Any] = {"kind": c.traffic.kind}
        if c.traffic.kind == "zipf":
            traffic["zipf_s"] = c.traffic.zipf_s
        if c.traffic.trace:
            traffic["trace_length"] = len(c.traffic.trace)
        return RunMetadata(
            mode=c.mode,
            api=c.api,
            target=c.target.description,
            load_shape=c.shape.model_dump(),
            load_description=c.shape.describe(),
            traffic=traffic,
            models=len(c.models),
            warmup_s=c.warmup_s,
            duration_s=c.duration_s,
            requests=c.requests,
            timeout_s=c.timeout_s,
            started_at=started_at,
            versions=versions(),
            machine=machine(),
        )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it lifts the generator's ceiling), else the default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_worker(
    config: BenchConfig,
    index: int = 0,
    workers: int = 1,
    progress: ProgressFn | None = None,
    start_at_unix: float | None = None,
    token: str | None = None,
) -> BenchResult:
    """Run one worker to completion on a fresh event loop (blocking); `token` is sent as a bearer token."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(Worker(config, index, workers, token).run(progress, start_at_unix))
