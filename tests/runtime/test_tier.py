"""The tier: a cold ONNX version answers from its eager source, its ONNX Runtime session takes over in the
background with no failed request, and unloading before the session is ready drops it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from inferpack.repository.footprint import estimate_session_bytes
from inferpack.repository.local import LocalRepository
from inferpack.runtime.batcher import InferencePool, ModelBatcher
from inferpack.runtime.crossbatch import Peers
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.runtime.onnxrt import OrtModule
from inferpack.runtime.registry import ModelRegistry
from inferpack.settings import BatchingSettings, ServerSettings
from tests.onnx_models import QUESTIONS, assert_same_answers, onnx_repo
from tests.waiting import until


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalRepository, list[str]]:
    return onnx_repo(tmp_path_factory.mktemp("tier"), count=1)


class GatedLoader:
    """The server's tiered load, with each upgrade held until `gate` opens; counts finished upgrades."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.upgraded = 0

    def __call__(self, repo: LocalRepository, model_id: str, version: int | None, cold: bool) -> LoadedModel:
        loaded = load_model(
            repo, model_id, version, dtype="fp32", engine="onnxruntime", tier=True, warmup=None
        )
        upgrade: Callable[[], LoadedModel] = loaded.extra["upgrade"]

        def gated() -> LoadedModel:
            assert self.gate.wait(timeout=60)
            fast = upgrade()
            self.upgraded += 1
            return fast

        loaded.extra["upgrade"] = gated
        return loaded


def _registry(repo: LocalRepository, loader: GatedLoader, budget_mb: float | None = None) -> ModelRegistry:
    settings = ServerSettings(
        lazy_load=True,
        engine="onnxruntime",
        dtype="fp32",
        inference_threads=2,
        memory_budget_mb=budget_mb,
        memory_wait_s=0,
    )
    return ModelRegistry(repo, settings, InferencePool(2), loader=loader)  # type: ignore[arg-type]


