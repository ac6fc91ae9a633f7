"""The batch-size policy on fixed measurements (no clock): spread over idle threads, the largest batch the
latency objective allows when every core is busy, growth from what was measured, probes, the cap."""

from __future__ import annotations

import pytest

from inferpack.runtime.admission import WaitEstimator
from inferpack.runtime.batchpolicy import (
    BatchLimits,
    batch_size,
    largest_within,
    settle_wait,
    within_deadlines,
)


def measured(cap: int, times: dict[int, float]) -> WaitEstimator:
    """The admission estimator (the batcher's source of batch times) after one batch per given size."""
    est = WaitEstimator(max_batch_size=cap)
    for size, seconds in times.items():
        est.observe_batch(size, seconds)
    return est


CURVE = measured(32, {1: 0.010, 4: 0.025, 8: 0.045})  # sublinear, as on CPUs: 4.5x the time for 8x the rows


def test_idle_threads_share_the_queue_instead_of_one_batch_taking_it() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_latency_s=0.1)
    assert batch_size(2, limits, CURVE.batch_seconds, idle_threads=1) == 1  # two requests, two cores: 1 + 1
    assert batch_size(5, limits, CURVE.batch_seconds, idle_threads=1) == 3  # 3 here, 2 on the other core
    assert batch_size(1, limits, CURVE.batch_seconds, idle_threads=3) == 1
    assert batch_size(16, limits, CURVE.batch_seconds, idle_threads=1) == 8


def test_with_every_core_busy_the_batch_is_the_largest_that_keeps_the_objective() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_latency_s=0.040)
    # between the measured 4 (25 ms) and 8 (45 ms), 5 ms per row: 7 rows cost 40 ms, 8 cost 45; the 13
    # left behind start within two more turns of 40 ms / 2 threads
    assert batch_size(20, limits, CURVE.batch_seconds, threads=2) == 7
    assert batch_size(3, limits, CURVE.batch_seconds, threads=2) == 3  # fewer queued: all of them
    assert batch_size(0, limits, CURVE.batch_seconds) == 0
    roomy = BatchLimits(max_batch_size=32, max_batch_latency_s=0.1)
    # above the largest measured size: linear per item from it (45 ms / 8 per row): 17 rows ~ 96 ms
    assert batch_size(20, roomy, CURVE.batch_seconds, threads=4) == 17


def test_under_overload_the_batch_takes_all_it_may() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_latency_s=0.040)
    # 7 keep the objective, but the 33 behind them need 5 more turns of 40 ms on 2 threads (100 ms): they
    # miss it whatever this batch does, so it drains the queue fastest (up to the cap)
    assert batch_size(40, limits, CURVE.batch_seconds, threads=2) == 32
    assert batch_size(40, limits, CURVE.batch_seconds, threads=16) == 7  # many threads: they keep up
    # a slow (or busy) machine: one request alone takes 300 ms; batches of 1 would only lengthen the queue
    slow = measured(8, {1: 0.3, 2: 0.5})
    assert batch_size(10, BatchLimits(8, 0.1), slow.batch_seconds, threads=2) == 8


def test_the_batch_grows_as_larger_sizes_are_measured_cheaper_than_extrapolated() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_latency_s=0.1)
    est = measured(32, {1: 0.012})
    first = batch_size(12, limits, est.batch_seconds, threads=2)
    assert first == 8  # only batch 1 known: 12 ms a row, 8 rows ~ 96 ms
    est.observe_batch(first, 0.045)  # the batch of 8 ran in 45 ms, not 96
    assert batch_size(20, limits, est.batch_seconds, threads=2) == 17


def test_the_cap_and_no_objective() -> None:
    assert batch_size(50, BatchLimits(8, None), CURVE.batch_seconds) == 8
    assert batch_size(50, BatchLimits(8, 1.0), CURVE.batch_seconds) == 8
    nothing_yet = WaitEstimator(max_batch_size=8)  # before any batch ran: cost 0, the cap decides
    assert batch_size(50, BatchLimits(8, 0.001), nothing_yet.batch_seconds) == 8


