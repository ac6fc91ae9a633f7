from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferpack.planner.queueing import (
    DEFAULT_CV,
    ServiceTime,
    erlang_c,
    max_rate_rps,
    p90_response_ms,
    wait_quantile_s,
)


def test_erlang_c_single_server_is_utilisation() -> None:
    # M/M/1: an arrival waits with probability rho.
    assert erlang_c(1, 0.3) == pytest.approx(0.3)


def test_erlang_c_textbook_value() -> None:
    # c = 2, a = 1 (rho = 0.5): C = 1/3 (a standard worked example).
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)


def test_mm1_wait_quantile_matches_closed_form() -> None:
    # M/M/1: P(W > t) = rho exp(-(mu - lambda) t).
    mu, lam = 10.0, 7.0
    expected = math.log(0.7 / 0.1) / (mu - lam)
    assert wait_quantile_s(1, 1 / mu, lam) == pytest.approx(expected)


def test_unstable_queue_has_infinite_wait() -> None:
    assert wait_quantile_s(2, 0.1, 25.0) == math.inf


def test_latency_above_objective_gives_zero_capacity() -> None:
    assert max_rate_rps(8, 120.0, 0.12, 100.0, 0.8) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(1, 96),
    latency_ms=st.floats(1.0, 90.0),
    slo=st.floats(95.0, 1000.0),
    util=st.floats(0.3, 1.0),
)
def test_max_rate_keeps_the_objective_and_the_utilisation(
    workers: int, latency_ms: float, slo: float, util: float
) -> None:
    service_s = latency_ms / 1000.0
    rate = max_rate_rps(workers, latency_ms, service_s, slo, util)
    assert 0 < rate <= util * workers / service_s + 1e-9
    assert p90_response_ms(workers, latency_ms, service_s, rate) <= slo + 1e-6
    # More workers never lower the capacity.
    assert max_rate_rps(workers + 1, latency_ms, service_s, slo, util) >= rate - 1e-9


def test_service_time_round_trips_through_its_quantiles_and_cv() -> None:
    s = ServiceTime.from_cv(0.05, 0.4)
    assert s.mean_s == pytest.approx(0.05) and s.cv == pytest.approx(0.4)
    again = ServiceTime.from_quantiles(s.median_s, s.quantile_s(0.9))
    assert again.sigma == pytest.approx(s.sigma) and again.median_s == pytest.approx(s.median_s)
    # No P90 in the profile: the default spread. A P90 equal to the median: deterministic.
    assert ServiceTime.from_quantiles(0.05, None).cv == pytest.approx(DEFAULT_CV)
    assert ServiceTime.from_quantiles(0.05, 0.05).sigma == 0.0


def test_spread_lengthens_the_p90_and_lowers_the_capacity() -> None:
    tight = p90_response_ms(4, 50.0, 0.05, 60.0, 0.0)
    wide = p90_response_ms(4, 50.0, 0.05, 60.0, 0.5)
    assert 50.0 < tight < wide
    assert max_rate_rps(4, 50.0, 0.05, 150.0, 0.9, 0.5) < max_rate_rps(4, 50.0, 0.05, 150.0, 0.9, 0.0)


def test_many_workers_in_light_traffic_wait_for_nobody() -> None:
    # Erlang C underflows to 0 here; the P90 is the service time's own P90.
    service = ServiceTime.from_cv(0.1, 0.25)
    assert p90_response_ms(400, 1000 * service.median_s, 0.1, 1.0, 0.25) == pytest.approx(
        1000 * service.quantile_s(0.9)
    )
