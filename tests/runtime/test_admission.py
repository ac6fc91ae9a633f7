"""The pure admission estimator: expected wait and service from measured batch and thread-wait times."""

from __future__ import annotations

import pytest

from inferpack.runtime.admission import (
    Estimate,
    Ewma,
    PoolState,
    WaitEstimator,
    cannot_finish,
    retry_after_s,
    shed_reason,
)

IDLE = PoolState(thread_free=True, waiting=0, release_interval_s=0.05)
BUSY = PoolState(thread_free=False, waiting=0, release_interval_s=0.05)


def test_nothing_measured_admits_everything() -> None:
    est = WaitEstimator(max_batch_size=8)
    nothing = PoolState(thread_free=False, waiting=0, release_interval_s=0.0)
    assert est.estimate(100, 1, nothing, position=0) == Estimate(0.0, 0.0)
    assert shed_reason(est.estimate(100, 1, nothing, position=0), 0.001) is None


def test_batch_time_is_a_moving_average_per_size() -> None:
    est = WaitEstimator(max_batch_size=8, alpha=0.5)
    est.observe_batch(1, 0.010)
    est.observe_batch(1, 0.020)  # 0.010 + 0.5 * (0.020 - 0.010)
    assert est.batch_seconds(1) == pytest.approx(0.015)
    est.observe_batch(8, 0.050)
    assert est.batch_seconds(8) == pytest.approx(0.050)
    # between measured sizes: linear; past the largest: per item; below the smallest: the smallest's time
    est.observe_batch(2, 0.020)
    assert est.batch_seconds(5) == pytest.approx(0.020 + 3 / 6 * 0.030)
    assert est.batch_seconds(50) == pytest.approx(0.050)  # capped at max_batch_size
    small = WaitEstimator(max_batch_size=8)
    small.observe_batch(4, 0.040)
    assert small.batch_seconds(8) == pytest.approx(0.080)
    assert small.batch_seconds(1) == pytest.approx(0.040)
    ewma = Ewma(alpha=0.25)
    assert ewma.value is None and ewma.add(4.0) == 4.0 and ewma.add(8.0) == 5.0


def test_wait_counts_turns_of_the_shared_threads() -> None:
    est = WaitEstimator(max_batch_size=4)
    for size, seconds in ((1, 0.040), (2, 0.060), (4, 0.100)):
        est.observe_batch(size, seconds)
    # an idle thread and an empty queue: no wait, a batch of one
    assert est.estimate(0, 1, IDLE) == Estimate(0.0, pytest.approx(0.040))
    # every thread busy, nobody else waiting: one turn (a thread frees up every 50 ms), and by then its
    # batch has the model's usual size (1, 2, 4 seen: about 2)
    assert est.estimate(0, 1, BUSY) == Estimate(pytest.approx(0.050), pytest.approx(0.060))
    # 9 ahead + itself = 10 items = 3 batches of 4 (the last one of 2 so far): three turns
    assert est.estimate(9, 1, BUSY) == Estimate(pytest.approx(0.150), pytest.approx(0.060))
    # three dispatchers in line, this model's last: its turn comes after three releases; next in line: one
    crowded = PoolState(thread_free=False, waiting=3, release_interval_s=0.05)
    assert est.estimate(0, 1, crowded, position=2).wait_s == pytest.approx(0.150)
    assert est.estimate(0, 1, crowded, position=0).wait_s == pytest.approx(0.050)
    # a second batch waits a full round of the line after the first: 1 + 3 releases
    assert est.estimate(4, 1, crowded, position=0).wait_s == pytest.approx(0.200)
    # not in line yet, two others are: it joins behind them (3 releases), later rounds are 3 long too
    two = PoolState(thread_free=False, waiting=2, release_interval_s=0.05)
    assert est.estimate(4, 1, two).wait_s == pytest.approx(0.300)
    # a request of 3 items behind 5 with a thread idle: its last item is the 8th, in the second batch
    assert est.estimate(5, 3, IDLE).wait_s == pytest.approx(0.050)
    # once the queues are empty the wait is gone, however long they were: nothing stale is kept
    assert est.estimate(0, 1, IDLE).wait_s == 0.0


def test_shed_reason_and_retry_after() -> None:
    estimate = Estimate(wait_s=0.9, service_s=0.2)
    assert shed_reason(estimate, None) is None  # no deadline: only a full queue sheds
    assert shed_reason(estimate, 2.0) is None
    assert shed_reason(estimate, 1.0) == "deadline"
    assert shed_reason(Estimate(0.0, 0.0), 0.0) == "deadline"  # no time left at all
    assert retry_after_s(estimate) == pytest.approx(1.1)


def test_cannot_finish_uses_the_batch_time() -> None:
    assert not cannot_finish(10.0, None, 5.0)
    assert not cannot_finish(10.0, 10.5, 0.4)
    assert cannot_finish(10.0, 10.5, 0.6)
    assert cannot_finish(11.0, 10.5, 0.0)


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        WaitEstimator(max_batch_size=0)
    with pytest.raises(ValueError):
        WaitEstimator(max_batch_size=4, alpha=0)
    with pytest.raises(ValueError):
        Ewma(alpha=1.5)


def test_a_waiting_request_expects_the_models_usual_batch_size() -> None:
    est = WaitEstimator(max_batch_size=8, alpha=1.0)
    est.observe_batch(1, 0.010)
    est.observe_batch(6, 0.060)  # lately this model's batches hold 6 items
    # it must wait: by the time its batch forms, later arrivals will have joined it
    assert est.estimate(0, 1, BUSY).service_s == pytest.approx(0.060)
    # a thread is idle: its batch forms now, with what is queued
    assert est.estimate(0, 1, IDLE).service_s == pytest.approx(0.010)