def test_one_request_runs_even_when_alone_it_exceeds_the_objective() -> None:
    slow = measured(8, {1: 0.3, 2: 0.5})
    assert batch_size(2, BatchLimits(8, 0.1), slow.batch_seconds, threads=8) == 1
    assert largest_within(BatchLimits(8, 0.1), slow.batch_seconds, 10) == 1


def test_a_probe_runs_one_size_above_the_limit_when_enough_are_queued() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_latency_s=0.040)
    assert batch_size(20, limits, CURVE.batch_seconds, threads=2, probe=True) == 8  # 7 fit, 8 re-measured
    assert batch_size(7, limits, CURVE.batch_seconds, probe=True) == 7  # only 7 queued
    assert batch_size(2, limits, CURVE.batch_seconds, idle_threads=1, probe=True) == 1  # the share decides
    assert batch_size(50, BatchLimits(8, None), CURVE.batch_seconds, probe=True) == 8  # never past the cap


def test_a_spike_at_one_size_does_not_keep_larger_measured_sizes_out() -> None:
    spiky = measured(16, {4: 0.080, 8: 0.045})  # batch 4 measured during a burst of contention
    assert batch_size(16, BatchLimits(16, 0.05), spiky.batch_seconds) == 8


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchLimits(0, None)
    with pytest.raises(ValueError, match="max_batch_latency_s"):
        BatchLimits(8, 0.0)


def test_a_batch_takes_at_most_half_the_shortest_deadline_among_its_requests() -> None:
    # 8 rows take 45 ms, 4 take 25, 1 takes 10: a 60 ms deadline allows 30 ms batches (5 rows), 24 ms
    # allows only one row
    assert within_deadlines(8, CURVE.batch_seconds, None) == 8
    assert within_deadlines(8, CURVE.batch_seconds, 0.200) == 8
    assert within_deadlines(8, CURVE.batch_seconds, 0.060) == 5
    assert within_deadlines(8, CURVE.batch_seconds, 0.024) == 1
    assert within_deadlines(8, CURVE.batch_seconds, 0.001) == 1  # at least one: the batcher drops it if late
    assert within_deadlines(3, CURVE.batch_seconds, 0.200) == 3  # never larger than asked


def _settle(**overrides: float) -> float:
    """settle_wait for a freed thread of 2 with 1 request queued, a batch of 8 rows running on the other
    thread, the last arrival 1 ms ago, nothing waited yet, a 2 ms gap and a 10 ms cap, unless overridden."""
    args: dict[str, float] = {
        "queued": 1,
        "full": 8,
        "rows_running": 8,
        "threads": 2,
        "idle_threads": 0,
        "since_arrival": 0.001,
        "waited": 0.0,
        "gap": 0.002,
        "cap": 0.010,
    } | overrides
    return settle_wait(
        int(args["queued"]),
        int(args["full"]),
        rows_running=int(args["rows_running"]),
        threads=int(args["threads"]),
        idle_threads=int(args["idle_threads"]),
        since_arrival=args["since_arrival"],
        waited=args["waited"],
        gap=args["gap"],
        cap=args["cap"],
    )


def test_settle_waits_while_requests_keep_arriving_and_the_other_threads_are_busy() -> None:
    assert _settle() == pytest.approx(0.001)  # until a gap of 2 ms after the last arrival
    assert _settle(since_arrival=0.0025) == 0.0  # arrivals stopped: form the batch
    assert _settle(waited=0.0095) == pytest.approx(0.0005)  # the cap bounds the whole wait
    assert _settle(queued=7) == pytest.approx(0.001)


def test_settle_never_waits_for_what_cannot_pay() -> None:
    assert _settle(queued=8) == 0.0  # the largest size allowed is queued
    assert _settle(queued=0) == 0.0  # nothing to wait with (the dispatcher waits for an arrival anyway)
    assert _settle(idle_threads=1) == 0.0  # a core is free: spread instead of waiting
    assert _settle(rows_running=0) == 0.0  # no other batch runs: waiting would leave every core idle
    assert _settle(rows_running=1) == 0.0  # one request per thread: no more are coming to batch with
    assert _settle(cap=0.0) == 0.0  # nothing measured yet
    assert _settle(gap=0.0) == 0.0  # switched off
