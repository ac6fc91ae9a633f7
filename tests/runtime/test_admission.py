"""The pure admission estimator: expected wait and service from measured batch times and the line for threads."""

from __future__ import annotations

import pytest

from inferpack.runtime.admission import (
    Estimate,
    Ewma,
    GroupState,
    Lateness,
    PoolState,
    WaitEstimator,
    cannot_finish,
    default_deadline_s,
    release_times,
    retry_after_s,
    shed_reason,
    stale_probe,
)

IDLE = PoolState(thread_free=True, waiting=0, release_interval_s=0.05)
BUSY = PoolState(thread_free=False, waiting=0, release_interval_s=0.05)


def test_nothing_measured_admits_everything() -> None:
    est = WaitEstimator(max_batch_size=8)
    nothing = PoolState(thread_free=False, waiting=0, release_interval_s=0.0)
    assert est.estimate(GroupState(100, 1, 0), 1, nothing) == Estimate(0.0, 0.0)
    assert shed_reason(est.estimate(GroupState(100, 1, 0), 1, nothing), 0.001) is None


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


def measured(max_batch_size: int = 4) -> WaitEstimator:
    est = WaitEstimator(max_batch_size=max_batch_size)
    for size, seconds in ((1, 0.040), (2, 0.060), (4, 0.100)):
        est.observe_batch(size, seconds)
    return est


def test_an_empty_queue_waits_at_most_one_release() -> None:
    est = measured()
    # an idle thread and an empty queue: no wait, a batch of one
    assert est.estimate(GroupState(0), 1, IDLE) == Estimate(0.0, pytest.approx(0.040))
    # every thread busy, nobody waiting: the next release (a thread frees up every 50 ms: the batch time
    # over the threads, not a whole batch per thread), and by then its batch has the usual size (about 2)
    assert est.estimate(GroupState(0), 1, BUSY) == Estimate(pytest.approx(0.050), pytest.approx(0.060))


def test_a_queue_waits_one_release_per_batch_ahead() -> None:
    est = measured()
    # 9 ahead + itself = 10 items = 3 batches of 4 (the last one of 2 so far): three releases
    assert est.estimate(GroupState(9), 1, BUSY) == Estimate(pytest.approx(0.150), pytest.approx(0.060))
    # its group's dispatcher already first in line: the same
    assert est.estimate(GroupState(9, 1, 0), 1, BUSY).wait_s == pytest.approx(0.150)
    # a request of 3 items behind 5 with a thread idle: its last item is the 8th, in the second batch
    assert est.estimate(GroupState(5), 3, IDLE).wait_s == pytest.approx(0.050)


def test_a_smaller_batch_limit_means_more_turns() -> None:
    est = measured(max_batch_size=8)
    # 9 ahead + itself: 2 batches of 8, or 3 of 4 when a batch policy keeps batches at 4
    assert est.estimate(GroupState(9), 1, BUSY).wait_s == pytest.approx(0.100)
    assert est.estimate(GroupState(9), 1, BUSY, batch_limit=4).wait_s == pytest.approx(0.150)


def test_other_groups_in_line_take_turns_in_between() -> None:
    est = measured()
    crowded = PoolState(thread_free=False, waiting=3, release_interval_s=0.05)
    # three other models' dispatchers in line and none of its group's: it joins behind them
    assert est.estimate(GroupState(0), 1, crowded).wait_s == pytest.approx(0.200)
    # its group's dispatcher is in line, third (two others ahead): its turn is the third release ...
    assert est.estimate(GroupState(0, 1, 2), 1, crowded).wait_s == pytest.approx(0.150)
    # ... and a second batch waits a full round of the line after that: the two others, then its own
    assert est.estimate(GroupState(4, 1, 2), 1, crowded).wait_s == pytest.approx(0.300)


def test_the_group_drains_as_one_queue() -> None:
    """Cross-tenant batching: six models of one base, each with a dispatcher in line. A dispatcher that
    gets a thread takes from every queue of the group, so the six are not six turns ahead of each other:
    the group's 7 queued items and the new one are two batches, two releases."""
    est = measured()
    six = PoolState(thread_free=False, waiting=6, release_interval_s=0.05)
    assert est.estimate(GroupState(7, 6, 0), 1, six).wait_s == pytest.approx(0.100)
    # the old, per-model view charged a release per dispatcher in line: 6 + 1 releases (350 ms)
    # with two other groups' dispatchers in line too (8 waiting), later turns are shared 6 : 2
    eight = PoolState(thread_free=False, waiting=8, release_interval_s=0.05)
    assert est.estimate(GroupState(7, 6, 1), 1, eight).wait_s == pytest.approx(0.05 * (2 + 8 / 6))


