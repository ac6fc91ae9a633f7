"""Registry lifecycles with an injected loader: single flight, failures isolated, lazy loads, unload."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from inferpack.errors import ModelLoadFailed, ModelNotFound, ModelNotReady
from inferpack.runtime.batcher import InferencePool, ModelBatcher
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.tasks import TextInput
from inferpack.settings import ServerSettings


class Repo:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def model_ids(self) -> list[str]:
        return list(self.ids)


class Echo:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.version = 1
        self.module = None
        self.extra: dict[str, Any] = {}

    def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        return [{"echo": f"{self.model_id}:{i.text}"} for i in items]


class Loader:
    """Counts loads per model; 'bad' fails; 'slow' blocks until released."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.release_slow = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, repo: Any, model_id: str, version: int | None, cold: bool = False) -> Any:
        with self.lock:
            self.calls[model_id] = self.calls.get(model_id, 0) + 1
        if model_id == "bad":
            raise ModelLoadFailed("model 'bad' failed to load: corrupt file")
        if model_id == "slow":
            self.release_slow.wait(timeout=30)
        return Echo(model_id)


def _registry(loader: Loader, lazy: bool = False, **settings: Any) -> ModelRegistry:
    return ModelRegistry(
        Repo(["a", "b", "c", "d", "bad", "slow"]),  # type: ignore[arg-type]
        ServerSettings(lazy_load=lazy, **settings),
        InferencePool(2),
        loader=loader,  # type: ignore[arg-type]
        measure=lambda m: {id(m): MB},  # every fake model holds 1 MiB of its own
        estimate=lambda model_id, version: MB,
        clock=clock,
    )


MB = 2**20


async def ready_batcher(registry: ModelRegistry, model_id: str) -> tuple[ModelBatcher, bool]:
    """A ready model's batcher and whether this call loaded it, without holding the model afterwards."""
    async with registry.use(model_id) as got:
        return got


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0  # every reading is a tick later: last_used orders strictly
        return self.now


clock = Clock()


async def test_concurrent_first_requests_cause_exactly_one_load() -> None:
    loader = Loader()
    registry = _registry(loader, lazy=True)
    results = await asyncio.gather(*(ready_batcher(registry, "a") for _ in range(20)))
    assert loader.calls == {"a": 1}
    assert sum(cold for _, cold in results) == 1  # exactly one caller paid for the load
    await registry.close()


async def test_failing_load_does_not_block_other_models() -> None:
    loader = Loader()
    registry = _registry(loader)
    with pytest.raises(ModelLoadFailed, match="corrupt"):
        await registry.load("bad")
    entry, loaded = await registry.load("a")
    assert loaded and entry.state == "ready"
    assert registry.entry("bad").state == "failed" and "corrupt" in registry.entry("bad").reason
    with pytest.raises(ModelNotReady, match="corrupt"):
        await ready_batcher(registry, "bad")
    await registry.close()


async def test_slow_load_does_not_block_other_loads() -> None:
    loader = Loader()
    registry = _registry(loader)
    slow = asyncio.create_task(registry.load("slow"))
    while registry.entry("slow").state != "loading":
        await asyncio.sleep(0)
    entry, _ = await asyncio.wait_for(registry.load("b"), timeout=10)
    assert entry.state == "ready" and registry.entry("slow").state == "loading"
    loader.release_slow.set()
    await slow
    await registry.close()


async def test_unknown_and_unloaded_models() -> None:
    registry = _registry(Loader())
    with pytest.raises(ModelNotFound):
        registry.entry("zzz")
    with pytest.raises(ModelNotReady, match="load it"):
        await ready_batcher(registry, "a")  # known but not loaded, lazy loading off
    await registry.load("a")
    batcher, cold = await ready_batcher(registry, "a")
    assert not cold and (await batcher.submit(TextInput("x")))["echo"] == "a:x"
    await registry.unload("a")
    assert registry.entry("a").state == "unavailable"
    with pytest.raises(ModelNotReady):
        await ready_batcher(registry, "a")
    await registry.close()


async def test_budget_evicts_least_recently_used_and_stays_within_it() -> None:
    registry = _registry(Loader(), lazy=True, memory_budget_mb=2)
    for model in ("a", "b", "a", "c"):  # c must evict b (a was used more recently)
        batcher, _ = await ready_batcher(registry, model)
        await batcher.submit(TextInput("x"))
        assert registry.ledger.total_bytes <= 2 * MB
    assert registry.ready_models() == ["a", "c"]
    assert registry.entry("b").state == "evicted" and "budget" in registry.entry("b").reason
    assert registry.stats.evictions["budget"] == 1 and registry.stats.misses == 3 and registry.stats.hits == 1
    await registry.close()


