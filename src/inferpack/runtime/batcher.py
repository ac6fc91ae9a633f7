"""Dynamic batching: one bounded queue per loaded model, a shared pool of inference threads.

The event loop only moves requests between queues; forwards run on `InferencePool` threads (torch releases
the GIL inside its kernels, so N threads with one intra-op thread each keep N cores busy without a copy of
each model per process). A batch forms from whatever is queued when a thread becomes free, topped up for
at most `max_wait_ms`; when a model's queue is full, new requests are shed with `Overloaded` at once instead
of waiting without bound. With `Peers`, a batch with room left takes queued requests of other models of
the same base too: their shared layers run once for all rows (`runtime/crossbatch.py`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from inferpack.errors import Overloaded, ShuttingDown
from inferpack.runtime.crossbatch import Part, Peers
from inferpack.runtime.modeling import LoadedModel
from inferpack.runtime.tasks import TextInput
from inferpack.settings import BatchingSettings

BatchObserver = Callable[[str, int, float, float], None]  # model, batch size, queue wait s, compute s


class InferencePool:
    """N threads that run forwards, and a FIFO semaphore so batchers take turns fairly."""

    def __init__(self, threads: int, intra_op_threads: int = 1) -> None:
        self.threads = threads
        self.intra_op_threads = intra_op_threads
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="infer", initializer=self._init_thread
        )
        self._slots = asyncio.Semaphore(threads)

    def _init_thread(self) -> None:
        torch.set_num_threads(self.intra_op_threads)

    async def acquire(self) -> None:
        """Wait for a free thread."""
        await self._slots.acquire()

    def release(self) -> None:
        """Give a thread back."""
        self._slots.release()

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on a pool thread (the caller holds a slot)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        """Stop the threads after the work already submitted."""
        self._executor.shutdown(wait=True, cancel_futures=False)


@dataclass(slots=True)
class _Pending:
    item: TextInput
    raw: bool
    future: asyncio.Future[dict[str, Any]]
    owner: ModelBatcher
    enqueued: float = field(default_factory=time.perf_counter)


class ModelBatcher:
    """The queue and dispatcher of one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        pool: InferencePool,
        settings: BatchingSettings,
        observer: BatchObserver | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.model = model
        self.pool = pool
        self.settings = settings
        self.observer = observer
        self.peers = peers
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.get_running_loop().create_task(
            self._dispatch(), name=f"batcher:{model.model_id}"
        )
        if peers is not None:
            peers.join(self)

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """True while requests are queued or batches are running."""
        return bool(self._queue) or bool(self._in_flight)

    async def submit(self, item: TextInput, *, raw: bool = False) -> dict[str, Any]:
        """Queue one item and wait for its result (`raw`: the model's own outputs, not decoded answers; it
        shares batches with decoded items); sheds load when the queue is full."""
        if self._closing:
            raise ShuttingDown(f"model {self.model.model_id!r} is being unloaded")
        if len(self._queue) >= self.settings.max_queue:
            raise Overloaded(
                f"model {self.model.model_id!r} has {len(self._queue)} requests queued (limit "
                f"{self.settings.max_queue})",
                retry_after_s=1.0,
                hint="retry after the Retry-After delay, or add copies of this model",
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, raw, future, self))
        self._arrived.set()
        return await future

    async def _dispatch(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            await self.pool.acquire()
            try:
                await self._top_up()
                batch = self._take()
            except BaseException:
                self.pool.release()
                raise
            if not batch:
                self.pool.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            # every model in the batch is busy until it ends (its unload waits; it is not evicted)
            for owner in {id(p.owner): p.owner for p in batch}.values():
                owner._in_flight.add(task)
                task.add_done_callback(owner._in_flight.discard)

    async def _top_up(self) -> None:
        """Wait up to max_wait for a fuller batch (only while it is not full already)."""
        wait_s = self.settings.max_wait_ms / 1000.0
        if wait_s <= 0:
            return
        deadline = time.perf_counter() + wait_s
        while len(self._queue) < self.settings.max_batch_size and not self._closing:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=left)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        limit = self.settings.max_batch_size
        self._take_from(self, batch, limit)
        if self.peers is not None and len(batch) < limit:
            for other in self.peers.others(self):  # room left: requests of the same base's other models
                if len(batch) >= limit:
                    break
                if not other._closing:
                    self._take_from(other, batch, limit)
        return batch

    @staticmethod
    def _take_from(source: ModelBatcher, batch: list[_Pending], limit: int) -> None:
        while source._queue and len(batch) < limit:
            pending = source._queue.popleft()
            if not pending.future.done():  # the client went away: skip its work
                batch.append(pending)

    async def _execute(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
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
            self.pool.release()
        compute = time.perf_counter() - started
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
        if self.observer is not None:
            for owner, rows in _by_owner(batch).items():
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