def test_the_estimate_falls_back_once_the_queues_drain() -> None:
    est = measured()
    # a long queue a moment ago says nothing now: nothing stale is kept between calls
    assert est.estimate(GroupState(40, 6, 3), 1, PoolState(False, 9, 0.05)).wait_s > 0.5
    assert est.estimate(GroupState(0), 1, IDLE).wait_s == 0.0
    assert est.estimate(GroupState(0), 1, BUSY).wait_s == pytest.approx(0.050)


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
    assert est.estimate(GroupState(0), 1, BUSY).service_s == pytest.approx(0.060)
    # a thread is idle: its batch forms now, with what is queued
    assert est.estimate(GroupState(0), 1, IDLE).service_s == pytest.approx(0.010)


def test_the_default_deadline_is_configured_or_derived() -> None:
    # configured: as given; 0 switches the default off
    assert default_deadline_s(750, 100, 4, 0.05) == pytest.approx(0.75)
    assert default_deadline_s(0, 100, 4, 0.05) is None
    # else the latency objective
    assert default_deadline_s(None, 100, 4, 0.05) == pytest.approx(0.1)
    # else a few full batches: 4 x 50 ms
    assert default_deadline_s(None, None, 4, 0.05) == pytest.approx(0.2)
    # never under 50 ms or over 10 s, and 10 s until a batch was timed
    assert default_deadline_s(None, None, 4, 0.001) == pytest.approx(0.05)
    assert default_deadline_s(None, None, 4, 30.0) == pytest.approx(10.0)
    assert default_deadline_s(None, None, 4, 0.0) == pytest.approx(10.0)


def test_a_full_batch_is_never_cheaper_than_a_measured_smaller_one() -> None:
    # A contended host: batches of one slowed by a descheduled thread, the one batch of four timed on a
    # quiet core and not refreshed since. The full batch read from that stale figure (6 ms) made a default
    # deadline (floor: 50 ms) shorter than the 67 ms admission expected for the next request of one, so an
    # idle server shed everything (wait 0 + service 67 ms > 50 ms); the envelope keeps them consistent.
    est = WaitEstimator(max_batch_size=8, alpha=0.2)
    est.observe_batch(4, 0.003)
    est.observe_batch(1, 0.003)
    est.observe_batch(1, 0.325)  # one batch of one held up ~0.3 s: the average is now ~67 ms
    assert est.batch_seconds(8) == pytest.approx(0.006)  # unchanged: extrapolated from the batch of four
    assert est.full_batch_seconds() == pytest.approx(est.batch_seconds(1)) == pytest.approx(0.0674)
    deadline = default_deadline_s(None, None, 8, est.full_batch_seconds())
    idle = PoolState(thread_free=True, waiting=0, release_interval_s=0.0)
    assert shed_reason(est.estimate(GroupState(0), 1, idle), deadline) is None
    assert shed_reason(est.estimate(GroupState(0), 1, idle), default_deadline_s(None, None, 8, 0.006))
    assert WaitEstimator(max_batch_size=8).full_batch_seconds() == 0.0  # nothing measured: 10 s default


def test_releases_follow_the_running_batches() -> None:
    # two threads 5 and 15 ms from the end of their batches, 20 ms batches after that
    assert release_times((0.005, 0.015), 2, 0.020, 4) == pytest.approx([0.005, 0.015, 0.025, 0.035])
    # an idle thread is free now; a batch past its expected end could end any moment: now
    assert release_times((0.015,), 2, 0.020, 3) == pytest.approx([0.0, 0.015, 0.020])
    assert release_times((-0.004, 0.010), 2, 0.020, 2) == pytest.approx([0.0, 0.010])
    # a long batch on one thread: the other thread frees up twice before it
    assert release_times((0.005, 0.100), 2, 0.020, 3) == pytest.approx([0.005, 0.025, 0.045])
    # past the simulated releases: one mean interval (batch / threads) each
    far = release_times((0.0, 0.0), 2, 0.020, 70)
    assert far[-1] - far[-2] == pytest.approx(0.010) and len(far) == 70