async def test_the_session_takes_over_with_equal_answers_and_no_failed_request(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, (model_id,) = repo
    loader = GatedLoader()
    registry = _registry(repository, loader)
    async with registry.use(model_id) as (batcher, cold):
        assert cold and isinstance(batcher.model.module, TaskWrapper)
        before = await batcher.submit_many(QUESTIONS)
    eager_bytes = registry.ledger.total_bytes

    answers: list[list[dict[str, Any]]] = []
    errors: list[BaseException] = []

    async def client() -> None:  # requests all through the swap
        while registry.stats.swaps == 0 or len(answers) < 3:
            try:
                async with registry.use(model_id) as (b, _):
                    answers.append(await b.submit_many(QUESTIONS))
            except Exception as exc:
                errors.append(exc)

    running = [asyncio.create_task(client()) for _ in range(2)]
    await asyncio.sleep(0.05)
    loader.gate.set()
    await asyncio.wait_for(asyncio.gather(*running), timeout=120)
    assert errors == [] and registry.stats.swaps == 1
    entry = registry.entry(model_id)
    assert isinstance(entry.loaded, LoadedModel) and isinstance(entry.loaded.module, OrtModule)
    assert entry.batcher is batcher and batcher.model is entry.loaded and entry.version == 2
    onnx_bytes = (repository.version_dir(model_id, 2) / "model.onnx").stat().st_size
    session_bytes = estimate_session_bytes(onnx_bytes)  # its own copy of the weights, as measured
    assert registry.ledger.total_bytes == entry.memory_bytes == session_bytes != eager_bytes
    for got in answers:
        assert_same_answers(got, before)
    await registry.close()


async def test_unloading_before_the_session_is_ready_drops_it(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, (model_id,) = repo
    registry, loader, budget, session = await _answered_once_with_the_session_gated(repository, model_id)
    await until(lambda: registry.free_budget_bytes() == budget - registry.ledger.total_bytes - session)
    await registry.unload(model_id)  # eviction takes the same path (_unload_locked)
    # the session being created still takes its memory: its claim stays until it arrives
    assert registry.ledger.total_bytes == 0 and registry.free_budget_bytes() == budget - session
    loader.gate.set()
    await until(lambda: loader.upgraded == 1)  # the session was made ...
    await until(lambda: registry.free_budget_bytes() == budget)  # ... its claim handed back ...
    assert registry.stats.swaps == 0  # ... and dropped: nothing holds it
    assert registry.entry(model_id).state == "unavailable" and registry.ledger.total_bytes == 0
    # the next use loads afresh and upgrades again
    async with registry.use(model_id) as (_, cold):
        assert cold
    await until(lambda: registry.stats.swaps == 1)
    await registry.close()


def _session_bytes(repository: LocalRepository, model_id: str) -> int:
    return estimate_session_bytes((repository.version_dir(model_id, 2) / "model.onnx").stat().st_size)


async def _answered_once_with_the_session_gated(
    repository: LocalRepository, model_id: str
) -> tuple[ModelRegistry, GatedLoader, int, int]:
    """A registry with room for four sessions whose model answered once from its stand-in, its session's
    creation held at the loader's gate: (registry, loader, budget, session bytes)."""
    session = _session_bytes(repository, model_id)
    loader = GatedLoader()
    registry = _registry(repository, loader, budget_mb=4 * session / 2**20)
    budget = registry.budget_bytes
    assert budget is not None
    async with registry.use(model_id) as (batcher, _):
        await batcher.submit_many(QUESTIONS[:1])
    return registry, loader, budget, session


async def test_the_budget_holds_the_session_while_it_is_created_and_the_ledger_after(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    """While the session is created the stand-in is still held: the budget charges both; after the swap
    the ledger holds the session alone, and unloading releases everything."""
    repository, (model_id,) = repo
    registry, loader, budget, session = await _answered_once_with_the_session_gated(repository, model_id)
    stand_in = registry.ledger.total_bytes
    await until(lambda: registry.free_budget_bytes() == budget - stand_in - session)
    loader.gate.set()
    await until(lambda: registry.stats.swaps == 1)
    assert registry.ledger.total_bytes == session
    assert registry.free_budget_bytes() == budget - session
    await registry.unload(model_id)
    assert registry.free_budget_bytes() == budget
    await registry.close()


async def test_a_model_that_cannot_hold_both_runtimes_keeps_its_stand_in(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    """A budget with room for one runtime, not for the stand-in and the session at once: no session is
    created past the budget, the stand-in keeps serving and nothing stays claimed."""
    repository, (model_id,) = repo
    session = _session_bytes(repository, model_id)
    loader = GatedLoader()
    loader.gate.set()
    registry = _registry(repository, loader, budget_mb=1.5 * session / 2**20)
    async with registry.use(model_id) as (batcher, _):
        before = await batcher.submit_many(QUESTIONS)
    await until(lambda: not registry._upgrades.pending(model_id))
    assert loader.upgraded == 0 and registry.stats.swaps == 0
    entry = registry.entry(model_id)
    assert entry.loaded is not None and isinstance(entry.loaded.module, TaskWrapper)
    budget = registry.budget_bytes
    assert budget is not None and registry.free_budget_bytes() == budget - registry.ledger.total_bytes
    async with registry.use(model_id) as (batcher, _):
        assert_same_answers(await batcher.submit_many(QUESTIONS), before)
    await registry.close()


class _Model:
    def __init__(self, key: str | None) -> None:
        self.key = key
        self.model_id = f"m-{key}"


async def test_a_swapped_batcher_leaves_its_cross_tenant_peers() -> None:
    peers = Peers(key=lambda m: None if m.key is None else (m.key,))
    pool = InferencePool(1)
    a = ModelBatcher(_Model("base"), pool, BatchingSettings(), peers=peers)  # type: ignore[arg-type]
    b = ModelBatcher(_Model("base"), pool, BatchingSettings(), peers=peers)  # type: ignore[arg-type]
    assert peers.others(b) == [a]
    a.replace_model(_Model(None))  # type: ignore[arg-type]  # an ONNX Runtime session mixes with no one
    assert peers.others(b) == [] and peers.others(a) == []
    for batcher in (a, b):
        await batcher.close()
    pool.shutdown()
