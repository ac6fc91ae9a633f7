"""Admission by deadline: how long a new request would wait and run, and whether it can make its deadline.

Pure logic, no clock and no I/O: the batcher feeds it what it measured (batch compute time by batch size) and
the pool's state (is a thread idle, how many models' dispatchers wait for one, how often a thread frees up),
and asks it, for a request arriving behind `queued_ahead` items, for the expected wait and service time. A
request whose expected wait + service exceeds the time left before its deadline is shed at once (503 +
Retry-After) instead of queueing for work its client will have given up on.

Why the pool's state and not "queue / batch size x batch time" alone: batches of every model share one
pool of inference threads, taken in turn (first come, first served). A model's queue therefore drains one
batch per turn: its first turn comes when the dispatchers ahead of it in the line have had theirs, each
later one after a full round of the line, and the line moves one place per release interval (the mean
batch time over the number of threads). A queue of q items ahead with batches of B waits about
ceil((q + n) / B) turns. Everything here is read from the present state except the two moving
averages of compute time, so the estimate falls back to "no wait" as soon as the queues have emptied,
however long they were a moment ago.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# queue_full and deadline: refused at arrival; expired: dropped from the queue when it could no longer finish
ShedReason = Literal["queue_full", "deadline", "expired"]


@dataclass(frozen=True)
class Estimate:
    """Expected seconds until a request's (last) batch starts, and that batch's compute time."""

    wait_s: float
    service_s: float

    @property
    def total_s(self) -> float:
        return self.wait_s + self.service_s


class Ewma:
    """An exponentially weighted moving average (weight `alpha` on the newest sample); None before any."""

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> float:
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)
        return self.value


@dataclass(frozen=True)
class PoolState:
    """The shared inference threads now: whether one is idle, how many dispatchers wait in line for one,
    and the mean time between two threads freeing up (batch time / threads)."""

    thread_free: bool
    waiting: int
    release_interval_s: float


class WaitEstimator:
    """Per-model moving averages of batch compute time by batch size, and the estimate built on them."""

    def __init__(self, max_batch_size: int, alpha: float = 0.2) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.alpha = alpha
        self._batch_s: dict[int, Ewma] = {}
        self._size = Ewma(alpha)  # validates alpha now, not at the first batch

    def observe_batch(self, size: int, seconds: float) -> None:
        """One batch of `size` items computed in `seconds`."""
        size = min(max(size, 1), self.max_batch_size)
        self._batch_s.setdefault(size, Ewma(self.alpha)).add(seconds)
        self._size.add(size)

    def _measured(self) -> dict[int, float]:
        return {n: e.value for n, e in self._batch_s.items() if e.value is not None}

    def batch_seconds(self, size: int) -> float:
        """Expected compute time of a batch of `size` items: the average measured at that size, else linear
        between the nearest measured sizes, else scaled per item from the largest measured size (costlier
        sizes are never guessed cheaper than a measured smaller one); 0 before any batch ran."""
        measured = self._measured()
        if not measured:
            return 0.0
        size = min(max(size, 1), self.max_batch_size)
        if size in measured:
            return measured[size]
        below = [s for s in sorted(measured) if s < size]
        above = [s for s in sorted(measured) if s > size]
        if not below:
            return measured[above[0]]
        lo = below[-1]
        if not above:
            return measured[lo] * size / lo
        hi = above[0]
        return measured[lo] + (size - lo) / (hi - lo) * (measured[hi] - measured[lo])

    def estimate(
        self, queued_ahead: int, items: int, pool: PoolState, *, position: int | None = None
    ) -> Estimate:
        """Expected wait and service of a request of `items` items behind `queued_ahead` queued ones.
        `position`: where this model's dispatcher stands in the line for a thread (0: next; counted in
        `pool.waiting`), None when it does not wait."""
        b = self.max_batch_size
        size = max(queued_ahead, 0) + max(items, 1)
        batches = math.ceil(size / b)  # turns until this request's last batch starts
        # thread releases before the first turn: the places ahead in line and its own, or none when idle
        joins = 0 if pool.thread_free else pool.waiting + 1
        first = position + 1 if position is not None else joins
        later = max(1, pool.waiting + (0 if position is not None else 1))  # a full round of the line
        releases = first + (batches - 1) * later
        last_size = size - (batches - 1) * b  # what is queued now
        if releases:  # while it waits, later arrivals join its batch: expect the model's usual batch size
            last_size = min(b, max(last_size, round(self._size.value or 1)))
        return Estimate(releases * pool.release_interval_s, self.batch_seconds(last_size))


def shed_reason(estimate: Estimate, time_left_s: float | None) -> ShedReason | None:
    """Why a request with `time_left_s` before its deadline is refused at arrival, or None to admit it
    (None for `time_left_s`: no deadline)."""
    if time_left_s is None:
        return None
    if time_left_s <= 0 or estimate.total_s > time_left_s:
        return "deadline"
    return None


def cannot_finish(now: float, deadline: float | None, service_s: float) -> bool:
    """A queued request whose batch, started now, would end after its deadline: drop it instead of running
    work its caller will not wait for."""
    return deadline is not None and now + service_s > deadline


def retry_after_s(estimate: Estimate) -> float:
    """Seconds until the queue ahead is expected to have drained (what Retry-After tells a shed client)."""
    return estimate.total_s
