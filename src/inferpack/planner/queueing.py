"""The queueing model that turns a latency objective into a capacity per server.

A server runs `c` identical workers (one per core, or per NeuronCore/GPU) fed from one queue shared by
all its models. Requests arrive as a Poisson stream (the superposition of many independent clients and
models tends to Poisson). A worker's service time is not constant: the profile gives its median and
P90 (or, for profiles without a P90, `DEFAULT_CV`), and we model it as lognormal with those two
quantiles (`ServiceTime`; deterministic when they are equal).

The P90 of the response time (wait + own service) is computed for an M/G/c queue by the usual
approximations, then a quantile of their sum:

- the probability of waiting is Erlang C with the mean service time, `C(c, a)`, `a = lambda * E[S]`;
- the wait of a request that waits is exponential with the Allen-Cunneen / Kingman mean
  `(1 + cv^2) / 2 / (c / E[S] - lambda)` (cv of the service time; Poisson arrivals), so
  `P(W > t) = C(c, a) * exp(-theta * t)` with `theta = 2 (c / E[S] - lambda) / (1 + cv^2)`; at cv = 1
  this is the exact M/M/c tail;
- the response time is that wait plus the request's own service time (independent of its wait in
  FIFO); its P90 is found numerically from the lognormal's quantiles.

`simulate.py` is a discrete-event simulation of the same server; `tests/planner/test_tail_property.py`
checks across utilisations, spreads and worker counts that this P90 is never below the simulated one
and at most 30% above it. The largest arrival rate whose P90 meets the objective, capped by a maximum
utilisation, is the server's capacity; the planner keeps the sum of rate x mean service time of the
models on a server under it, which keeps the packing linear.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

TAIL = 0.10  # P90: the quantile is the one the 10% tail starts at.
# The exponential wait of the approximation, lengthened by this factor: the simulation shows the bare
# approximation up to ~6% short of the true P90 with several workers and little spread (M/D/c).
WAIT_MARGIN = 1.2
# Likewise the probability of waiting (Erlang C) is raised by this factor: where it is close to the 10%
# tail (light load, several workers, little spread) the P90 sits at the edge of the waiting mass.
WAIT_PROB_MARGIN = 1.1
DEFAULT_CV = 0.25  # spread assumed where a profile gives only a median (measured here: P50 51, P99 94 ms)
_Z90 = NormalDist().inv_cdf(0.9)
_NORMAL = NormalDist()
# Midpoint quantiles of a standard normal: the own-service distribution in the convolution below.
_K = 64
_Z = np.array([_NORMAL.inv_cdf((k + 0.5) / _K) for k in range(_K)])


@dataclass(frozen=True)
class ServiceTime:
    """A service-time distribution: lognormal with this median (seconds) and log-spread `sigma`."""

    median_s: float
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.median_s <= 0 or self.sigma < 0:
            raise ValueError("a service time needs median_s > 0 and sigma >= 0")

    @classmethod
    def from_cv(cls, mean_s: float, cv: float) -> ServiceTime:
        """The lognormal with this mean and coefficient of variation."""
        sigma = math.sqrt(math.log1p(cv * cv))
        return cls(mean_s * math.exp(-sigma * sigma / 2), sigma)

    @classmethod
    def from_quantiles(cls, p50_s: float, p90_s: float | None) -> ServiceTime:
        """The lognormal through a median and a P90 (`DEFAULT_CV` when the P90 is unknown)."""
        if p90_s is None:
            return cls(p50_s, math.sqrt(math.log1p(DEFAULT_CV**2)))
        return cls(p50_s, max(0.0, math.log(p90_s / p50_s)) / _Z90)

    @property
    def mean_s(self) -> float:
        """Mean service time."""
        return self.median_s * math.exp(self.sigma * self.sigma / 2)

    @property
    def cv(self) -> float:
        """Coefficient of variation (standard deviation / mean)."""
        return math.sqrt(math.expm1(self.sigma * self.sigma))

    def quantile_s(self, q: float) -> float:
        """The q-quantile (0 < q < 1)."""
        return self.median_s * math.exp(self.sigma * _NORMAL.inv_cdf(q))

    def scaled(self, factor: float) -> ServiceTime:
        """The same shape, every time multiplied by `factor`."""
        return ServiceTime(self.median_s * factor, self.sigma)


def erlang_c(workers: int, offered_load: float) -> float:
    """Probability that an arrival waits in M/M/c with `workers` servers and load a = lambda/mu (< c)."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if offered_load <= 0:
        return 0.0
    if offered_load >= workers:
        return 1.0
    # Erlang B by its stable recursion, then C from B; avoids factorials for large c.
    b = 1.0
    for k in range(1, workers + 1):
        b = offered_load * b / (k + offered_load * b)
    rho = offered_load / workers
    return b / (1.0 - rho * (1.0 - b))


