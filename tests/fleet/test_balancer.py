"""Least-outstanding choice among healthy copies (pure, no I/O)."""

from __future__ import annotations

from collections import Counter

from inferpack.fleet.balancer import REPORT_FRESH_S, Balancer
from inferpack.runtime.admission import Estimate

PLACEMENT = {"a": ["s0", "s1"], "b": ["s1", "s2"], "c": ["s2"]}


def test_unknown_model_has_no_holder() -> None:
    b = Balancer(PLACEMENT)
    assert b.holders("zzz") is None
    assert b.choose("zzz") is None


def test_idle_copies_share_the_load_in_turn() -> None:
    b = Balancer(PLACEMENT)
    picks = Counter(b.choose("a") for _ in range(10))
    assert picks == {"s0": 5, "s1": 5}


def test_least_outstanding_wins() -> None:
    b = Balancer(PLACEMENT)
    b.acquire("s0")
    b.acquire("s0")
    b.acquire("s1")
    assert {b.choose("a") for _ in range(6)} == {"s1"}
    b.release("s0")
    b.release("s0")
    assert {b.choose("a") for _ in range(6)} == {"s0"}


def test_unhealthy_copy_is_avoided_until_back() -> None:
    b = Balancer(PLACEMENT)
    b.mark_down("s1")
    assert {b.choose("a") for _ in range(4)} == {"s0"}
    assert {b.choose("b") for _ in range(4)} == {"s2"}
    b.mark_up("s1")
    assert {b.choose("a") for _ in range(4)} == {"s0", "s1"}


def test_when_every_copy_is_down_they_are_tried_anyway() -> None:
    b = Balancer(PLACEMENT)
    b.mark_down("s2")
    assert b.choose("c") == "s2"
    assert not b.all_available()
    assert b.unavailable_models() == ["c"]


def test_exclude_gives_the_other_copy_then_none() -> None:
    b = Balancer(PLACEMENT)
    first = b.choose("a")
    assert first is not None
    second = b.choose("a", {first})
    assert second is not None and second != first
    assert b.choose("a", {first, second}) is None


def test_ready_when_each_model_has_a_healthy_copy() -> None:
    b = Balancer(PLACEMENT)
    b.mark_down("s0")
    assert b.all_available()
    b.mark_down("s1")
    assert not b.all_available()
    assert b.unavailable_models() == ["a"]


def test_copies_histogram_is_bounded() -> None:
    b = Balancer({"a": ["s0", "s1", "s2"], "b": ["s0"], "c": ["s1", "s2"]})
    assert b.copies_histogram(2) == {"0": 0, "1": 1, "2+": 2}
    b.mark_down("s0")
    assert b.copies_histogram(2) == {"0": 1, "1": 0, "2+": 2}
    assert sum(b.copies_histogram(1).values()) == 3


def test_ejected_copy_is_never_chosen_until_readmitted() -> None:
    b = Balancer(PLACEMENT)
    b.eject("s2")
    assert {b.choose("b") for _ in range(4)} == {"s1"}
    assert b.choose("c") is None  # unlike a server marked down, not even as a last resort
    assert b.unavailable_models() == ["c"]
    assert [b.copies_histogram(4)[k] for k in ("0", "1", "2")] == [1, 1, 1]  # c, b, a
    b.readmit("s2")
    assert b.choose("c") == "s2"


def test_replace_routes_by_the_new_placement_and_keeps_counters_of_servers_that_left() -> None:
    b = Balancer({"m": ["s0"], "n": ["s0", "s1"]})
    b.acquire("s0")
    b.mark_down("s1")
    b.replace({"m": ["s2"], "n": ["s1"]})
    assert b.servers == ["s1", "s2"]
    assert b.choose("m") == "s2" and b.healthy["s2"] and b.outstanding["s2"] == 0
    assert not b.healthy["s1"]  # what the probe learnt still holds
    b.release("s0")  # a request in flight to a server that left still ends cleanly
    assert b.outstanding["s0"] == 0
    assert b.unavailable_models() == ["n"]


def test_reported_waits_count_down_and_steer_the_choice() -> None:
    b = Balancer({"a": ["s0", "s1"]})
    b.note_wait("s0", "a", 2.0, now=10.0)
    assert b.expected_wait("s0", "a", 10.5) == 1.5  # the queue drains while nobody looks
    assert b.expected_wait("s0", "a", 13.0) == 0.0
    assert b.expected_wait("s1", "a", 10.5) == 0.0  # never reported: no wait known
    assert {b.choose("a", now=10.5) for _ in range(4)} == {"s1"}
    b.acquire("s1")
    b.acquire("s1")
    assert {b.choose("a", now=10.5) for _ in range(4)} == {"s1"}  # a shorter wait beats fewer outstanding
    assert b.choose("a", now=12.5) == "s0"  # drained: now the fewest outstanding wins
    b.note_wait("s0", "zzz", 5.0, now=10.0)  # not placed: not kept
    assert ("s0", "zzz") not in b.waits


def test_the_reported_lateness_is_kept_with_its_report_and_forgotten_with_it() -> None:
    b = Balancer({"a": ["s0"]})
    assert b.lateness("s0", "a", 10.0) == 1.0  # never reported
    b.note_wait("s0", "a", 0.5, now=10.0, service_s=0.3, lateness=1.4)
    assert b.lateness("s0", "a", 11.0) == 1.4  # a factor: it does not count down as the wait does
    b.note_wait("s0", "a", 0.5, now=12.0, service_s=0.3, lateness=0.7)
    assert b.lateness("s0", "a", 12.0) == 1.0  # never below 1: admission's own floor
    assert b.lateness("s0", "a", 12.0 + 3600) == 1.0  # stale with its report


def test_the_reported_compute_does_not_count_down() -> None:
    b = Balancer({"a": ["s0"]})
    b.note_wait("s0", "a", 2.0, now=10.0, service_s=0.3)
    assert b.expected("s0", "a", 11.0) == Estimate(1.0, 0.3)
    assert b.expected("s0", "a", 14.0) == Estimate(0.0, 0.3)  # a batch still has to run
    assert b.expected("s0", "b", 14.0) == Estimate(0.0, 0.0)  # never reported
    # an old report is forgotten: the copy gets a request again and reports afresh (a router that shed
    # on a stale compute time for good would keep the model from every request with a tight deadline)
    assert b.expected("s0", "a", 10.0 + REPORT_FRESH_S + 0.1) == Estimate(0.0, 0.0)
