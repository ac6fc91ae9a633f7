"""The planner's P90 against a discrete-event simulation of the same server (`planner/simulate.py`).

For Poisson arrivals at utilisation 0.1-0.9, 1-16 workers and lognormal service times with a coefficient
of variation 0-1 (given, as a profile gives them, by a median and a P90), the planner's P90 must be
at least the simulated P90 and at most 30% above it. The simulation's own sampling error is allowed
for: the simulated P90 is the mean over 12 independent replications (the first 10% of each dropped),
and the comparison allows 4 standard errors of that mean either way (Student's t with 11 degrees of
freedom: a one-sided 99.9% interval). The examples are derandomised, so a run is reproducible: a
statistical comparison must not fail at random in CI. The worst ratios found are printed
(`pytest -s`); bench/bench_tail.py prints them over a fixed grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from inferpack.planner.queueing import ServiceTime, erlang_c, p90_response_ms
from inferpack.planner.simulate import (
    fifo_response_times,
    response_times_s,
    sample_service_s,
    simulated_quantile,
)

UPPER = 1.30  # the planner may be at most 30% above the simulated P90
SIGMAS = 4.0  # sampling error allowed: standard errors of the simulated P90 (t, 11 dof, 99.9%)
RATIOS: list[tuple[float, int, float, float]] = []  # (planned / simulated, workers, utilisation, cv)


def planned_and_simulated(workers: int, rho: float, cv: float, p50_ms: float) -> tuple[float, float, float]:
    """(planner's P90, simulated P90, its standard error), ms, for a server with this profile."""
    spread = ServiceTime.from_cv(1.0, cv)  # the shape; the profile gives its median and P90
    service = ServiceTime(p50_ms / 1000.0, spread.sigma)
    profile = ServiceTime.from_quantiles(service.median_s, service.quantile_s(0.9))
    rate = rho * workers / profile.mean_s
    planned = p90_response_ms(workers, p50_ms, profile.mean_s, rate, profile.cv)
    seed = hash((workers, round(rho, 6), round(cv, 6))) % 2**32
    sim = simulated_quantile(workers, rate, service, seed=seed, replications=12)
    return planned, 1000.0 * sim.value_s, 1000.0 * sim.stderr_s


@settings(max_examples=70, deadline=None, derandomize=True)
@given(
    workers=st.integers(1, 16),
    rho=st.floats(0.1, 0.9),
    cv=st.floats(0.0, 1.0),
    p50_ms=st.sampled_from([5.0, 42.5, 230.0]),
)
@example(workers=4, rho=0.8, cv=0.25, p50_ms=42.5)  # the audit's case: M/M/c was 1.37-1.5x short
@example(workers=16, rho=0.8, cv=0.25, p50_ms=42.5)
@example(workers=1, rho=0.9, cv=1.0, p50_ms=42.5)
@example(workers=2, rho=0.3, cv=0.0, p50_ms=42.5)
def test_planned_p90_bounds_the_simulation_within_30_percent(
    workers: int, rho: float, cv: float, p50_ms: float
) -> None:
    planned, simulated, stderr = planned_and_simulated(workers, rho, cv, p50_ms)
    RATIOS.append((planned / simulated, workers, rho, cv))
    assert planned >= simulated * (1 - 1e-9) - SIGMAS * stderr, (planned, simulated, stderr)
    assert planned <= UPPER * (simulated + SIGMAS * stderr), (planned, simulated, stderr)


def test_print_worst_ratios() -> None:
    assert RATIOS, "the property test ran no example"
    low, high = min(RATIOS), max(RATIOS)
    print(
        f"\nplanned / simulated P90 over {len(RATIOS)} cases: lowest {low[0]:.3f} "
        f"(c={low[1]}, rho={low[2]:.2f}, cv={low[3]:.2f}), highest {high[0]:.3f} "
        f"(c={high[1]}, rho={high[2]:.2f}, cv={high[3]:.2f})"
    )
    assert 0.9 < low[0] <= high[0] < 1.4


def test_simulator_matches_mm1_and_mm2_closed_forms() -> None:
    # M/M/1: the response time is exponential with rate mu - lambda: P90 = ln(10) / (mu - lambda).
    mu, lam, n = 20.0, 14.0, 400_000
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    times = fifo_response_times(arrivals, rng.exponential(1 / mu, n), 1)
    assert float(np.quantile(times, 0.9)) == pytest.approx(math.log(10) / (mu - lam), rel=0.03)
    # M/M/2: P(wait) is Erlang C and the mean wait C / (2 mu - lambda) (textbook formulas).
    lam2 = 28.0
    arrivals = np.cumsum(rng.exponential(1 / lam2, n))
    times = fifo_response_times(arrivals, rng.exponential(1 / mu, n), 2)
    assert float(times.mean()) - 1 / mu == pytest.approx(erlang_c(2, lam2 / mu) / (2 * mu - lam2), rel=0.05)


def test_one_worker_recursion_equals_the_event_loop() -> None:
    # The vectorised one-worker recursion and the c-worker event loop agree (c-worker path with one
    # worker busy forever on an infinitely long request leaves the other as a single server).
    rng = np.random.default_rng(9)
    arrivals = np.cumsum(rng.exponential(1 / 15.0, 5000))
    services = sample_service_s(ServiceTime(0.05, 0.3), 5000, rng)
    one = fifo_response_times(arrivals, services, 1)
    blocked = fifo_response_times(np.concatenate(([0.0], arrivals)), np.concatenate(([1e12], services)), 2)
    assert np.allclose(one, blocked[1:])


def test_deterministic_idle_server_answers_in_its_service_time() -> None:
    service = ServiceTime(0.04)
    times = response_times_s(3, 1.0, service, 2000, np.random.default_rng(1))
    assert times.min() == pytest.approx(0.04)
    assert p90_response_ms(3, 40.0, 0.04, 1e-9, 0.0) == pytest.approx(40.0)