async def test_hot_models_survive_a_stream_of_one_off_models() -> None:
    registry = _registry(Loader(), lazy=True, memory_budget_mb=2)
    for _ in range(3):
        await ready_batcher(registry, "a")  # a is hot: used repeatedly
    for one_off in ("b", "c", "d", "b", "c"):
        await ready_batcher(registry, one_off)
        assert "a" in registry.ready_models()  # segmented LRU: once-used models go first
    await registry.close()


async def test_pinned_and_busy_models_are_never_evicted() -> None:
    loader = Loader()
    registry = _registry(loader, lazy=True, memory_budget_mb=2, pinned_models=["a"], memory_wait_s=0)
    await registry.load("a")
    slow = asyncio.create_task(registry.load("slow"))  # holds its lock while loading
    while registry.entry("slow").state != "loading":
        await asyncio.sleep(0)
    loader.release_slow.set()
    await slow
    busy, _ = await ready_batcher(registry, "slow")
    gate = threading.Event()
    original = busy.model.predict

    def blocked(items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        gate.wait(timeout=30)
        return original(items, raw)

    busy.model.predict = blocked  # type: ignore[method-assign]
    running = asyncio.create_task(busy.submit(TextInput("x")))
    while not busy.busy:
        await asyncio.sleep(0)
    from inferpack.errors import Overloaded

    with pytest.raises(Overloaded, match="memory budget full"):
        await ready_batcher(registry, "b")  # a pinned, slow busy: nothing can go
    assert registry.entry("b").state == "unavailable"
    gate.set()
    await running
    await ready_batcher(registry, "b")  # now slow is idle and goes
    assert registry.ready_models() == ["a", "b"]
    await registry.close()


async def test_idle_models_are_unloaded() -> None:
    registry = _registry(Loader(), lazy=True, idle_unload_s=5, pinned_models=["b"])
    await ready_batcher(registry, "a")
    await registry.load("b")
    assert await registry.evict_idle() == []  # fresh
    clock.now += 10
    assert await registry.evict_idle() == ["a"]
    assert registry.entry("a").state == "evicted" and registry.ready_models() == ["b"]
    await registry.close()


class OrderedLoader(Loader):
    """Records the order in which loads start."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def __call__(self, repo: Any, model_id: str, version: int | None, cold: bool = False) -> Any:
        with self.lock:
            self.order.append(model_id)
        return super().__call__(repo, model_id, version, cold)


async def test_startup_loads_pinned_first_then_every_model_and_keeps_failures() -> None:
    loader = OrderedLoader()
    loader.release_slow.set()
    registry = _registry(loader, pinned_models=["d"])
    await registry.load_startup()  # a failing model is kept as state, not raised
    assert loader.order[0] == "d" and sorted(loader.order) == ["a", "b", "bad", "c", "d", "slow"]
    assert registry.ready_models() == ["a", "b", "c", "d", "slow"]
    assert registry.entry("bad").state == "failed" and "corrupt" in registry.entry("bad").reason
    await registry.close()


async def test_startup_loads_only_named_models_or_none_when_lazy() -> None:
    loader = OrderedLoader()
    registry = _registry(loader, models=["b", "a"], pinned_models=["c", "a"])
    await registry.load_startup()
    assert sorted(loader.order[:2]) == ["a", "c"] and loader.order[2:] == ["b"]  # pinned first, each once
    await registry.close()
    lazy = OrderedLoader()
    registry = _registry(lazy, lazy=True, pinned_models=["c"])
    await registry.load_startup()
    assert lazy.order == ["c"] and registry.ready_models() == ["c"]
    await registry.close()


def test_on_a_gpu_the_budget_is_the_devices_free_memory_unless_set() -> None:
    from inferpack.runtime.devices import CudaDevice, DeviceFacts, resolve_device

    gib = 2**30
    t4 = CudaDevice(0, "Tesla T4", (7, 5), 16 * gib, 15 * gib)
    gpu = resolve_device("cuda", DeviceFacts(torch_version="2.13.0", cuda_build="12.8", cuda_devices=(t4,)))
    repo: Any = Repo(["a"])
    measured = ModelRegistry(repo, ServerSettings(), InferencePool(1), loader=Loader(), device=gpu)  # type: ignore[arg-type]
    assert measured.budget_bytes == 15 * gib - int(1.6 * gib) and measured.device is gpu
    configured = ModelRegistry(
        repo,
        ServerSettings(memory_budget_mb=512),
        InferencePool(1),
        loader=Loader(),  # type: ignore[arg-type]
        device=gpu,
    )
    assert configured.budget_bytes == 512 * 2**20
    assert ModelRegistry(repo, ServerSettings(), InferencePool(1), loader=Loader()).budget_bytes is None  # type: ignore[arg-type]
