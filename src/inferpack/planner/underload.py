"""A real server's service time under open-loop load: what the planner's queue model needs as its input.

A sequential client (one request after another) measures a request on an otherwise idle server, with
nothing else on the cores. The planned server is never in that state: requests arrive as a Poisson
stream, the event loop parses and answers other requests while a forward runs, the client shares the
cores, the worker sits idle between arrivals. So the profiler sends the server Poisson traffic at a
moderate utilisation and derives each request's service time from the client's own send and answer
times: the server has one worker that serves one request at a time and never idles while one waits, so
a request's service starts at the later of its send and the previous answer (in answer order) and ends
at its answer. A request that found the worker free is timed end to end (HTTP both ways included); one
that queued, from the previous answer to its own (its HTTP parsing overlapped the previous request's
forward). Every request counts, so the figures are not biased towards idle moments (or, on shared
cores, towards quiet ones: queues build up when the machine is slow), and waits are left to the
queueing model.

The server's own timings are read from its `/metrics` before and after the window (mean batch compute:
tokenise + forward + decode; mean queue wait; mean server-side request time), to show where the time
goes; they are reported next to the figures, not used by the planner.

`poisson_offsets`, `service_times` and the metrics arithmetic are pure; `send_open_loop` is the asyncio
+ aiohttp client (the load generator's client library) that records each request's send and answer.
"""

from __future__ import annotations

import asyncio
import math
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
    """One request of the open-loop load: when it was sent and answered (s from the window's start)."""

    sent_s: float
    done_s: float


@dataclass(frozen=True)
class ServiceUnderLoad:
    """Service times of the requests of an open-loop window through a one-worker server (ms)."""

    median_ms: float
    p90_ms: float
    sent: int  # requests in the window (each gives a service time)
    waited: int  # of which found the worker busy
    rate_rps: float  # the offered Poisson rate
    utilisation: float  # the utilisation the rate was chosen for
    busy: float  # the worker's measured busy share over the window (sum of services / window)
    response_median_ms: float  # end to end, waits included
    response_p90_ms: float
    server_ms: dict[str, float]  # the server's own mean timings in the window (SERVER_TIMERS' names)


def poisson_offsets(rate_rps: float, count: int, seed: int = 0) -> list[float]:
    """`count` Poisson arrival offsets (s, from 0) at `rate_rps`."""
    if rate_rps <= 0 or count < 1:
        raise ValueError("a Poisson schedule needs rate_rps > 0 and count >= 1")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, count)
    return [float(t) for t in np.cumsum(gaps)]


def service_times(records: Sequence[Sent]) -> tuple[list[float], int]:
    """Each request's service time (ms) on a server with one worker that serves one request at a time and
    never idles while one waits: from the later of its send and the previous answer, in answer order, to
    its answer. Also how many requests waited (sent before the previous answer)."""
    services: list[float] = []
    waited = 0
    previous = -math.inf
    for r in sorted(records, key=lambda r: r.done_s):
        waited += r.sent_s < previous
        services.append((r.done_s - max(r.sent_s, previous)) * 1000.0)
        previous = r.done_s
    return services, waited


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
    records: list[Sent] = []
    failures: list[str] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()

        async def one(url: str, offset: float) -> None:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            sent = time.perf_counter() - start
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    failures.append(f"{response.status} from {url.split('?')[0]}")
            records.append(Sent(sent, time.perf_counter() - start))

        await asyncio.gather(*(one(u, t) for u, t in zip(urls, offsets, strict=True)))
    if failures:
        raise InferpackError(f"the profiling server failed {len(failures)} request(s): {failures[:3]}")
    return sorted(records, key=lambda r: r.sent_s)


def measure_under_load(
    base_url: str, urls: Sequence[str], *, service_ms: float, utilisation: float, seed: int = 0
) -> ServiceUnderLoad:
    """Send `len(urls)` requests as Poisson arrivals at the rate that keeps one worker of `service_ms` (a
    first estimate: sequential requests) `utilisation` busy; their service times (`service_times`) and
    the server's own mean timings over the window."""
    rate = utilisation * 1000.0 / service_ms
    offsets = poisson_offsets(rate, len(urls), seed)
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        before = read_timers(client, base_url)
        records = asyncio.run(send_open_loop(urls, offsets))
        after = read_timers(client, base_url)
    services, waited = service_times(records)
    responses = [(r.done_s - r.sent_s) * 1000.0 for r in records]
    window_s = max(r.done_s for r in records) - min(r.sent_s for r in records)
    return ServiceUnderLoad(
        median_ms=float(statistics.median(services)),
        p90_ms=float(np.quantile(services, 0.9)),
        sent=len(records),
        waited=waited,
        rate_rps=rate,
        utilisation=utilisation,
        busy=sum(services) / 1000.0 / window_s,
        response_median_ms=float(statistics.median(responses)),
        response_p90_ms=float(np.quantile(responses, 0.9)),
        server_ms=mean_timings(before, after),
    )
