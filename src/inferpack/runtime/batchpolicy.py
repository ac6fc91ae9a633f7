"""How many queued requests the next batch takes: sized by measured batch compute time, not a fixed number.

Pure logic, no clock and no I/O. The batcher asks, each time a thread is free for one of its batches:
how many requests are available (its queue, plus its peers' with cross-tenant batching), how many other
inference threads are idle with nobody waiting for them, and what a batch of n is expected to cost (the
admission estimator's moving averages of compute time by batch size, `admission.WaitEstimator`).

- **A core is free**: the available requests are spread over the idle threads instead of queueing behind
  one batch (2 requests and 2 idle threads run as two batches of 1, side by side): at low load batches stay
  at 1-2 and nobody waits for a core that is idle.
- **Every core is busy**: requests pile up while the batches run, and the next batch takes as many as it can:
  the largest size whose expected compute time keeps the latency objective (`max_batch_latency_ms`), never
  more than `max_batch_size`. A request waits about one running batch and then runs in the next, so the
  objective is about half a latency target.
- **Overload**: when the requests left behind by such a batch could not even start within the objective
  (the turns they need at that size, one per `threads`-th of a batch time), the objective is lost for them
  whatever this batch does; smaller batches would only cut throughput and lengthen the queue (a busy or
  slow machine measuring slow batches would shrink them to 1). Then the batch takes all it may (the cap):
  the queue drains fastest, and admission sheds what cannot make its deadline.
- **Measurements**: sizes never run are estimated from those that ran (linear per item above the largest
  measured size, which overestimates a sublinear cost curve: growth is cautious and corrects itself once
  the size has run). A single slow measurement (a burst of contention) could keep a size out for good, so
  the caller may `probe` now and then: one size above the objective's limit runs to be measured again.
- At least one request always runs, even when one alone is expected to exceed the objective (the
  objective then only keeps batches at 1).
- **Settling** (`settle_wait`): a thread freed while every other thread runs a batch waits for the
  requests that keep arriving (the next requests of clients just answered) before the batch forms, so
  that under load sizes do not alternate between 1 and the cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

BatchCost = Callable[[int], float]  # expected compute seconds of a batch of n (0.0: nothing measured yet)


@dataclass(frozen=True)
class BatchLimits:
    """The batch settings the policy works within: the hard cap on a batch's size and the objective on its
    expected compute time (None: no objective, the cap alone decides)."""

    max_batch_size: int
    max_batch_latency_s: float | None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_batch_latency_s is not None and self.max_batch_latency_s <= 0:
            raise ValueError("max_batch_latency_s must be > 0 (or None for no objective)")


def largest_within(limits: BatchLimits, cost: BatchCost, upto: int) -> int:
    """The largest size n <= min(upto, cap) whose expected compute time keeps the objective (at least 1)."""
    top = max(1, min(upto, limits.max_batch_size))
    budget = limits.max_batch_latency_s
    if budget is None:
        return top
    for n in range(top, 1, -1):  # from the top: the common case (the queue fits) costs one look-up
        if cost(n) <= budget:
            return n
    return 1


def within_deadlines(size: int, cost: BatchCost, deadline_s: float | None) -> int:
    """`size` cut to the largest batch whose expected compute takes at most half of `deadline_s`, the
    shortest deadline (as the request set it, from its arrival) among the requests the batch would take
    (None: no deadline; at least 1). A queued request waits about one batch and runs in the next, so
    batches of half its deadline let it make it; a batch of eight for requests that can wait only two
    batch-1 times would finish too late for all of them. The cut follows the deadlines requests set, not
    the time they have left, so a queue that falls behind does not shrink its batches (and its
    throughput) further."""
    if deadline_s is None:
        return size
    while size > 1 and cost(size) > deadline_s / 2:
        size -= 1
    return size


def batch_size(
    available: int,
    limits: BatchLimits,
    cost: BatchCost,
    *,
    threads: int = 1,
    idle_threads: int = 0,
    probe: bool = False,
) -> int:
    """How many of `available` queued requests the batch about to run takes (0 when none is available).

    `threads`: the inference threads in all. `idle_threads`: those other than this batch's that are idle
    with no dispatcher waiting for them; the available requests are shared out over them and this one.
    `probe`: allow one size above the objective's limit (when that many are available) so that its
    measurement is refreshed."""
    if available <= 0:
        return 0
    share = math.ceil(available / (1 + max(0, idle_threads)))
    top = min(share, limits.max_batch_size)
    size = largest_within(limits, cost, share)
    budget = limits.max_batch_latency_s
    if budget is not None and size < top:
        turns_behind = math.ceil(share / size) - 1  # batches of this size before the last of them starts
        if turns_behind * cost(size) / max(1, threads) > budget:
            return top  # overload: the objective is lost for those behind; drain the queue fastest
    if probe and size < top:
        size += 1
    return size


def settle_wait(
    queued: int,
    full: int,
    *,
    rows_running: int,
    threads: int,
    idle_threads: int,
    since_arrival: float,
    waited: float,
    gap: float,
    cap: float,
) -> float:
    """Seconds a thread just given to a batch should still wait for arrivals before forming it (0: form it
    now): the **settle** rule, for batches that fill while the cores are busy.

    Under load, answers leave a batch together and their clients' next requests come back one by one over
    a few milliseconds (the event loop sends and parses them in turn). A thread freed at that moment would
    take the first of them alone, the next batch the rest, and sizes would alternate between ~1 and the
    cap, paying a batch-of-1's cost per row for every small one (where batching pays: 1.4-2.9x per row from
    1 to 8 on bf16-native CPUs). So the batch waits while requests keep arriving (each within `gap` of the
    previous), never longer than `cap` (about a batch of 1's time: waiting longer than running one alone
    cannot pay), and only while that wait costs no idle core: every other thread is running a batch
    (`idle_threads` 0, `rows_running` > 0) and more requests are in the server than threads
    (`queued + rows_running > threads`, i.e. batching happens anyway). It stops once `full` (the largest
    size the objective allows) is queued. `queued`, `rows_running`: the group's queued requests and the
    rows of batches running on other threads; `since_arrival`: seconds since the last request arrived;
    `waited`: seconds this thread waited so far."""
    if queued <= 0 or queued >= full or gap <= 0 or cap <= 0:
        return 0.0
    if idle_threads > 0 or rows_running <= 0 or queued + rows_running <= threads:
        return 0.0
    return max(0.0, min(gap - since_arrival, cap - waited))
