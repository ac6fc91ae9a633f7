"""Registry lifecycles with an injected loader: single flight, failures isolated, lazy loads, unload."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from inferpack.errors import ModelLoadFailed, ModelNotFound, ModelNotReady
from inferpack.runtime.batcher import InferencePool
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

    def predict(self, items: list[TextInput]) -> list[dict[str, Any]]:
        return [{"echo": f"{self.model_id}:{i.text}"} for i in items]


class Loader:
    """Counts loads per model; 'bad' fails; 'slow' blocks until released."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.release_slow = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, repo: Any, model_id: str, version: int | None) -> Any:
        with self.lock:
            self.calls[model_id] = self.calls.get(model_id, 0) + 1
        if model_id == "bad":
            raise ModelLoadFailed("model 'bad' failed to load: corrupt file")
        if model_id == "slow":
            self.release_slow.wait(timeout=30)
        return Echo(model_id)


def _registry(loader: Loader, lazy: bool = False) -> ModelRegistry:
    return ModelRegistry(
        Repo(["a", "b", "bad", "slow"]),  # type: ignore[arg-type]
        ServerSettings(),
        InferencePool(2),
        loader=loader,  # type: ignore[arg-type]
        lazy_load=lazy,
    )


async def test_concurrent_first_requests_cause_exactly_one_load() -> None:
    loader = Loader()
    registry = _registry(loader, lazy=True)
    results = await asyncio.gather(*(registry.ready_batcher("a") for _ in range(20)))
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
        await registry.ready_batcher("bad")
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
        await registry.ready_batcher("a")  # known but not loaded, lazy loading off
    await registry.load("a")
    batcher, cold = await registry.ready_batcher("a")
    assert not cold and (await batcher.submit(TextInput("x")))["echo"] == "a:x"
    await registry.unload("a")
    assert registry.entry("a").state == "unavailable"
    with pytest.raises(ModelNotReady):
        await registry.ready_batcher("a")
    await registry.close()
