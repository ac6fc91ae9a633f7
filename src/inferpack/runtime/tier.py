"""Tiered runtimes: a cold model answers from a fast-loading stand-in while its fast runtime is prepared in
the background, which then takes over.

The fastest runtime measured on CPUs without native bf16 (ONNX Runtime) has the slowest cold load: a
session costs several times an eager load. So a cold ONNX version loads first as the eager fp32 model of
the safetensors version it was compiled from (`load_model(tier=True)`; its agreement check showed the two
answer alike), and `Upgrades` creates the session on the registry's upgrade thread (niced like the load
lane and with one intra-op thread: it takes the cores' idle time, not the requests'; a thread of its own,
one session at a time, so cold loads never queue behind it). When it is ready, the swap happens on the
event loop under the model's lock: the ledger records the new runtime's memory, the batcher takes the new
model for the batches it forms from then on (batches already running finish on the stand-in, which they
hold), and the stand-in's weights go with its last batch. A model unloaded or evicted before its session
is ready drops the session when it arrives: eviction frees both. A session holds its own copy of the
weights (bench/bench_ort_memory.py), so the memory budget holds its estimate from before it is created
(the stand-in still held: both at once) until the swap puts it on the ledger, or until a session no
longer wanted has arrived; a model that cannot hold both within the budget keeps its stand-in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from inferpack.runtime.lanes import load_lane_thread
from inferpack.runtime.modeling import LoadedModel

log = logging.getLogger("inferpack.tier")
Swap = Callable[[str, LoadedModel, LoadedModel], Awaitable[bool]]  # model, stand-in, fast -> swapped
# model, stand-in -> bytes of the memory budget held for the fast runtime while it is created (raises
# when none can be had); `Release` hands them back
Claim = Callable[[str, LoadedModel], Awaitable[int]]
Release = Callable[[int], None]
T = TypeVar("T")


async def _no_claim(_model_id: str, _stand_in: LoadedModel) -> int:
    return 0


def _no_release(_claimed: int) -> None:
    return None


class Upgrades:
    """Background upgrades from stand-ins to their fast runtime, at most one per model, on a lane of their
    own (`shutdown` stops it)."""

    def __init__(
        self,
        swap: Swap,
        nice: int,
        claim: Claim = _no_claim,
        release: Release = _no_release,
        on_busy: Callable[[int], None] | None = None,
    ) -> None:
        # one session at a time on a thread of its own, niced as the load lane: a cold load never queues
        # behind a session being created
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="upgrade",
            initializer=load_lane_thread,
            initargs=(nice,),
        )
        self._swap = swap
        # the session's memory is held from before it is created (the stand-in is still held: both at
        # once) until the swap records it in the ledger, so no load counts on memory it is taking
        self._claim, self._release = claim, release
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.busy = 0  # jobs queued on the lane or running there (a dropped session counts until it ends)
        self._on_busy = on_busy  # told each new `busy` (the registry's stats: a metric)

    def start(
        self, model_id: str, loaded: LoadedModel, upgrade: Callable[[], LoadedModel] | None = None
    ) -> None:
        """Prepare `loaded`'s fast runtime in the background: `upgrade` when given (a traced graph over the
        model's own weights, compile/tracing.py: no budget is claimed for it), else a stand-in's
        `extra["upgrade"]` (else nothing)."""
        claims = upgrade is None
        if upgrade is None:
            upgrade = loaded.extra.get("upgrade")
        if not callable(upgrade):
            return
        self.cancel(model_id)
        task = asyncio.get_running_loop().create_task(
            self._run(model_id, loaded, upgrade, claims), name=f"upgrade:{model_id}"
        )
        self._tasks[model_id] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(model_id, None) if self._tasks.get(model_id) is t else None
        )

    def run(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """Run `job` on the upgrade lane after the jobs queued before it (upgrades, and other background
        work: a base's trunk, runtime/registry.py): the same niced thread, so it never competes with a cold
        load. It counts in `busy` until it has ended (its done callback runs on the event loop, as every
        change of `busy` does)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, job)
        self._count(1)
        future.add_done_callback(lambda _done: self._count(-1))
        return future

    def _count(self, change: int) -> None:
        self.busy += change
        if self._on_busy is not None:
            self._on_busy(self.busy)

    def pending(self, model_id: str) -> bool:
        """True while the model's fast runtime is being prepared."""
        return model_id in self._tasks

    def cancel(self, model_id: str) -> None:
        """Forget a pending upgrade (unload, eviction, reload): a session still being created is dropped
        when it arrives."""
        task = self._tasks.pop(model_id, None)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        """Forget every pending upgrade (server shutdown)."""
        for model_id in list(self._tasks):
            self.cancel(model_id)

    def shutdown(self) -> None:
        """Stop the upgrade lane (after `cancel_all`, at server shutdown): queued sessions never start."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(
        self, model_id: str, stand_in: LoadedModel, upgrade: Callable[[], Any], claims: bool
    ) -> None:
        try:
            claimed = await self._claim(model_id, stand_in) if claims else 0
        except Exception as exc:  # no room for both runtimes: the stand-in keeps serving
            log.warning("model %s keeps its eager runtime: no memory for its fast runtime: %s", model_id, exc)
            return
        future = self.run(upgrade)
        try:
            fast = await asyncio.shield(future)
        except asyncio.CancelledError:
            # the thread goes on creating the session, dropped when it arrives: it holds its memory until
            # then, so the claim goes with it, not with this task
            future.add_done_callback(lambda _done: self._release(claimed))
            raise
        except Exception as exc:  # the stand-in keeps serving: slower, never wrong
            self._release(claimed)
            log.warning(
                "model %s keeps its eager runtime: its fast runtime failed to load: %s", model_id, exc
            )
            return
        self._release(claimed)  # before the swap: the ledger records the session from then on
        if await self._swap(model_id, stand_in, fast):
            log.info(
                "model %s: %s runtime took over (loaded in %.0f ms)",
                model_id,
                _kind(fast),
                fast.load_seconds * 1000,
            )


def _kind(model: LoadedModel) -> str:
    if model.graph is not None:  # a hot eager model's trace (compile/tracing.py)
        return "traced graph"
    if model.alternate is not None:  # engine mixed: beside eager, per batch (runtime/runtimechoice.py)
        return f"{model.alternate.kind} (beside eager)"
    return model.manifest.format
