"""The batcher with a controllable fake model: batching, shedding, cancellation, draining."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from inferpack.errors import Overloaded, ShuttingDown
from inferpack.runtime.batcher import InferencePool, ModelBatcher
from inferpack.runtime.tasks import TextInput
from inferpack.settings import BatchingSettings


class GatedModel:
    """predict() blocks until the test opens the gate; records every batch it ran."""

    model_id = "fake"
    version = 1

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[str]] = []
        self.raw_flags: list[list[bool] | None] = []
        self.entered = threading.Semaphore(0)

    def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        self.entered.release()
        self.gate.wait(timeout=30)
        self.batches.append([i.text for i in items])
        self.raw_flags.append(raw)
        return [{"echo": i.text} for i in items]


Make = Callable[..., tuple[GatedModel, ModelBatcher]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Batchers on one single-thread pool; each is closed (gate opened first) and the pool shut down after
    the test. `make(model=None, **batching)` -> (model, batcher)."""
    made: list[tuple[GatedModel, ModelBatcher]] = []
    pool = InferencePool(threads=1)

    def build(model: GatedModel | None = None, **batching: Any) -> tuple[GatedModel, ModelBatcher]:
        model = model or GatedModel()
        settings = BatchingSettings(**{"max_batch_size": 8, "max_wait_ms": 0, "max_queue": 64, **batching})
        batcher = ModelBatcher(model, pool, settings)  # type: ignore[arg-type]
        made.append((model, batcher))
        return model, batcher

    yield build
    for model, batcher in made:
        model.gate.set()
        await batcher.close()
    pool.shutdown()


async def _entered(model: GatedModel) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.entered.acquire)


async def test_waiting_requests_form_one_batch_raw_or_decoded(make: Make) -> None:
    model, batcher = make(max_batch_size=8, max_queue=64)
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)  # the only thread is busy with "a"
    rest = [asyncio.create_task(batcher.submit(TextInput(t), raw=t == "c")) for t in "bcde"]
    while batcher.queue_depth < 4:
        await asyncio.sleep(0)
    model.gate.set()
    assert (await first)["echo"] == "a"
    assert [r["echo"] for r in await asyncio.gather(*rest)] == list("bcde")
    assert model.batches == [["a"], ["b", "c", "d", "e"]]
    assert model.raw_flags == [None, [False, True, False, False]]  # raw items share the decoded ones' batch


async def test_batches_are_capped_at_max_batch_size(make: Make) -> None:
    model, batcher = make(max_batch_size=2, max_queue=64)
    tasks = [asyncio.create_task(batcher.submit(TextInput(str(i)))) for i in range(5)]
    await _entered(model)
    model.gate.set()
    await asyncio.gather(*tasks)
    assert max(len(b) for b in model.batches) <= 2
    assert sorted(x for b in model.batches for x in b) == [str(i) for i in range(5)]


async def test_full_queue_sheds_with_overloaded(make: Make) -> None:
    model, batcher = make(max_batch_size=1, max_queue=2)
    running = asyncio.create_task(batcher.submit(TextInput("run")))
    await _entered(model)
    queued = [asyncio.create_task(batcher.submit(TextInput(f"q{i}"))) for i in range(2)]
    while batcher.queue_depth < 2:
        await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await batcher.submit(TextInput("too many"))
    assert info.value.retry_after_s >= 1
    model.gate.set()
    await asyncio.gather(running, *queued)  # the admitted ones still complete


async def test_cancelled_requests_are_skipped(make: Make) -> None:
    model, batcher = make(max_batch_size=8, max_queue=64)
    first = asyncio.create_task(batcher.submit(TextInput("a")))
    await _entered(model)
    gone = asyncio.create_task(batcher.submit(TextInput("gone")))
    kept = asyncio.create_task(batcher.submit(TextInput("kept")))
    while batcher.queue_depth < 2:
        await asyncio.sleep(0)
    gone.cancel()
    model.gate.set()
    await first
    assert (await kept)["echo"] == "kept"
    assert ["gone"] not in model.batches and all("gone" not in b for b in model.batches)


async def test_close_drains_queued_work_then_refuses(make: Make) -> None:
    model, batcher = make(max_batch_size=1, max_queue=8)
    tasks = [asyncio.create_task(batcher.submit(TextInput(str(i)))) for i in range(3)]
    await _entered(model)
    closing = asyncio.create_task(batcher.close(drain=True))
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown):
        await batcher.submit(TextInput("late"))
    model.gate.set()
    await closing
    assert [t.result()["echo"] for t in tasks] == ["0", "1", "2"]


async def test_model_errors_reach_every_caller_and_the_batcher_survives(make: Make) -> None:
    class Failing(GatedModel):
        def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
            if items[0].text == "boom":
                raise RuntimeError("kaboom")
            return super().predict(items, raw)

    model, batcher = make(Failing(), max_batch_size=4, max_queue=8)
    model.gate.set()
    with pytest.raises(RuntimeError, match="kaboom"):
        await batcher.submit(TextInput("boom"))
    assert (await batcher.submit(TextInput("fine")))["echo"] == "fine"