def test_a_pool_that_knows_its_running_batches_times_releases_from_them() -> None:
    busy = PoolState(False, 0, 0.010, busy_left_s=(0.002, 0.015), threads=2)
    assert busy.release_time(0) == 0.0
    assert busy.release_time(1) == pytest.approx(0.002)  # the first release: the nearer end
    assert busy.release_time(2) == pytest.approx(0.015)
    assert busy.release_time(1.5) == pytest.approx(0.0085)  # a shared turn: between the two
    free = PoolState(True, 0, 0.010, busy_left_s=(0.015,), threads=2)
    assert free.release_time(0) == 0.0 and free.release_time(1) == pytest.approx(0.015)
    # without the running batches: one mean interval per release, as before
    assert PoolState(False, 0, 0.010).release_time(2) == pytest.approx(0.020)


def test_a_request_two_threads_will_soon_serve_is_admitted() -> None:
    """The over-shedding at tight deadlines: a 20 ms batch time, two threads busy, one request queued.
    One mean interval per release charged the new request 2 x 10 ms + 20 ms = 40 ms and shed it with a
    35 ms deadline, although both threads were about to free up (3 and 6 ms left)."""
    est = WaitEstimator(max_batch_size=1)
    est.observe_batch(1, 0.020)
    averaged = PoolState(False, 0, 0.010)
    timed = PoolState(False, 0, 0.010, busy_left_s=(0.003, 0.006), threads=2)
    assert est.estimate(GroupState(1), 1, averaged).total_s == pytest.approx(0.040)
    assert shed_reason(est.estimate(GroupState(1), 1, averaged), 0.035) == "deadline"
    assert est.estimate(GroupState(1), 1, timed).total_s == pytest.approx(0.026)
    assert shed_reason(est.estimate(GroupState(1), 1, timed), 0.035) is None


def test_a_stale_probe_needs_an_idle_thread_an_empty_queue_and_time() -> None:
    now_only = Estimate(0.0, 0.1)
    assert stale_probe(now_only, 0.06, idle_threads=1, queued=0, since_activity_s=0.2)
    assert not stale_probe(now_only, 0.06, idle_threads=0, queued=0, since_activity_s=0.2)
    assert not stale_probe(now_only, 0.06, idle_threads=1, queued=1, since_activity_s=0.2)
    assert not stale_probe(now_only, 0.06, idle_threads=1, queued=0, since_activity_s=0.05)
    assert not stale_probe(now_only, 0.04, idle_threads=1, queued=0, since_activity_s=0.2)
    assert not stale_probe(Estimate(0.01, 0.1), 0.06, idle_threads=1, queued=0, since_activity_s=0.2)


def test_lateness_is_a_high_quantile_of_recent_ratios_never_below_one() -> None:
    late = Lateness(q=0.9, window=20, every=10)
    late.observe(0.5, 0.0)  # nothing was estimated (no measurement yet): not a sample
    for _ in range(9):
        late.observe(0.03, 0.01)
    assert late.factor == 1.0  # recomputed every 10 samples only
    late.observe(0.03, 0.01)
    assert late.factor == pytest.approx(3.0)
    for got in [0.008] * 9 + [0.02]:  # the window: ten of 3.0, nine of 0.8, one of 2.0
        late.observe(got, 0.01)
    assert late.factor == pytest.approx(3.0)  # 90th of 20: a request 3x its estimate
    for _ in range(20):  # estimates that were pessimistic: the factor never goes below 1
        late.observe(0.008, 0.01)
    assert late.factor == 1.0
    with pytest.raises(ValueError):
        Lateness(q=1.0)


def test_the_lateness_applies_to_the_estimate() -> None:
    estimate = Estimate(0.010, 0.005)
    assert shed_reason(estimate, 0.020) is None
    assert shed_reason(estimate, 0.020, lateness=1.3) is None
    assert shed_reason(estimate, 0.020, lateness=1.4) == "deadline"
    assert shed_reason(estimate, None, lateness=5.0) is None  # no deadline: nothing to miss
