"""A real server's service time under open-loop load: what the planner's queue model needs as its input.

A sequential client (one request after another) measures a request on an otherwise idle server, with
nothing else on the cores. The planned server is never in that state: requests arrive as a Poisson
stream, the event loop parses and answers other requests while a forward runs, the client shares the
cores, the worker sits idle between arrivals. So the profiler sends the server Poisson traffic at a
moderate utilisation and keeps, as the service time, the end-to-end time of the requests that found
the worker free (fewer requests of its own in flight than the server has workers when it was sent:
nothing queued ahead of it). Their median and P90 are the service-time distribution under load; the
queueing wait is the model's business, so requests that queued are left out.

The server's own timings are read from its `/metrics` before and after the window (mean batch compute:
tokenise + forward + decode; mean queue wait; mean server-side request time), to show where the time
goes; they are reported next to the figures, not used by the planner.

`poisson_offsets` and `service_of` are pure; `send_open_loop` is the asyncio + aiohttp client (the load
generator's client library) that records each request's send time, in-flight count and duration.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from inferpack.errors import InferpackError

# The server's histograms whose sums and counts are read around the window: name -> what they time.
SERVER_TIMERS = {
    "inferpack_batch_compute_seconds": "compute",
    "inferpack_queue_wait_seconds": "queue_wait",
    "inferpack_request_duration_seconds": "request",
}


@dataclass(frozen=True)
class Sent:
    """One request of the open-loop load: its intended send offset (s), how many of this client's
    requests were in flight when it was sent, and its end-to-end time (ms)."""

    offset_s: float
    in_flight: int
    elapsed_ms: float


@dataclass(frozen=True)
class ServiceUnderLoad:
    """The end-to-end times of the requests that found a worker free, under open-loop load (ms)."""

    median_ms: float
    p90_ms: float
    unqueued: int  # requests the figures come from
    sent: int  # requests sent in the window
    rate_rps: float  # the offered Poisson rate
    utilisation: float  # the utilisation the rate was chosen for
    all_median_ms: float  # of every request, waits included
    all_p90_ms: float
    server_ms: dict[str, float]  # the server's own mean timings in the window (SERVER_TIMERS' names)


def poisson_offsets(rate_rps: float, count: int, seed: int = 0) -> list[float]:
    """`count` Poisson arrival offsets (s, from 0) at `rate_rps`."""
    if rate_rps <= 0 or count < 1:
        raise ValueError("a Poisson schedule needs rate_rps > 0 and count >= 1")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, count)
    return [float(t) for t in np.cumsum(gaps)]


def rate_for(utilisation: float, service_ms: float, workers: int) -> float:
    """The arrival rate (req/s) that keeps `workers` workers of `service_ms` each this busy."""
    return utilisation * workers * 1000.0 / service_ms


def service_of(records: Sequence[Sent], workers: int, min_unqueued: int = 5) -> tuple[float, float, int]:
    """Median and P90 (ms) of the requests sent while fewer than `workers` were in flight (they found a
    worker free), and how many those were; InferpackError when fewer than `min_unqueued`."""
    free = [r.elapsed_ms for r in records if r.in_flight < workers]
    if len(free) < min_unqueued:
        raise InferpackError(
            f"only {len(free)} of {len(records)} requests found the server's worker free; the service time "
            f"under load needs at least {min_unqueued}",
            hint="lower --overhead-load or raise --overhead-requests",
        )
    return float(statistics.median(free)), float(np.quantile(free, 0.9)), len(free)


def timer_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of each of SERVER_TIMERS in a Prometheus text page, over all labels."""
    totals = {name: (0.0, 0.0) for name in SERVER_TIMERS.values()}
    for family in text_string_to_metric_families(metrics_text):
        name = SERVER_TIMERS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            total, count = totals[name]
            if sample.name.endswith("_sum"):
                totals[name] = (total + sample.value, count)
            elif sample.name.endswith("_count"):
                totals[name] = (total, count + sample.value)
    return totals


def mean_timings(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean ms per observation of each timer between two `timer_totals` readings (timers that saw none
    are left out)."""
    out: dict[str, float] = {}
    for name, (total, count) in after.items():
        d_total, d_count = total - before[name][0], count - before[name][1]
        if d_count > 0:
            out[name] = 1000.0 * d_total / d_count
    return out


def read_timers(client: httpx.Client, base_url: str) -> dict[str, tuple[float, float]]:
    """The server's timer totals now (its /metrics)."""
    response = client.get(f"{base_url}/metrics")
    if response.status_code != 200:
        raise InferpackError(f"{base_url}/metrics answered {response.status_code}: {response.text[:200]}")
    return timer_totals(response.text)


async def send_open_loop(
    urls: Sequence[str], offsets: Sequence[float], timeout_s: float = 60.0
) -> list[Sent]:
    """GET `urls[k]` at `offsets[k]` seconds from now, each on its own task (open loop: a slow answer does
    not delay the next send); every request must answer 200."""
    in_flight = 0
    records: list[Sent] = []
    failures: list[str] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()

        async def one(url: str, offset: float) -> None:
            nonlocal in_flight
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            ahead = in_flight
            in_flight += 1
            sent = time.perf_counter()
            try:
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"{response.status} from {url.split('?')[0]}")
            finally:
                in_flight -= 1
            records.append(Sent(offset, ahead, (time.perf_counter() - sent) * 1000.0))

        await asyncio.gather(*(one(u, t) for u, t in zip(urls, offsets, strict=True)))
    if failures:
        raise InferpackError(f"the profiling server failed {len(failures)} request(s): {failures[:3]}")
    return sorted(records, key=lambda r: r.offset_s)


def measure_under_load(
    base_url: str,
    urls: Sequence[str],
    *,
    service_ms: float,
    utilisation: float,
    workers: int = 1,
    seed: int = 0,
) -> ServiceUnderLoad:
    """Send `len(urls)` requests as Poisson arrivals at the rate that keeps `workers` workers of
    `service_ms` (a first estimate: sequential requests) `utilisation` busy; the service time of those
    that found a worker free, and the server's own mean timings over the window."""
    rate = rate_for(utilisation, service_ms, workers)
    offsets = poisson_offsets(rate, len(urls), seed)
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        before = read_timers(client, base_url)
        records = asyncio.run(send_open_loop(urls, offsets))
        after = read_timers(client, base_url)
    median, p90, free = service_of(records, workers)
    every = [r.elapsed_ms for r in records]
    return ServiceUnderLoad(
        median_ms=median,
        p90_ms=p90,
        unqueued=free,
        sent=len(records),
        rate_rps=rate,
        utilisation=utilisation,
        all_median_ms=float(statistics.median(every)),
        all_p90_ms=float(np.quantile(every, 0.9)),
        server_ms=mean_timings(before, after),
    )
