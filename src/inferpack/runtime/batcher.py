"""Dynamic batching: one bounded queue per loaded model, a shared pool of inference threads.

The event loop only moves requests between queues; forwards run on `InferencePool` threads (torch releases
the GIL inside its kernels, so N threads with one intra-op thread each keep N cores busy without a copy of
each model per process). A batch forms from what is queued when a thread becomes free, topped up for at
most `max_wait_ms`; how many it takes is `runtime/batchpolicy.py`'s decision, from measured batch compute
times: shared out over idle threads when cores are free, as many as the latency objective
(`max_batch_latency_ms`) allows when every core is busy; a thread freed while the others run batches
first lets the requests that keep arriving settle into its batch (`settle_ms`, `batchpolicy.settle_wait`).
Load shedding, all at arrival or before a batch forms, never mid-forward:
- a full queue (`max_queue`) sheds new requests with `Overloaded` at once instead of letting them wait
  without bound;
- admission by deadline (`admission`): a request whose expected wait + service would pass its deadline is
  shed at once (unless an idle pool runs it as a probe of stale batch times, `admission.stale_probe`),
  and a queued request that can no longer finish by its deadline is dropped with `DeadlineExceeded`
  when its batch would form; the pool times the expected wait from the batches it is running;
- a request whose caller went away (its task was cancelled: the transport cancels it when the client
  disconnects) leaves the queue at once, so nobody computes answers no one will read.
With `Peers`, a batch with room left takes queued requests of other models of the same base too: their
shared layers run once for all rows (`runtime/crossbatch.py`). The admission estimate ignores that help
(a model's queue may drain faster than it says: it errs on the side of shedding).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from inferpack.errors import DeadlineExceeded, Overloaded, PayloadTooLarge, ShuttingDown
from inferpack.runtime.admission import (
    Estimate,
    Ewma,
    GroupState,
    Lateness,
    PoolState,
    WaitEstimator,
    cannot_finish,
    default_deadline_s,
    retry_after_s,
    shed_reason,
    stale_probe,
)
from inferpack.runtime.batchpolicy import (
    BatchLimits,
    batch_size,
    largest_within,
    settle_wait,
    within_deadlines,
)
from inferpack.runtime.crossbatch import Part, Peers
from inferpack.runtime.modeling import LoadedModel
from inferpack.runtime.tasks import TextInput
from inferpack.settings import BatchingSettings

BatchObserver = Callable[[str, int, float, float], None]  # model, batch size, queue wait s, compute s
DropObserver = Callable[[str], None]  # model: a queued request dropped because its caller went away
Clock = Callable[[], float]
PROBE_EVERY = 16  # one batch in this many may run a size above the objective's limit, to re-measure it
# One DEBUG line per admitted request: the admission estimate against the wait and compute it got (a
# calibration aid; bench/overload.py --admission-log sums them up). Off by default.
admission_log = logging.getLogger("inferpack.runtime.admission")


class InferencePool:
    """N threads that run forwards, and a FIFO semaphore so batchers take turns fairly."""

    def __init__(self, threads: int, intra_op_threads: int = 1) -> None:
        self.threads = threads
        self.intra_op_threads = intra_op_threads
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="infer", initializer=self._init_thread
        )
        self._slots = asyncio.Semaphore(threads)
        self._waiting = 0
        self._held = 0  # threads given to batchers and not yet released
        self._issued = 0  # tickets: the line for a thread is first come, first served
        self._left = 0  # tickets that left the line (granted or cancelled)
        self._batch_s = Ewma()
        # how much later than estimated admitted requests of every model finished lately: contention
        # (the event loop, other processes) is the pool's, not one model's
        self.lateness = Lateness()
        self.rows_running = 0  # rows of the batches running now (the settle rule: is another core busy?)
        # batch key -> when it is expected to end (batcher clock), and its rows
        self._running: dict[int, tuple[float, int]] = {}
        self._keys = itertools.count()
        self.last_activity = float("-inf")  # when a batch last started or ended (batcher clock)
        # told of every forward run: its rows, and the models they were for (the server's metrics)
        self.forward_observer: Callable[[int, int], None] | None = None

    def _init_thread(self) -> None:
        torch.set_num_threads(self.intra_op_threads)

    def state(self, now: float | None = None) -> PoolState:
        """Idle thread or not, dispatchers waiting, mean interval between threads freeing up, and (given
        `now`, on the batchers' clock) the expected time left in each running batch (admission)."""
        interval = (self._batch_s.value or 0.0) / self.threads
        if now is None:
            return PoolState(not self._slots.locked(), self._waiting, interval)
        left = tuple(end - now for end, _rows in self._running.values())
        return PoolState(not self._slots.locked(), self._waiting, interval, left, self.threads)

    def begin_batch(self, now: float, expected_s: float, rows: int = 1) -> int:
        """A batch of `rows` takes a thread at `now`, expected to take `expected_s`; returns its key for
        `end_batch`."""
        key = next(self._keys)
        self._running[key] = (now + expected_s, rows)
        self.rows_running += rows
        self.last_activity = now
        return key

    def end_batch(self, key: int, now: float) -> None:
        """The batch `key` left its thread at `now`."""
        _end, rows = self._running.pop(key, (0.0, 0))
        self.rows_running -= rows
        self.last_activity = max(self.last_activity, now)

    def observe_batch(self, seconds: float, rows: int = 1, models: int = 1) -> None:
        """A batch (of any model) of `rows` rows for `models` models held a thread for `seconds`."""
        self._batch_s.add(seconds)
        if self.forward_observer is not None:
            self.forward_observer(rows, models)

    def idle_threads(self) -> int:
        """Threads free with no dispatcher waiting in line for them (a batch shares its queue with them)."""
        return max(0, self.threads - self._held - self._waiting)

    @property
    def next_ticket(self) -> int:
        """The ticket the next `acquire` waits with."""
        return self._issued

    def position(self, ticket: int) -> int:
        """Places ahead of `ticket` in the line for a thread (0: next)."""
        return max(0, ticket - self._left)

    async def acquire(self) -> int:
        """Wait for a free thread (first come, first served); returns the ticket it waited with."""
        ticket = self._issued
        self._issued += 1
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._left += 1
        self._held += 1
        return ticket

    def release(self) -> None:
        """Give a thread back."""
        self._held -= 1
        self._slots.release()

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on a pool thread (the caller holds a slot)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        """Stop the threads after the work already submitted."""
        self._executor.shutdown(wait=True, cancel_futures=False)


class GroupLine:
    """What admission reads about a batcher's group (its model, or every model of its base with cross-tenant
    batching), kept up to date as queues and the line for threads change: items queued over the group's
    models, and the tickets its dispatchers wait with, in line order. Shared by the group's batchers. Also
    when a request last arrived in any of the group's queues, and an event set at each arrival (the settle
    rule waits on them: a batch takes the group's requests)."""

    __slots__ = ("arrived", "last_arrival", "queued", "tickets")

    def __init__(self) -> None:
        self.queued = 0
        self.tickets: collections.deque[int] = collections.deque()
        self.last_arrival = 0.0  # on the event loop's clock
        self.arrived = asyncio.Event()


@dataclass(slots=True, eq=False)  # identity equality: `deque.remove` must find this very request
class _Pending:
    item: TextInput
    raw: bool
    future: asyncio.Future[dict[str, Any]]
    owner: ModelBatcher
    enqueued: float
    deadline: float | None = field(default=None)
    estimate: Estimate | None = field(default=None)  # at admission (for the calibration log)
    # the deadline is the server's derived default (the client set none, no default is configured): it
    # bounds a backlog, so it drops a queued request only when a backlog is there (`_take_from`)
    soft: bool = field(default=False)


class ModelBatcher:
    """The queue and dispatcher of one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        pool: InferencePool,
        settings: BatchingSettings,
        observer: BatchObserver | None = None,
        peers: Peers | None = None,
        *,
        drop_observer: DropObserver | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.model = model
        self.pool = pool
        self.settings = settings
        self.observer = observer
        self.peers = peers
        self.drop_observer = drop_observer
        self.clock = clock
        self.estimator = WaitEstimator(settings.max_batch_size)
        latency_ms = settings.max_batch_latency_ms
        self.limits = BatchLimits(settings.max_batch_size, latency_ms / 1000.0 if latency_ms > 0 else None)
        self._formed = 0  # batches formed: every PROBE_EVERY-th may run one size above the objective's limit
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self.line = GroupLine()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.get_running_loop().create_task(
            self._dispatch(), name=f"batcher:{model.model_id}"
        )
        if peers is not None:
            peers.join(self)
            others = peers.others(self)
            if others:  # one group, one line: they lend each other their queued requests
                self.line = others[0].line

    def replace_model(self, model: LoadedModel) -> None:
        """Run the batches formed from now on with `model` (a stand-in's fast runtime, runtime/tier.py);
        batches already running keep the model they hold. Rejoins the peers as the new model allows (an
        ONNX Runtime session or a traced graph mixes with no one), and takes its queued requests to the
        line of the group it is in now (what admission and the settle rule read)."""
        peers = self.peers
        if peers is None:
            self.model = model
            return
        before = peers.key(self.model)
        peers.leave(self)
        self.model = model
        peers.join(self)
        if peers.key(model) == before:
            return
        others = peers.others(self)
        line = others[0].line if others else GroupLine()
        queued = len(self._queue)
        self.line.queued -= queued
        line.queued += queued
        self.line = line

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """True while requests are queued or batches are running."""
        return bool(self._queue) or bool(self._in_flight)

    def estimate(self, items: int = 1, deadline_s: float | None = None) -> Estimate:
        """Expected wait and service of a request of `items` items arriving now with a deadline `deadline_s`
        from now (None: none)."""
        line = self.line
        first = self.pool.position(line.tickets[0]) if line.tickets else None
        group = GroupState(line.queued, len(line.tickets), first)
        # the batches the policy forms while every thread is busy (smaller ones: more turns to wait), cut
        # to what fits the request's deadline as `_take` cuts them
        waiting = line.queued + max(items, 1)
        limit = batch_size(waiting, self.limits, self.batch_cost, threads=self.pool.threads)
        limit = within_deadlines(limit, self.batch_cost, deadline_s)
        return self.estimator.estimate(group, items, self.pool.state(self.clock()), batch_limit=limit)

    async def submit(
        self, item: TextInput, *, raw: bool = False, deadline: float | None = None
    ) -> dict[str, Any]:
        """Queue one item and wait for its result (see `submit_many`)."""
        return (await self.submit_many([item], raw=raw, deadline=deadline))[0]

    async def submit_many(
        self,
        items: list[TextInput],
        *,
        raw: bool = False,
        deadline: float | None = None,
        default_deadline: bool = False,
    ) -> list[dict[str, Any]]:
        """Queue one request's items and wait for their results (`raw`: the model's own outputs, not decoded
        answers; they share batches with decoded items). `deadline`: on this batcher's clock, when the
        caller stops waiting. Sheds with `Overloaded` when the queue is full or the expected wait misses
        the deadline; raises `DeadlineExceeded` when the request was dropped in the queue; if the caller
        is cancelled (its client disconnected), its items still queued leave the queue at once.
        `default_deadline`: `deadline` is this batcher's `default_deadline_s` (the caller set none)."""
        if self._closing:
            raise ShuttingDown(f"model {self.model.model_id!r} is being unloaded")
        now = self.clock()
        soft = default_deadline and self.default_is_soft
        estimate = self.admit(len(items), deadline, now, soft=soft)
        loop = asyncio.get_running_loop()
        mine = [
            _Pending(item, raw, loop.create_future(), self, now, deadline, estimate, soft) for item in items
        ]
        self._queue.extend(mine)
        self.line.queued += len(mine)
        self.line.last_arrival = loop.time()
        self.line.arrived.set()
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(p.future for p in mine)))
        except BaseException as exc:
            dropped = self._withdraw(mine)
            if isinstance(exc, asyncio.CancelledError) and dropped and self.drop_observer is not None:
                self.drop_observer(self.model.model_id)
            raise

    @property
    def default_is_soft(self) -> bool:
        """Whether the deadline a request without one gets is the server's own derived default (no
        `deadline_ms`, no latency objective): set only to keep a backlog from building up."""
        return self.settings.deadline_ms is None and self.settings.latency_objective_ms is None

    def admit(self, items: int, deadline: float | None, now: float, *, soft: bool = False) -> Estimate:
        """The estimate for a request of `items` items arriving at `now` with `deadline` (both on this
        batcher's clock; None: no deadline), or `Overloaded` when its model's queue is full or the estimate
        misses the deadline. Cheap, and without side effects: the server's early shed calls it too, before
        a request's body is read (`server/shed.py`). The recent lateness (`admission.Lateness`) applies to
        a deadline someone set (the client, or the configured default), not to a `soft` one (the derived
        default: its client set none and waits on, so an answer a little late is still wanted)."""
        model_id = self.model.model_id
        if items > self.settings.max_queue:
            # Never admissible, however empty the queue: a 503 "retry later" would be retried in vain.
            raise PayloadTooLarge(
                f"a request of {items} items is more than model {model_id!r} may queue "
                f"({self.settings.max_queue} items)",
                hint=f"send at most {self.settings.max_queue} items per request, or raise "
                "server.batching.max_queue",
            )
        if len(self._queue) + items > self.settings.max_queue:
            estimate = self.estimate()
            raise Overloaded(
                f"model {model_id!r} has {len(self._queue)} requests queued (limit "
                f"{self.settings.max_queue})",
                retry_after_s=max(1.0, retry_after_s(estimate)),
                hint="retry after the Retry-After delay, or add copies of this model",
                model_id=model_id,
                reason="queue_full",
                expected_wait_s=estimate.wait_s,
                expected_service_s=estimate.service_s,
                lateness=self.pool.lateness.factor,
            )
        time_left = None if deadline is None else deadline - now
        estimate = self.estimate(items, time_left)
        lateness = 1.0 if soft else self.pool.lateness.factor
        reason = shed_reason(estimate, time_left, lateness)
        if reason is not None and time_left is not None and self._probe(estimate, time_left, now):
            reason = None  # an idle pool's measurements are refreshed only by a batch that runs
        if reason is not None:
            raise Overloaded(
                f"model {model_id!r}: expected wait {estimate.wait_s * 1000:.0f} ms + service "
                f"{estimate.service_s * 1000:.0f} ms"
                + (f" (x {lateness:.2f}, the recent lateness)" if lateness > 1 else "")
                + " exceeds the request's deadline "
                f"({max(0.0, (deadline or now) - now) * 1000:.0f} ms left)",
                retry_after_s=retry_after_s(estimate),
                hint="retry after the Retry-After delay with a longer deadline (inferpack-deadline-ms), "
                "or add copies of this model",
                model_id=model_id,
                reason=reason,
                expected_wait_s=estimate.wait_s,
                expected_service_s=estimate.service_s,
                lateness=self.pool.lateness.factor,
            )
        return estimate

    def _probe(self, estimate: Estimate, time_left: float, now: float) -> bool:
        """Whether a request the estimate sheds runs anyway, to refresh stale batch times
        (`admission.stale_probe`)."""
        since = now - self.pool.last_activity
        return stale_probe(estimate, time_left, self.pool.idle_threads(), self.line.queued, since)

    def default_deadline_s(self) -> float | None:
        """Seconds a request that sets no deadline gets (None: none), from the batching settings and this
        model's measured full-batch time (`admission.default_deadline_s`)."""
        s = self.settings
        full = self.estimator.full_batch_seconds()
        return default_deadline_s(s.deadline_ms, s.latency_objective_ms, s.deadline_factor, full)

    def _withdraw(self, pendings: list[_Pending]) -> bool:
        """Take a failed or abandoned request's items out of the queue (cancelling their futures); True
        when any was still queued, i.e. work that will now never run."""
        dropped = False
        for pending in pendings:
            pending.future.cancel()
            try:
                self._queue.remove(pending)
                self.line.queued -= 1
                dropped = True
            except ValueError:
                pass  # already taken into a batch, or dropped there
        return dropped

    async def _dispatch(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            ticket = self.pool.next_ticket
            line = self.line  # the ticket leaves the line it joined (`replace_model` may change lines)
            line.tickets.append(ticket)
            try:
                await self.pool.acquire()
            finally:
                line.tickets.remove(ticket)
            try:
                await self._top_up()
                await self._settle()
                batch = self._take()
            except BaseException:
                self.pool.release()
                raise
            if not batch:
                self.pool.release()
                continue
            # the batch holds its thread from now: the settle rule and admission's release times see it
            running = self.pool.begin_batch(self.clock(), self.batch_cost(len(batch)), len(batch))
            task = asyncio.get_running_loop().create_task(self._execute(batch, running))
            # every model in the batch is busy until it ends (its unload waits; it is not evicted)
            for owner in {id(p.owner): p.owner for p in batch}.values():
                owner._in_flight.add(task)
                task.add_done_callback(owner._in_flight.discard)

    def batch_cost(self, size: int) -> float:
        """Expected compute seconds of a batch of `size` formed here: measured over the batches of every model
        of its base with cross-tenant batching (they form batches together), else over this model's."""
        group = self.peers.estimator(self) if self.peers is not None else None
        return (group or self.estimator).batch_seconds(size)

    async def _top_up(self) -> None:
        """Wait up to max_wait for a fuller batch (only while it is smaller than the objective allows)."""
        wait_s = self.settings.max_wait_ms / 1000.0
        if wait_s <= 0:
            return
        full = largest_within(self.limits, self.batch_cost, self.limits.max_batch_size)
        deadline = time.perf_counter() + wait_s
        while len(self._queue) < full and not self._closing:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except TimeoutError:
                return

    async def _settle(self) -> None:
        """Wait, while requests keep arriving and other threads run batches, for a fuller batch
        (`batchpolicy.settle_wait`; `settle_ms` is the longest gap between arrivals it waits through)."""
        gap = self.settings.settle_ms / 1000.0
        pool, line = self.pool, self.line
        if gap <= 0 or pool.rows_running == 0 or line.queued + pool.rows_running <= pool.threads:
            return  # the common case at low load, before any look-up (settle_wait would say 0 too)
        full = largest_within(self.limits, self.batch_cost, self.limits.max_batch_size)
        cap = self.batch_cost(1)  # 0.0 until a batch was measured: no wait before then
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not self._closing:
            now = loop.time()
            wait = settle_wait(
                line.queued,
                full,
                rows_running=pool.rows_running,
                threads=pool.threads,
                idle_threads=pool.idle_threads(),
                since_arrival=now - line.last_arrival,
                waited=now - started,
                gap=gap,
                cap=cap,
            )
            if wait <= 0:
                return
            line.arrived.clear()
            with contextlib.suppress(TimeoutError):  # the gap or the cap ran out: the loop decides
                await asyncio.wait_for(line.arrived.wait(), timeout=wait)

    def _take(self) -> list[_Pending]:
        """The next batch: queued requests in order (then, with room left, those of the same base's other
        models), skipping abandoned ones and dropping those that can no longer finish by their deadline.
        Its size is the batch policy's (`runtime/batchpolicy.py`) for what is queued now."""
        batch: list[_Pending] = []
        self._formed += 1
        limit = batch_size(
            self.line.queued,  # this model's queue, and its peers' with cross-tenant batching
            self.limits,
            self.batch_cost,
            threads=self.pool.threads,
            idle_threads=self.pool.idle_threads() if self.settings.spread_over_idle_threads else 0,
            probe=self._formed % PROBE_EVERY == 0,
        )
        if limit == 0:
            return batch
        now = self.clock()
        # a batch of one from this model's own queue needs nothing of the peers (their queues sorted, their
        # deadlines read): the cross-tenant bookkeeping only runs for a batch with room for other models
        alone = limit == 1 and bool(self._queue)
        others = [] if self.peers is None or alone else [o for o in self.peers.others(self) if not o._closing]
        if limit > 1:
            limit = within_deadlines(limit, self.batch_cost, self._shortest_deadline(others, limit))
        service = self.batch_cost(limit)
        self._take_from(self, batch, limit, now, service)
        if len(batch) < limit:
            for other in others:  # room left: requests of the same base's other models
                if len(batch) >= limit:
                    break
                self._take_from(other, batch, limit, now, service)
        return batch

    def _shortest_deadline(self, others: list[ModelBatcher], limit: int) -> float | None:
        """The shortest deadline (seconds from arrival) among the first `limit` requests the batch would
        take, in `_take`'s order (None: none of them has one)."""
        budgets = [
            pending.deadline - pending.enqueued
            for queue in (self._queue, *(other._queue for other in others))
            for pending in itertools.islice(queue, limit)
            if pending.deadline is not None and not pending.future.done()
        ][:limit]
        return min(budgets) if budgets else None

    @staticmethod
    def _take_from(
        source: ModelBatcher, batch: list[_Pending], limit: int, now: float, service: float
    ) -> None:
        while source._queue and len(batch) < limit:
            pending = source._queue.popleft()
            source.line.queued -= 1
            if pending.future.done():  # cancelled: the caller went away
                continue
            # one past its deadline is dropped; one expected to finish late only for another to run in
            # its place: the last candidate of an empty batch runs (an idle thread helps no one, and its
            # batch time refreshes the measurements that admission relies on)
            expected_late = cannot_finish(now, pending.deadline, service) and (batch or source._queue)
            if expected_late or cannot_finish(now, pending.deadline, 0.0):
                if pending.soft and source.line.queued < source.settings.max_batch_size:
                    # The server chose this deadline to keep a backlog from building up (its client set
                    # none and waits on); with less than a full batch behind it there is no backlog, only
                    # a stall (a contended host descheduled this process: 139 ms queued with 2 closed-loop
                    # clients, measured), and dropping it would free room nobody waits for: it runs.
                    batch.append(pending)
                    continue
                model_id = source.model.model_id
                pending.future.set_exception(
                    DeadlineExceeded(
                        f"model {model_id!r}: the request's deadline passed while it was queued "
                        f"({(now - pending.enqueued) * 1000:.0f} ms)",
                        hint="retry with a longer deadline (inferpack-deadline-ms), or add copies",
                        model_id=model_id,
                    )
                )
                continue
            batch.append(pending)

    async def _execute(self, batch: list[_Pending], running: int) -> None:
        started = self.clock()
        try:
            if all(p.owner is self for p in batch):
                items = [p.item for p in batch]
                raw = [p.raw for p in batch] if any(p.raw for p in batch) else None
                results = await self.pool.run(lambda: self.model.predict(items, raw))
            else:
                results = await self._execute_mixed(batch)
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            self.pool.end_batch(running, self.clock())
            self.pool.release()
        compute = self.clock() - started
        self.estimator.observe_batch(len(batch), compute)
        group = self.peers.estimator(self) if self.peers is not None else None
        if group is not None:  # the base's batch times, which size the batches its models form
            group.observe_batch(len(batch), compute)
        owners = _by_owner(batch)
        self.pool.observe_batch(compute, len(batch), len(owners))
        for pending in batch:
            if pending.estimate is not None:
                got = started - pending.enqueued + compute
                self.pool.lateness.observe(got, pending.estimate.total_s)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
        if admission_log.isEnabledFor(logging.DEBUG):
            _log_admissions(batch, started, compute)
        if self.observer is not None:
            for owner, rows in owners.items():
                waited = started - min(p.enqueued for p in rows)
                self.observer(owner.model.model_id, len(rows), waited, compute)

    async def _execute_mixed(self, batch: list[_Pending]) -> list[dict[str, Any]]:
        """One forward for rows of several models of one base; results in the batch's order."""
        groups = _by_owner(batch)
        parts = [
            Part(owner.model, [p.item for p in rows], [p.raw for p in rows]) for owner, rows in groups.items()
        ]
        assert self.peers is not None  # only peers mix batches
        run = self.peers.run
        per_part = await self.pool.run(lambda: run(parts))
        by_pending = {
            id(p): r
            for rows, results in zip(groups.values(), per_part, strict=True)
            for p, r in zip(rows, results, strict=True)
        }
        return [by_pending[id(p)] for p in batch]

    async def close(self, drain: bool = True) -> None:
        """Stop taking requests; finish queued and running ones (drain) or fail the queued ones."""
        self._closing = True
        if self.peers is not None:
            self.peers.leave(self)
        if not drain:
            while self._queue:
                pending = self._queue.popleft()
                self.line.queued -= 1
                if not pending.future.done():
                    pending.future.set_exception(ShuttingDown(f"model {self.model.model_id!r} was unloaded"))
        self._arrived.set()
        await self._dispatcher
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


def _by_owner(batch: list[_Pending]) -> dict[ModelBatcher, list[_Pending]]:
    """The batch's requests per model, in order of first appearance."""
    out: dict[ModelBatcher, list[_Pending]] = {}
    for pending in batch:
        out.setdefault(pending.owner, []).append(pending)
    return out


def _log_admissions(batch: list[_Pending], started: float, compute: float) -> None:
    """The calibration line of each request of a batch: estimate at admission against what it got."""
    for p in batch:
        if p.estimate is not None:
            admission_log.debug(
                "admitted model=%s est_wait_ms=%.1f est_service_ms=%.1f wait_ms=%.1f service_ms=%.1f "
                "batch=%d",
                p.owner.model.model_id,
                p.estimate.wait_s * 1000,
                p.estimate.service_s * 1000,
                (started - p.enqueued) * 1000,
                compute * 1000,
                len(batch),
            )
