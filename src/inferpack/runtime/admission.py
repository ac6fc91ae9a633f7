"""Admission by deadline: how long a new request would wait and run, and whether it can make its deadline.

Pure logic, no clock and no I/O: the batcher feeds it what it measured (batch compute time by batch size)
and the state of the line for threads, and asks it, for a request arriving now, for the expected wait and
service time. A request whose expected wait + service exceeds the time left before its deadline is shed at
once (503 + Retry-After) instead of queueing for work its client will have given up on.

The scheduler it models (runtime/batcher.py): batches of every model share one pool of inference threads,
taken in turn by the models' dispatchers (a FIFO line). A dispatcher that gets a thread takes up to a full
batch from its model's queue and, with cross-tenant batching, from the queues of the other models of its
base (its *group*); a dispatcher that finds nothing left gives the thread back at once. So what a request
waits for is its group's queue, not its model's alone:
- the group's first turn comes when the places ahead of its first dispatcher in line have had theirs (one
  release each: the line moves one place per release interval, the mean batch time over the threads),
  or at the next release when none of its dispatchers waits yet and the line is empty; no wait at all
  with a thread idle;
- each later turn of the group comes after the other groups' dispatchers in line have had theirs, shared
  among the group's own dispatchers in line: (others + own) / own releases;
- the request needs ceil((queued in the group + its items) / max batch) turns;
- releases are timed from the batches running now (each ends after its expected time left, then every
  thread runs mean-length batches), or one mean interval each when the pool does not say.
Everything here is read from the present state except the moving averages of compute time, so the
estimate falls back to "no wait" as soon as the queues have emptied, however long they were a moment ago.
"""

from __future__ import annotations

import collections
import heapq
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


class Lateness:
    """How much longer than estimated admitted requests took: a high quantile (`q`) of (wait + compute got)
    / (wait + service estimated) over the last `window` requests, never below 1, recomputed every `every`
    samples. Admission multiplies the estimate by it. An unbiased estimate admits requests that just fit
    their deadline and about half of them then miss it (measured under 3x overload with a deadline of 2x
    the unloaded P90: 780 of 1,624 admitted answers in time), each a forward spent on an answer its client
    no longer wants. A factor, not an added margin: what goes wrong grows with what is estimated (a queue
    ahead, a contended core's slower forwards), and a margin measured on long waits would refuse even a
    request that an idle thread starts at once (measured: goodput fell from 0.28 to 0.20 of capacity at
    that deadline). While estimates are right (a light load) it stays 1 and changes nothing."""

    def __init__(self, q: float = 0.9, window: int = 256, every: int = 16) -> None:
        if not 0 < q < 1:
            raise ValueError("q must be in (0, 1)")
        self.q, self.every = q, every
        self._ratios: collections.deque[float] = collections.deque(maxlen=window)
        self._since = 0
        self.factor = 1.0

    def observe(self, got_s: float, estimated_s: float) -> None:
        """One admitted request: seconds it waited and ran, and its estimate (none kept for an estimate of
        0: nothing was measured yet)."""
        if estimated_s <= 0:
            return
        self._ratios.append(got_s / estimated_s)
        self._since += 1
        if self._since >= self.every:
            self._since = 0
            ordered = sorted(self._ratios)
            self.factor = max(1.0, ordered[min(len(ordered) - 1, int(self.q * len(ordered)))])


@dataclass(frozen=True)
class PoolState:
    """The shared inference threads now: whether one is idle, how many dispatchers wait in line for one,
    and the mean time between two threads freeing up (batch time / threads). With `busy_left_s` (the
    expected seconds left in each running batch) and `threads`, releases are timed from the batches
    actually running instead of one mean interval each (see `release_times`)."""

    thread_free: bool
    waiting: int
    release_interval_s: float
    busy_left_s: tuple[float, ...] = ()
    threads: int = 0

    def release_time(self, releases: float) -> float:
        """Expected seconds until the `releases`-th thread release from now (fractional: between two);
        with a thread free, release 0 is now."""
        if releases <= 0:
            return 0.0
        if self.threads < 1 or (not self.busy_left_s and not self.thread_free):
            return releases * self.release_interval_s  # nothing known about the running batches
        times = release_times(
            self.busy_left_s, self.threads, self.release_interval_s * self.threads, math.ceil(releases) + 1
        )
        # times[0] is the first release: now for an idle thread, else the end of the shortest running batch
        at = releases if self.thread_free else releases - 1
        lo = math.floor(at)
        return times[lo] + (at - lo) * (times[min(lo + 1, len(times) - 1)] - times[lo])


RELEASES_SIMULATED = 64  # beyond this many, releases are extrapolated at one mean interval each


def release_times(busy_left_s: tuple[float, ...], threads: int, batch_s: float, count: int) -> list[float]:
    """Seconds from now of the next `count` thread releases: each running batch ends after its expected
    time left (a batch past its expected time: now), each idle thread is free now, and every thread then
    runs batches of `batch_s` one after another. Threads freeing at known times wait less, on average,
    than one mean interval per release (two threads half-way through their batches both free within half
    a batch, not one and two intervals from now), which is what kept tight-deadline admission shedding
    requests an idle-soon thread would have served in time."""
    free = sorted(max(0.0, t) for t in busy_left_s)[:threads]
    free += [0.0] * (threads - len(free))
    heapq.heapify(free)
    out: list[float] = []
    for _ in range(min(count, RELEASES_SIMULATED)):
        t = heapq.heappop(free)
        out.append(t)
        heapq.heappush(free, t + batch_s)
    step = batch_s / threads
    while len(out) < count:
        out.append(out[-1] + step)
    return out


