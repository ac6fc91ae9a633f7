"""The per-batch choice between a model's eager module and its alternate runtime (engine mixed), pure."""

from __future__ import annotations

import pytest

from inferpack.runtime.runtimechoice import RuntimeChoice


def feed(choice: RuntimeChoice, size: int, eager_s: float, alternate_s: float, batches: int) -> list[bool]:
    """Run `batches` batches of `size` rows (10 tokens a row), each taking the time its runtime takes."""
    picks = []
    for _ in range(batches):
        alternate = choice.choose(size)
        picks.append(alternate)
        choice.observe(alternate, size, 10 * size, alternate_s if alternate else eager_s)
    return picks


def test_both_are_measured_first_alternating_from_the_alternate() -> None:
    choice = RuntimeChoice(window=5, min_samples=3, probe_every=16)
    assert feed(choice, 1, eager_s=0.02, alternate_s=0.01, batches=6) == [True, False] * 3
    assert choice.preferred(1) is True


def test_the_faster_runtime_runs_and_the_other_is_probed_now_and_then() -> None:
    choice = RuntimeChoice(window=5, min_samples=3, probe_every=4)
    feed(choice, 1, eager_s=0.02, alternate_s=0.01, batches=6)  # measuring
    picks = feed(choice, 1, eager_s=0.02, alternate_s=0.01, batches=12)
    assert picks.count(False) == 3  # every 4th batch re-measures eager
    assert picks.count(True) == 9
    assert choice.runs() == (3 + 3, 3 + 9)  # (eager, alternate), the measuring batches included


def test_each_size_decides_for_itself() -> None:
    choice = RuntimeChoice(window=5, min_samples=2, probe_every=100)
    feed(choice, 1, eager_s=0.020, alternate_s=0.015, batches=4)  # batch 1: the session wins
    feed(choice, 8, eager_s=0.030, alternate_s=0.070, batches=4)  # batch 8: eager wins
    assert feed(choice, 1, 0.020, 0.015, batches=5) == [True] * 5
    assert feed(choice, 8, 0.030, 0.070, batches=5) == [False] * 5
    assert choice.preferred(2) is None  # never ran: still to be measured


def test_a_change_of_conditions_is_noticed_through_the_probes() -> None:
    choice = RuntimeChoice(window=3, min_samples=2, probe_every=2)
    feed(choice, 1, eager_s=0.02, alternate_s=0.01, batches=4)
    assert choice.preferred(1) is True
    feed(choice, 1, eager_s=0.02, alternate_s=0.04, batches=12)  # the session became slow (contention)
    assert choice.preferred(1) is False
    assert feed(choice, 1, 0.02, 0.04, batches=4).count(False) >= 2


def test_the_alternate_must_win_by_the_margin() -> None:
    choice = RuntimeChoice(window=3, min_samples=1, probe_every=100, margin=0.1)
    choice.observe(False, 1, 10, 0.020)
    choice.observe(True, 1, 10, 0.019)  # 5% faster: about even, eager stays
    assert choice.preferred(1) is False
    choice.observe(True, 1, 10, 0.015)
    choice.observe(True, 1, 10, 0.015)  # median 15 ms: 25% faster
    assert choice.preferred(1) is True


def test_times_are_compared_per_token() -> None:
    choice = RuntimeChoice(window=3, min_samples=1, probe_every=100)
    choice.observe(False, 1, 100, 0.030)  # eager ran a long request: 0.3 ms a token
    choice.observe(True, 1, 10, 0.005)  # the session a short one: 0.5 ms a token
    assert choice.preferred(1) is False


def test_one_outlier_does_not_flip_the_choice() -> None:
    choice = RuntimeChoice(window=5, min_samples=3, probe_every=100)
    feed(choice, 1, eager_s=0.02, alternate_s=0.01, batches=6)
    choice.observe(True, 1, 10, 0.5)  # one session run stalled behind a neighbour
    assert choice.preferred(1) is True  # the median of the last five still favours it


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RuntimeChoice(window=2, min_samples=3)
    with pytest.raises(ValueError):
        RuntimeChoice(probe_every=1)
