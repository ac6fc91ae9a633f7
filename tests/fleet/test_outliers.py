"""Deadlines from observed latency, outlier ejection and supervisor liveness counting: pure, fake clocks."""

from __future__ import annotations

import pytest

from inferpack.fleet.liveness import LivenessTracker
from inferpack.fleet.outliers import Deadlines, OutlierDetector


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _deadlines(**kw: float) -> Deadlines:
    args: dict[str, float] = {
        "floor_s": 0.5,
        "factor": 4.0,
        "ceiling_s": 60.0,
        "min_samples": 10,
        "window": 100,
    }
    args.update(kw)
    return Deadlines(**args)  # type: ignore[arg-type]


def test_deadline_is_the_ceiling_without_samples_then_factor_times_p99() -> None:
    d = _deadlines()
    assert d.deadline("m") == 60.0
    for i in range(100):
        d.observe("m", 0.1 if i < 98 else 1.0)  # 2 % slow: P99 (nearest rank) is a slow one
    assert d.deadline("m") == pytest.approx(4.0)
    for _ in range(100):
        d.observe("m", 0.2)  # the window forgets the old samples
    assert d.deadline("m") == pytest.approx(0.8)


def test_deadline_is_clamped_to_floor_and_ceiling() -> None:
    d = _deadlines()
    for _ in range(20):
        d.observe("fast", 0.01)
        d.observe("slow", 30.0)
    assert d.deadline("fast") == 0.5
    assert d.deadline("slow") == 60.0


def test_model_with_few_samples_borrows_the_fleet_p99() -> None:
    d = _deadlines()
    for _ in range(30):
        d.observe("busy", 0.25)
    d.observe("rare", 5.0)
    assert d.deadline("rare") == pytest.approx(4 * 5.0)  # the P99 of all 31 samples is the rare one's 5 s
    assert d.deadline("never-seen") == pytest.approx(20.0)


def test_floor_above_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        _deadlines(floor_s=10, ceiling_s=5)


def _detector(clock: Clock) -> OutlierDetector:
    return OutlierDetector(["s0", "s1"], failures=3, base_s=5.0, max_s=40.0, clock=clock)


def test_ejected_after_consecutive_failures_only() -> None:
    clock = Clock()
    o = _detector(clock)
    assert o.failure("s0") is None and o.failure("s0") is None
    o.success("s0")  # any answer resets the count
    assert o.failure("s0") is None and o.failure("s0") is None
    assert o.failure("s0") == 5.0
    assert o.ejected("s0") and not o.ejected("s1")
    assert o.failure("s0") is None  # calls in flight when it was ejected do not eject it again


def test_half_open_probes_until_one_answers_and_repeats_eject_for_longer() -> None:
    clock = Clock()
    o = _detector(clock)
    for _ in range(3):
        o.failure("s0")
    assert not o.half_open("s0") and o.probe("s0", True) is None  # period running: probes do not count
    clock.t += 5.0
    assert o.half_open("s0")
    assert o.probe("s0", False) is None and o.half_open("s0")  # not answered: probed again later
    clock.t += 3.0
    assert o.probe("s0", True) == "readmitted" and not o.ejected("s0")
    for _ in range(3):
        o.failure("s0")
    clock.t += 9.9
    assert not o.half_open("s0")  # a repeat: 10 s
    clock.t += 0.1
    assert o.probe("s0", True) == "readmitted"
    for _ in range(3):
        o.failure("s0")
    clock.t += 19.9
    assert not o.half_open("s0")  # third in a row: 20 s
    clock.t += 0.1
    assert o.probe("s0", True) == "readmitted"


def test_period_is_capped_and_resets_after_a_long_good_run() -> None:
    clock = Clock()
    o = _detector(clock)
    assert [o.period_s(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, 40.0]
    for _ in range(3):
        o.failure("s0")
    clock.t += 5.0
    o.probe("s0", True)
    clock.t += 40.0  # in service for max_s: the next ejection is a new incident
    periods = [o.failure("s0") for _ in range(3)]
    assert periods == [None, None, 5.0]


def test_liveness_tracker_counts_failures_in_a_row_and_paces_probes() -> None:
    clock = Clock()
    t = LivenessTracker(interval_s=1.0, failures=3, clock=clock)
    t.reset()
    assert not t.due()
    clock.t += 1.0
    assert t.due()
    t.sent()
    assert not t.due()  # one probe at a time
    assert t.result(False) is False
    assert not t.due()
    clock.t += 1.0
    assert t.result(False) is False
    assert t.result(True) is False and t.consecutive == 0
    assert [t.result(False) for _ in range(3)] == [False, False, True]
    t.reset()
    assert t.consecutive == 0


def test_a_server_that_joins_later_starts_in_service() -> None:
    """The router may reload its placement: servers the detector was not built with are tracked too."""
    o = _detector(Clock())
    assert not o.ejected("s9")
    assert [o.failure("s9") for _ in range(3)] == [None, None, 5.0]