@dataclass(frozen=True)
class GroupState:
    """A request's group now (its model, and with cross-tenant batching the other models of its base):
    items queued over all its models, how many of its dispatchers wait in line for a thread, and the places
    ahead of the first of them (0: next; None when none waits)."""

    queued: int
    in_line: int = 0
    first_place: int | None = None


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

    def full_batch_seconds(self) -> float:
        """Expected compute time of a full batch (`max_batch_size`), never less than any batch size's own
        measured average: a full batch does at least a smaller one's work. Each size has its own moving
        average, refreshed only by batches of that size, so on a host whose cores are shared the sizes
        disagree: a batch of one slowed by a descheduled thread (tens of ms) next to a batch of four timed
        on a quiet core (a few ms, not refreshed since: a few closed-loop clients rarely make one). The
        default deadline (`default_deadline_s`) read from the stale full-batch figure then came out shorter
        than the service time admission expected for the very next request, and an idle server shed it
        (measured: "expected wait 0 ms + service 67 ms exceeds the request's deadline (50 ms left)")."""
        measured = self._measured()
        return max([self.batch_seconds(self.max_batch_size), *measured.values()]) if measured else 0.0

    @property
    def usual_size(self) -> float:
        """The moving average of the batch sizes this model ran (1 before any)."""
        return self._size.value or 1.0

    def estimate(
        self, group: GroupState, items: int, pool: PoolState, batch_limit: int | None = None
    ) -> Estimate:
        """Expected wait and service of a request of `items` items arriving now (see the module's doc).
        `batch_limit`: the largest batch that forms while every thread is busy, when a batch policy keeps
        it under `max_batch_size` (smaller batches: more turns); None: `max_batch_size`."""
        b = max(1, min(batch_limit or self.max_batch_size, self.max_batch_size))
        size = max(group.queued, 0) + max(items, 1)
        turns = math.ceil(size / b)  # the group's batches until this request's last one starts
        own = max(group.in_line, 1)  # its dispatchers in line, at least the one this request wakes
        others = max(pool.waiting - group.in_line, 0)
        if pool.thread_free:
            first = 0.0
        elif group.first_place is not None:
            first = group.first_place + 1.0
        else:
            first = pool.waiting + 1.0  # its dispatcher joins the line at the back
        releases = first + (turns - 1) * (others + own) / own
        last_size = size - (turns - 1) * b  # what is queued now
        if releases:  # while it waits, later arrivals join its batch: expect the usual batch size
            last_size = min(b, max(last_size, round(self.usual_size)))
        return Estimate(pool.release_time(releases), self.batch_seconds(last_size))


DEFAULT_DEADLINE_FLOOR_S = 0.05  # a derived default never goes below this (HTTP and scheduling jitter)
DEFAULT_DEADLINE_CAP_S = 10.0  # nor above this, which is also the default until a full batch was timed


def default_deadline_s(
    configured_ms: float | None, objective_ms: float | None, factor: float, full_batch_s: float
) -> float | None:
    """The deadline (s) of a request that sets none (settings `batching.deadline_ms`,
    `latency_objective_ms`, `deadline_factor`): the configured one (0: none at all); else the latency
    objective; else `factor` x the measured time of a full batch, the latency a request sees at capacity
    (a queue of a few full batches keeps the threads busy with full batches, so goodput stays at capacity,
    while the work queued is bounded to what clients can still use), clamped to [50 ms, 10 s], and 10 s
    while no batch has been timed."""
    if configured_ms is not None:
        return configured_ms / 1000 if configured_ms > 0 else None
    if objective_ms is not None:
        return objective_ms / 1000
    if full_batch_s <= 0:
        return DEFAULT_DEADLINE_CAP_S
    return min(max(factor * full_batch_s, DEFAULT_DEADLINE_FLOOR_S), DEFAULT_DEADLINE_CAP_S)


def shed_reason(estimate: Estimate, time_left_s: float | None, lateness: float = 1.0) -> ShedReason | None:
    """Why a request with `time_left_s` before its deadline is refused at arrival, or None to admit it
    (None for `time_left_s`: no deadline). `lateness`: how much longer than estimated admitted requests
    have taken lately (`Lateness.factor`), applied to the estimate."""
    if time_left_s is None:
        return None
    if time_left_s <= 0 or estimate.total_s * lateness > time_left_s:
        return "deadline"
    return None


def stale_probe(
    estimate: Estimate, time_left_s: float, idle_threads: int, queued: int, since_activity_s: float
) -> bool:
    """Admit a request the estimate would shed, as a probe: a thread is idle, nothing of its group is
    queued, it would start at once, no batch started or ended for at least its expected service time, and
    it has at least half that time left. The batch times are moving averages refreshed only by batches
    that run, so one slow burst (a contended core) can push them past a tight deadline and keep an idle
    pool shedding everything, with nothing left to bring them back. One probe per expected service time
    at most bounds what a right estimate costs (a late answer per service time of idle threads), and a
    deadline under half the expected time is not worth probing."""
    return (
        idle_threads > 0
        and queued == 0
        and estimate.wait_s == 0
        and since_activity_s >= estimate.service_s
        and time_left_s >= estimate.service_s / 2
    )


def cannot_finish(now: float, deadline: float | None, service_s: float) -> bool:
    """A queued request whose batch, started now, would end after its deadline: drop it instead of running
    work its caller will not wait for."""
    return deadline is not None and now + service_s > deadline


def retry_after_s(estimate: Estimate) -> float:
    """Seconds until the queue ahead is expected to have drained (what Retry-After tells a shed client)."""
    return estimate.total_s
