"""Load shapes: arrival schedules and how load is split across workers."""

from __future__ import annotations

import itertools

import numpy as np

from inferpack.loadtest.shapes import (
    ClosedLoop,
    OpenLoop,
    Step,
    intended_times,
    parse_steps,
    split_count,
    split_shape,
)


def test_constant_arrivals_are_evenly_spaced_and_warmup_is_negative() -> None:
    shape = OpenLoop(steps=[Step(rate=100)])
    times = list(itertools.islice(intended_times(shape, -0.5, np.random.default_rng(0)), 100))
    assert times[0] == -0.5
    assert np.allclose(np.diff(times), 0.01)
    assert sum(t < 0 for t in times) == 50


def test_stepped_rate_changes_at_step_boundaries() -> None:
    shape = OpenLoop(steps=parse_steps("1:10,1:100,1000"))
    times = list(itertools.takewhile(lambda t: t < 2.0, intended_times(shape, 0.0, np.random.default_rng(0))))
    assert sum(t < 1.0 for t in times) == 10
    assert sum(1.0 <= t < 2.0 for t in times) == 100
    assert shape.rate_at(5.0) == 1000


def test_poisson_arrivals_have_the_set_mean_rate() -> None:
    shape = OpenLoop(steps=[Step(rate=200)], arrivals="poisson")
    times = list(itertools.islice(intended_times(shape, 0.0, np.random.default_rng(9)), 20_000))
    rate = len(times) / times[-1]
    assert abs(rate - 200) < 200 * 0.03


def test_split_across_workers_adds_up() -> None:
    assert sum(split_count(1001, 4, i) for i in range(4)) == 1001
    users = [split_shape(ClosedLoop(users=10), 3, i) for i in range(3)]
    assert sum(u.users for u in users if isinstance(u, ClosedLoop)) == 10
    part = split_shape(OpenLoop(steps=[Step(rate=90)]), 3, 0)
    assert isinstance(part, OpenLoop) and part.steps[0].rate == 30


def test_worker_phases_interleave_constant_streams() -> None:
    merged = []
    for i in range(3):
        part = split_shape(OpenLoop(steps=[Step(rate=300)]), 3, i)
        assert isinstance(part, OpenLoop)
        stream = intended_times(part, 0.0, np.random.default_rng(i), phase=i / 3)
        merged += list(itertools.islice(stream, 100))
    merged.sort()
    assert np.allclose(np.diff(merged), 1 / 300)
