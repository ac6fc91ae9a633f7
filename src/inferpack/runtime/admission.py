"""Admission by deadline: how long a new request would wait and run, and whether it can make its deadline.

Pure logic, no clock and no I/O: the batcher feeds it what it measured (batch compute time by batch size,
the time its dispatcher waited for a free inference thread) and asks it, for a request arriving behind
`queued_ahead` items, for the expected wait and service time. A request whose expected wait + service
exceeds the time left before its deadline is shed at once (503 + Retry-After) instead of queueing for work
its client will have given up on.

Why the thread wait and not "queue / batch size x batch time" alone: batches of every model share one pool
of inference threads, so a model's queue drains one batch per thread acquisition, and the time between two
acquisitions already holds the other models' batches, the in-flight batch and the pool's parallelism (with
two threads and one busy model it is about half a batch time). A queue of q items ahead with batches of B
therefore waits about ceil((q + n) / B) acquisitions, each taking the measured mean thread wait.
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


class WaitEstimator:
    """Per-model moving averages (EWMA, weight `alpha` on the newest sample) of batch compute time by batch
    size and of the dispatcher's wait for an inference thread."""

    def __init__(self, max_batch_size: int, alpha: float = 0.2) -> None:
        if max_batch_size < 1 or not 0 < alpha <= 1:
            raise ValueError("max_batch_size must be >= 1 and alpha in (0, 1]")
        self.max_batch_size = max_batch_size
        self.alpha = alpha
        self._batch_s: dict[int, float] = {}
        self._thread_wait_s: float | None = None

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One batch of `size` items computed in `seconds`."""
        size = min(max(size, 1), self.max_batch_size)
        self._batch_s[size] = self._mix(self._batch_s.get(size), seconds)

    def observe_thread_wait(self, seconds: float) -> None:
        """The dispatcher waited `seconds` for a free inference thread before taking a batch."""
        self._thread_wait_s = self._mix(self._thread_wait_s, max(seconds, 0.0))

    @property
    def thread_wait_s(self) -> float:
        """Mean wait for a thread per batch (0 before any batch ran)."""
        return self._thread_wait_s or 0.0

    def batch_seconds(self, size: int) -> float:
        """Expected compute time of a batch of `size` items: the average measured at that size, else linear
        between the nearest measured sizes, else scaled per item from the largest measured size (costlier
        sizes are never guessed cheaper than a measured smaller one); 0 before any batch ran."""
        if not self._batch_s:
            return 0.0
        size = min(max(size, 1), self.max_batch_size)
        if size in self._batch_s:
            return self._batch_s[size]
        sizes = sorted(self._batch_s)
        below = [s for s in sizes if s < size]
        above = [s for s in sizes if s > size]
        if not below:
            return self._batch_s[above[0]]
        lo = below[-1]
        if not above:
            return self._batch_s[lo] * size / lo
        hi = above[0]
        share = (size - lo) / (hi - lo)
        return self._batch_s[lo] + share * (self._batch_s[hi] - self._batch_s[lo])

    def estimate(self, queued_ahead: int, items: int = 1, *, thread_free: bool = False) -> Estimate:
        """Expected wait and service of a request of `items` items behind `queued_ahead` queued ones.
        `thread_free`: an inference thread is idle now (the first batch starts without waiting)."""
        b = self.max_batch_size
        position = max(queued_ahead, 0) + max(items, 1)
        batches = math.ceil(position / b)  # acquisitions until this request's last batch starts
        acquisitions = batches - 1 if thread_free else batches
        last_size = b if batches > 1 or not thread_free else position
        return Estimate(acquisitions * self.thread_wait_s, self.batch_seconds(last_size))


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
