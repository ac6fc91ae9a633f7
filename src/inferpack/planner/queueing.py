"""The queueing model that turns a latency objective into a capacity per server.

A server runs `c` identical workers (one per core, or per NeuronCore/GPU) fed from one queue shared by
all its models. Requests arrive as a Poisson stream (the superposition of many independent clients and
models tends to Poisson), and one worker serves a request in a near-constant time.

We bound the P90 response time as `latency + W90`, where `latency` is the profiled time of one batch
(service is taken as deterministic, so it adds exactly) and `W90` is the 90th percentile of the waiting
time of an M/M/c queue with the same mean service time (Erlang C):

    P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t),   a = lambda / mu

M/M/c waiting is an upper estimate for the M/D/c queue we really have (deterministic service roughly
halves mean waiting in heavy traffic), so the bound is conservative: a plan that meets it should meet the
objective, at the price of a few percent of utilisation. The largest arrival rate whose bound meets the
objective, capped by a maximum utilisation, is the server's capacity; the planner keeps the sum of
rate x service time of the models on a server under it, which keeps the packing linear.
"""

from __future__ import annotations

import math

TAIL = 0.10  # P90: the bound is on the 10% tail of the waiting time.


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


def wait_quantile_s(workers: int, service_s: float, rate_rps: float, tail: float = TAIL) -> float:
    """The (1 - tail) quantile of the M/M/c waiting time in seconds (inf when the queue is unstable)."""
    if rate_rps <= 0:
        return 0.0
    capacity = workers / service_s
    if rate_rps >= capacity:
        return math.inf
    c = erlang_c(workers, rate_rps * service_s)
    if c <= tail:
        return 0.0
    return math.log(c / tail) / (capacity - rate_rps)


def p90_response_ms(workers: int, latency_ms: float, service_s: float, rate_rps: float) -> float:
    """The P90 response-time bound (ms): batch latency plus the M/M/c P90 wait."""
    return latency_ms + 1000.0 * wait_quantile_s(workers, service_s, rate_rps)


def max_rate_rps(
    workers: int, latency_ms: float, service_s: float, slo_p90_ms: float, max_utilisation: float
) -> float:
    """The largest arrival rate (req/s) a server sustains with its P90 bound within `slo_p90_ms` and its
    utilisation within `max_utilisation`; 0 when even an idle server misses the objective."""
    if latency_ms > slo_p90_ms or workers < 1:
        return 0.0
    cap = max_utilisation * workers / service_s
    if p90_response_ms(workers, latency_ms, service_s, cap) <= slo_p90_ms:
        return cap
    lo, hi = 0.0, cap
    # The bound grows monotonically with the rate, so bisection finds the boundary; 60 halvings reach
    # double precision for any realistic capacity.
    for _ in range(60):
        mid = (lo + hi) / 2
        if p90_response_ms(workers, latency_ms, service_s, mid) <= slo_p90_ms:
            lo = mid
        else:
            hi = mid
    return lo
