"""A discrete-event simulation of one planned server: the oracle the queueing approximation is tested against.

The server is a FIFO queue feeding `c` identical workers; requests arrive as a Poisson stream and each
takes a service time drawn from the profile's distribution (lognormal with the profile's median and
spread, `queueing.ServiceTime`; deterministic when the spread is 0). A request's response time is its
wait plus its own service. Pure: a seed in, response times out (no clock, no I/O).

The P90 of a finite run is itself a random variable: `simulated_p90` runs independent replications and
reports their mean with a standard error, so a test can allow for the simulation's sampling error.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inferpack.planner.queueing import TAIL, ServiceTime

FloatArray = npt.NDArray[np.float64]


def sample_service_s(service: ServiceTime, n: int, rng: np.random.Generator) -> FloatArray:
    """`n` service times (seconds) from the profile's distribution."""
    if service.sigma == 0:
        return np.full(n, service.median_s)
    return service.median_s * np.exp(service.sigma * rng.standard_normal(n))


def fifo_response_times(arrivals: FloatArray, services: FloatArray, workers: int) -> FloatArray:
    """Response times (wait + service) of requests arriving at the sorted times `arrivals` with these
    service times at a FIFO queue of `workers` workers that starts empty."""
    n = len(arrivals)
    if workers == 1:
        # Lindley's recursion W[k+1] = max(0, W[k] + S[k] - A[k+1]) in closed form: with the walk
        # X[k] = sum_{j<k} (S[j] - A[j+1]) the wait is X[k] - min_{j<=k} X[j] (vectorised).
        steps = services[:-1] - np.diff(arrivals)
        walk = np.concatenate(([0.0], np.cumsum(steps)))
        waits = walk - np.minimum.accumulate(walk)
        return np.asarray(waits + services)
    # c workers: each arrival (in order) takes the worker that frees first (FIFO, work-conserving).
    free = [0.0] * workers
    out = np.empty(n)
    arr_list, svc_list = arrivals.tolist(), services.tolist()
    for k in range(n):
        start = max(arr_list[k], free[0])
        done = start + svc_list[k]
        heapq.heapreplace(free, done)
        out[k] = done - arr_list[k]
    return out


def response_times_s(
    workers: int, rate_rps: float, service: ServiceTime, n: int, rng: np.random.Generator
) -> FloatArray:
    """Response times (seconds) of `n` Poisson arrivals at `rate_rps` with service times drawn from
    `service`, at a FIFO `workers`-worker queue that starts empty."""
    if workers < 1 or rate_rps <= 0 or n < 1:
        raise ValueError("workers >= 1, rate_rps > 0 and n >= 1 are required")
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, n))
    return fifo_response_times(arrivals, sample_service_s(service, n, rng), workers)


@dataclass(frozen=True)
class SimulatedQuantile:
    """A response-time quantile from independent replications: mean and standard error (seconds)."""

    value_s: float
    stderr_s: float
    replications: int
    requests_per_replication: int


def requests_for(rate_rps: float, workers: int, service: ServiceTime, base: int = 3000) -> int:
    """Requests per replication: more in heavy traffic, where waits are correlated over longer spans
    (the relaxation time of a queue grows like (1 + cv^2) / (1 - rho)^2)."""
    rho = rate_rps * service.mean_s / workers
    if rho >= 1:
        raise ValueError(f"the queue is unstable (utilisation {rho:.2f} >= 1)")
    scale = (1 + service.cv**2) / 2 / (1 - rho) ** 2 / workers
    return int(min(base * max(1.0, scale), 20 * base))


def simulated_quantile(
    workers: int,
    rate_rps: float,
    service: ServiceTime,
    *,
    seed: int,
    replications: int = 8,
    requests: int | None = None,
    tail: float = TAIL,
) -> SimulatedQuantile:
    """The (1 - tail) quantile of the response time over `replications` independent runs (the first
    10% of each run is discarded as warm-up from the empty state)."""
    n = requests or requests_for(rate_rps, workers, service)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(replications):
        times = response_times_s(workers, rate_rps, service, n, rng)
        values.append(float(np.quantile(times[n // 10 :], 1 - tail)))
    mean = float(np.mean(values))
    stderr = float(np.std(values, ddof=1) / math.sqrt(replications)) if replications > 1 else math.inf
    return SimulatedQuantile(mean, stderr, replications, n)
