"""Engine mixed: a model with an ONNX version serves from eager at once, its ONNX Runtime session joins
the eager module in the background, and batches then run on either with the same answers; the model
stays in its cross-tenant group and the ledger counts both runtimes."""

from __future__ import annotations

import pytest

from inferpack.repository.local import LocalRepository
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.crossbatch import group_key
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.memory import module_storages
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.runtime.onnxrt import OrtModule
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.versions import onnx_alternate
from inferpack.settings import ServerSettings
from tests.onnx_models import QUESTIONS, assert_same_answers, onnx_repo
from tests.waiting import until


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalRepository, list[str]]:
    return onnx_repo(tmp_path_factory.mktemp("mixed"), count=2)


def test_the_alternate_is_the_onnx_version_compiled_from_the_served_one(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, (model_id, _) = repo
    assert onnx_alternate(repository, model_id, 1) == 2  # v2 was compiled from v1
    assert onnx_alternate(repository, model_id, 2) is None  # nothing was compiled from the ONNX version


def test_only_engine_mixed_prepares_a_session_beside_eager(repo: tuple[LocalRepository, list[str]]) -> None:
    repository, (model_id, _) = repo
    mixed = load_model(repository, model_id, dtype="fp32", engine="mixed", tier=True, warmup=None)
    assert mixed.version == 1 and isinstance(mixed.module, TaskWrapper) and callable(mixed.extra["upgrade"])
    eager = load_model(repository, model_id, dtype="fp32", engine="eager", tier=True, warmup=None)
    assert "upgrade" not in eager.extra and eager.alternate is None


async def test_the_session_joins_eager_with_equal_answers_and_both_in_the_ledger(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, ids = repo
    settings = ServerSettings(lazy_load=True, engine="mixed", dtype="fp32", inference_threads=2)
    registry = ModelRegistry(repository, settings, InferencePool(2))
    before, eager = {}, {}
    for model_id in ids:
        async with registry.use(model_id) as (batcher, cold):
            assert cold and batcher.model.alternate is None  # eager answers the cold request
            eager[model_id] = batcher.model
            before[model_id] = await batcher.submit_many(QUESTIONS)
    await until(lambda: registry.stats.swaps == len(ids))
    for model_id in ids:
        entry = registry.entry(model_id)
        loaded = entry.loaded
        assert isinstance(loaded, LoadedModel) and loaded.alternate is not None
        assert isinstance(loaded.alternate.module, OrtModule) and isinstance(loaded.module, TaskWrapper)
        assert entry.batcher is not None and entry.batcher.model is loaded and entry.version == 1
        # still batched across tenants as before: the same eager module and sharing records (what
        # crossbatch.group_key and the mixed batches read)
        assert loaded.module is eager[model_id].module and group_key(loaded) == group_key(eager[model_id])
        assert loaded.extra == {k: v for k, v in eager[model_id].extra.items() if k != "upgrade"}
        onnx_bytes = (repository.version_dir(model_id, 2) / "model.onnx").stat().st_size
        assert entry.memory_bytes >= sum(module_storages(loaded.module).values()) + onnx_bytes
        # batches of one and of three on both runtimes (the choice measures each first): same answers
        async with registry.use(model_id) as (batcher, _):
            for _ in range(8):
                assert_same_answers(await batcher.submit_many(QUESTIONS), before[model_id])
                for question, expected in zip(QUESTIONS, before[model_id], strict=True):
                    assert_same_answers(await batcher.submit_many([question]), [expected])
        assert loaded.alternate.choice.preferred(1) is not None  # both runtimes measured at batch 1
    await registry.close()


async def test_a_session_joins_only_into_free_budget_and_evicts_no_one(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, ids = repo
    eager = [load_model(repository, m, dtype="fp32", warmup=None) for m in ids]
    eager_mb = sum(sum(module_storages(m.module).values()) for m in eager) / 2**20
    onnx_mb = (repository.version_dir(ids[0], 2) / "model.onnx").stat().st_size / 2**20
    # room for both eager models and one session: the first session joins, the second does not
    settings = ServerSettings(
        lazy_load=True,
        engine="mixed",
        dtype="fp32",
        inference_threads=2,
        memory_budget_mb=eager_mb + 1.5 * onnx_mb,
    )
    registry = ModelRegistry(repository, settings, InferencePool(2))
    async with registry.use(ids[0]) as (batcher, _):
        await batcher.submit_many(QUESTIONS[:1])
    await until(lambda: registry.stats.swaps == 1)
    async with registry.use(ids[1]) as (batcher, _):
        await batcher.submit_many(QUESTIONS[:1])
    await until(lambda: not registry._upgrades.pending(ids[1]))
    assert registry.stats.swaps == 1 and registry.stats.evictions == {"budget": 0, "idle": 0}
    first, second = (registry.entry(m).loaded for m in ids)
    assert first is not None and first.alternate is not None
    assert second is not None and second.alternate is None  # stays eager, still served
    assert registry.ledger.total_bytes <= registry.budget_bytes  # type: ignore[operator]
    await registry.close()