def wait_decay(workers: int, service_s: float, rate_rps: float, cv: float = 1.0) -> float:
    """Decay rate (1/s) of the exponential tail of the wait: 2 (c/E[S] - lambda) / (1 + cv^2)."""
    return 2.0 * (workers / service_s - rate_rps) / (1.0 + cv * cv)


def wait_quantile_s(
    workers: int,
    service_s: float,
    rate_rps: float,
    tail: float = TAIL,
    cv: float = 1.0,
    *,
    margins: bool = False,
) -> float:
    """The (1 - tail) quantile of the waiting time in seconds (inf when the queue is unstable), for mean
    service `service_s` with coefficient of variation `cv` (1 and no margins: the exact M/M/c wait;
    `margins`: with WAIT_PROB_MARGIN and WAIT_MARGIN, as the planner uses it)."""
    if rate_rps <= 0:
        return 0.0
    if rate_rps >= workers / service_s:
        return math.inf
    c = erlang_c(workers, rate_rps * service_s) * (WAIT_PROB_MARGIN if margins else 1.0)
    if c <= tail:
        return 0.0
    decay = wait_decay(workers, service_s, rate_rps, cv) / (WAIT_MARGIN if margins else 1.0)
    return math.log(min(1.0, c) / tail) / decay


@functools.lru_cache(maxsize=65536)
def response_quantile_s(
    workers: int, rate_rps: float, service: ServiceTime, own: ServiceTime | None = None, tail: float = TAIL
) -> float:
    """The (1 - tail) quantile of the response time (seconds): wait + own service.

    `service` is the per-request service time the queue sees (its mean sets the load); `own` is the time
    a request spends in the worker (a whole batch's latency when batching; default `service`)."""
    own = own or service
    if rate_rps <= 0:
        return own.quantile_s(1 - tail)
    if rate_rps * service.mean_s >= workers:
        return math.inf
    if own.sigma == 0:
        return own.median_s + wait_quantile_s(
            workers, service.mean_s, rate_rps, tail, service.cv, margins=True
        )
    p_wait = min(1.0, WAIT_PROB_MARGIN * erlang_c(workers, rate_rps * service.mean_s))
    theta = wait_decay(workers, service.mean_s, rate_rps, service.cv) / WAIT_MARGIN
    points = own.median_s * np.exp(own.sigma * _Z)

    def exceed(x: np.ndarray) -> np.ndarray:
        # P(T > x) = P(L > x) + P(wait) E[exp(-theta (x - L)); L <= x], L the own service time.
        z = (np.log(x) - math.log(own.median_s)) / own.sigma
        above = 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2.0))
        gap = x[:, None] - points[None, :]
        conv = np.where(gap >= 0, np.exp(-theta * np.maximum(gap, 0.0)), 0.0).mean(axis=1)
        return np.asarray(above + p_wait * conv)

    lo = own.quantile_s(1 - tail)
    if p_wait <= 0.0:  # Erlang C underflows to 0 with many workers in light traffic: nobody waits
        return lo
    hi = own.quantile_s(1 - tail / 4) + math.log(max(1.0, 4 * p_wait / tail)) / theta
    for _ in range(3):  # three grids of 48: a relative precision of ~1e-5 of the bracket
        grid = np.linspace(lo, hi, 48)
        over = exceed(grid) > tail
        k = int(np.argmin(over)) if not over.all() else len(grid) - 1
        lo, hi = float(grid[max(k - 1, 0)]), float(grid[k])
    return hi


def p90_response_ms(
    workers: int,
    latency_ms: float,
    service_s: float,
    rate_rps: float,
    cv: float = 0.0,
) -> float:
    """The P90 response time (ms) at `rate_rps`: `latency_ms` is the median time of a request's own
    batch, `service_s` the mean per-request service time, `cv` its coefficient of variation (the batch
    latency has the same spread)."""
    service = ServiceTime.from_cv(service_s, cv)
    own = ServiceTime(latency_ms / 1000.0, service.sigma)
    return 1000.0 * response_quantile_s(workers, rate_rps, service, own)


def max_rate_rps(
    workers: int,
    latency_ms: float,
    service_s: float,
    slo_p90_ms: float,
    max_utilisation: float,
    cv: float = 0.0,
) -> float:
    """The largest arrival rate (req/s) a server sustains with its P90 within `slo_p90_ms` and its
    utilisation within `max_utilisation`; 0 when even an idle server misses the objective."""
    if workers < 1 or p90_response_ms(workers, latency_ms, service_s, 0.0, cv) > slo_p90_ms:
        return 0.0
    cap = max_utilisation * workers / service_s
    if p90_response_ms(workers, latency_ms, service_s, cap, cv) <= slo_p90_ms:
        return cap
    lo, hi = 0.0, cap
    # The P90 grows monotonically with the rate, so bisection finds the boundary (2^-40 of the cap).
    for _ in range(40):
        mid = (lo + hi) / 2
        if p90_response_ms(workers, latency_ms, service_s, mid, cv) <= slo_p90_ms:
            lo = mid
        else:
            hi = mid
    return lo
