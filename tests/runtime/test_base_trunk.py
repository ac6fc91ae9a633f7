"""A base's trunk for its eager tenants (runtime/registry.py, compile/tracing.py `base_trunk`): a busy base
gets it with none of its tenants traced, its tenants answer as before, it is charged once (to the base,
whoever else holds it), a traced tenant reuses it, it goes with the base's last tenant, and under a full
budget it is made only where the rule allows (the ledger within the budget either way). Real MiniLM
tenants sharing a base (the demo zoo's `qa-0000`, `qa-0001`): tiny demo models share no base."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from inferpack.compile.tracing import base_trunk, trace_job, trunk_job, trunkable
from inferpack.repository.local import LocalRepository
from inferpack.runtime import registry as registry_module
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.crossbatch import TRUNKS
from inferpack.runtime.modeling import LoadedModel, load_model, model_storages, trunk_storages
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.tasks import Result
from inferpack.settings import ServerSettings
from tests.onnx_models import QUESTIONS, assert_same_answers
from tests.waiting import until

TENANTS = ["qa-0000", "qa-0001"]
# a trunk is made on the upgrade lane, niced (runtime/lanes.py): ~0.6 s of CPU that can take a minute on
# cores other processes keep busy
LANE_S = 240.0


@pytest.fixture(autouse=True)
async def no_trunk_left() -> None:
    """Each test starts with no trunk held: one an earlier test dropped can outlive it for a moment (the
    upgrade thread's last reference), and a new registry would take it for its base (rightly: the same
    shared tensors), so the test would not see a trunk being made."""
    await until(lambda: gc.collect() >= 0 and TRUNKS.held() == 0, LANE_S)


def _registry(repository: LocalRepository, **settings: object) -> ModelRegistry:
    options = ServerSettings(lazy_load=True, engine="eager", dtype="fp32", inference_threads=2)
    return ModelRegistry(
        repository,
        options.model_copy(update=settings),
        InferencePool(2),
        tracer=trace_job,
        trunker=trunk_job,
    )


async def _ask(registry: ModelRegistry, model_id: str) -> list[Result]:
    """One request: one batch of the model's (its base's batches counted one by one)."""
    async with registry.use(model_id) as (batcher, _):
        return await batcher.submit_many(QUESTIONS[:1])


def _loaded(registry: ModelRegistry, model_id: str) -> LoadedModel:
    loaded = registry.entry(model_id).loaded
    assert loaded is not None
    return loaded


def _union_bytes(registry: ModelRegistry, records: list[str], extra: list[dict[int, int]]) -> int:
    held: dict[int, int] = {}
    for record in records:
        held.update(registry.ledger._by_model[record])
    for storages in extra:
        held.update(storages)
    return sum(held.values())


async def test_a_busy_base_gets_its_trunk_with_no_tenant_traced(demo_repo: Path, compute_dtype: str) -> None:
    repository = LocalRepository(demo_repo)
    registry = _registry(repository, trace_after_batches=0, trunk_after_batches=3, dtype=compute_dtype)
    before = [await _ask(registry, m) for m in TENANTS]  # two batches of the base: plain eager
    assert registry.stats.trunks["made"] == 0 and TRUNKS.of(_loaded(registry, TENANTS[0])) is None
    await _ask(registry, TENANTS[0])  # the third batch of its tenants makes the base busy
    await until(lambda: registry.stats.trunks["made"] == 1, timeout=LANE_S)
    models = [_loaded(registry, m) for m in TENANTS]
    trunk = TRUNKS.of(models[0])
    assert trunk is not None and TRUNKS.of(models[1]) is trunk
    assert all(m.graph is None and m.pieces is None for m in models)  # no tenant traced
    # every tenant runs its shared layers on the trunk now, and answers exactly as before
    assert models[1]._module_for(2) is not models[1].module
    for model_id, answers in zip(TENANTS, before, strict=True):
        assert_same_answers(await _ask(registry, model_id), answers)
    # charged once, to the base: one record of the trunk's graphs and packed weights beside the tenants'
    records = registry.ledger.models()
    (record,) = [r for r in records if r not in TENANTS]
    assert registry.ledger._by_model[record] == trunk_storages(trunk)
    assert registry.ledger.total_bytes == _union_bytes(registry, TENANTS, [trunk_storages(trunk)])
    assert registry.ledger.model_bytes(record) >= trunk.bytes > 0
    # held while a tenant of the base is loaded: the first one's unload keeps it (and its memory)
    await registry.unload(TENANTS[0])
    assert registry.stats.trunks == {"made": 1, "dropped": 0} and TRUNKS.of(models[1]) is trunk
    assert_same_answers(await _ask(registry, TENANTS[1]), before[1])
    # dropped with the last: its memory leaves the ledger, and nothing holds it any more
    await registry.unload(TENANTS[1])
    assert registry.stats.trunks == {"made": 1, "dropped": 1} and registry.stats.trunks_held == 0
    assert registry.ledger.models() == [] and registry.ledger.total_bytes == 0
    del trunk
    await until(lambda: gc.collect() >= 0 and TRUNKS.of(models[1]) is None, LANE_S)
    await registry.close()


async def test_a_traced_tenant_reuses_its_base_trunk_charged_once(demo_repo: Path) -> None:
    repository = LocalRepository(demo_repo)
    registry = _registry(repository, trace_after_batches=3, trunk_after_batches=2)
    for model_id in TENANTS:  # one batch each: the base is busy, its trunk is made (no tenant is hot yet)
        await _ask(registry, model_id)
    await until(lambda: registry.stats.trunks["made"] == 1, timeout=LANE_S)
    trunk = TRUNKS.of(_loaded(registry, TENANTS[0]))
    assert trunk is not None
    for _ in range(2):  # its third batch makes the first tenant hot: traced, its pieces on the same trunk
        await _ask(registry, TENANTS[0])
    await until(lambda: registry.stats.swaps == 1, timeout=LANE_S)
    fast = _loaded(registry, TENANTS[0])
    assert fast.graph is not None and fast.pieces is not None and fast.pieces.trunk is trunk
    assert registry.stats.trunks["made"] == 1  # not a second one
    # the trunk's memory counted once: the base's record and the traced tenant's share its keys
    assert registry.ledger.total_bytes == _union_bytes(registry, registry.ledger.models(), [])
    assert registry.ledger.total_bytes == sum(
        {
            **model_storages(fast),
            **model_storages(_loaded(registry, TENANTS[1])),
            **trunk_storages(trunk),
        }.values()
    )
    await registry.close()


async def test_a_trunk_a_traced_tenant_made_is_held_for_its_base(demo_repo: Path) -> None:
    repository = LocalRepository(demo_repo)
    registry = _registry(repository, trace_after_batches=2, trunk_after_batches=1000)
    await _ask(registry, TENANTS[1])
    for _ in range(2):  # the first tenant is hot: its trace makes the base's trunk
        await _ask(registry, TENANTS[0])
    await until(lambda: registry.stats.swaps == 1, timeout=LANE_S)
    trunk = TRUNKS.of(_loaded(registry, TENANTS[1]))
    assert trunk is not None and registry.stats.trunks["made"] == 1  # the base holds it: one charge
    await registry.unload(TENANTS[0])  # its traced tenant goes; its eager tenant keeps the trunk
    assert TRUNKS.of(_loaded(registry, TENANTS[1])) is trunk and registry.stats.trunks_held == 1
    await registry.unload(TENANTS[1])
    assert registry.stats.trunks["dropped"] == 1 and registry.ledger.total_bytes == 0
    await registry.close()


async def test_a_trunk_made_from_a_tenant_unloaded_meanwhile_serves_the_others(demo_repo: Path) -> None:
    repository = LocalRepository(demo_repo)
    registry = _registry(repository, trace_after_batches=0, trunk_after_batches=2)
    answers = {m: await _ask(registry, m) for m in TENANTS}  # busy: its trunk is on its way
    (base,) = registry._bases.values()
    source = base.making  # the tenant whose batch made the base busy: the trunk reads its module
    assert source in TENANTS and registry._trunk_source(source)
    (other,) = [m for m in TENANTS if m != source]
    module = _loaded(registry, source).module
    await registry.unload(source)
    # the trunk's tracing still reads the module: its shell must not be refilled with another's weights
    assert all(p.device.type != "meta" for p in module.parameters())  # type: ignore[attr-defined]
    # the base still has a tenant: it holds the trunk
    await until(lambda: registry.stats.trunks["made"] == 1, timeout=LANE_S)
    assert TRUNKS.of(_loaded(registry, other)) is not None
    assert_same_answers(await _ask(registry, other), answers[other])
    await registry.close()
    assert registry.stats.trunks == {"made": 1, "dropped": 1} and registry.ledger.total_bytes == 0


async def _full(registry: ModelRegistry, loaded: list[str]) -> list[list[Result]]:
    """Load `loaded` (one batch each), then leave no free budget; answers of the base's tenants."""
    answers = [await _ask(registry, m) for m in loaded]
    registry.budget_bytes = registry.ledger.total_bytes + 2**16
    return answers


async def test_a_full_budget_makes_no_big_trunk_and_evicts_no_one(demo_repo: Path) -> None:
    """A trunk over `TRUNK_EVICTS_UNDER` of the budget (two fp32 MiniLM tenants: ~100 MiB) takes only
    free budget, as a traced graph does: here there is none, so none is kept and no tenant goes."""
    repository = LocalRepository(demo_repo)
    registry = _registry(repository, trace_after_batches=0, trunk_after_batches=3)
    answers = await _full(registry, TENANTS)
    await _ask(registry, TENANTS[0])  # busy: its trunk is made, then refused for want of free budget
    base = registry._bases[next(iter(registry._bases))]
    await until(lambda: base.failed, timeout=LANE_S)
    assert registry.stats.trunks["made"] == 0 and registry.stats.evictions == {"budget": 0, "idle": 0}
    assert registry.ledger.total_bytes <= registry.budget_bytes  # type: ignore[operator]
    # not held: eager as before (once the upgrade thread has let go of the job's result too)
    await until(lambda: gc.collect() >= 0 and TRUNKS.of(_loaded(registry, TENANTS[1])) is None, LANE_S)
    for model_id, expected in zip(TENANTS, answers, strict=True):
        assert_same_answers(await _ask(registry, model_id), expected)
    await registry.close()


async def test_a_full_budget_evicts_idle_models_for_a_small_trunk(
    demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trunk within `TRUNK_EVICTS_UNDER` of the budget (the density case: a few tenants' worth of
    thousands; here the share is raised to fit this small budget) evicts idle models, least valued
    first, as a load does, and the ledger stays within the budget."""
    monkeypatch.setattr(registry_module, "TRUNK_EVICTS_UNDER", 1.0)
    repository = LocalRepository(demo_repo)
    registry = _registry(repository, trace_after_batches=0, trunk_after_batches=3)
    answers = await _full(registry, ["cls-0000", "emb-0000", *TENANTS])  # the oldest go first
    await _ask(registry, TENANTS[1])  # busy
    await until(lambda: registry.stats.trunks["made"] == 1, timeout=LANE_S)
    assert registry.stats.evictions["budget"] >= 1
    assert registry.entry("cls-0000").state == "evicted"
    assert registry.ledger.total_bytes <= registry.budget_bytes  # type: ignore[operator]
    assert registry.entry(TENANTS[1]).state == "ready"  # the one it was made from stays
    assert_same_answers(await _ask(registry, TENANTS[1]), answers[3])
    await registry.close()


def test_only_tenants_sharing_a_base_have_one(demo_repo: Path) -> None:
    repository = LocalRepository(demo_repo)
    tenant = load_model(repository, TENANTS[0], warmup=False)
    assert trunkable(tenant) and trunk_job(tenant) is not None
    assert TRUNKS.key(tenant) is not None
    tenant.extra["own_paths"] = None  # shares nothing: no base to make a trunk for
    assert not trunkable(tenant) and trunk_job(tenant) is None and TRUNKS.key(tenant) is None
    with pytest.raises(Exception, match="shares no layers"):
        base_trunk(tenant)


def test_no_trunks_when_off_or_off_the_eager_engine(demo_repo: Path) -> None:
    repository = LocalRepository(demo_repo)
    for update in ({"trunk_after_batches": 0}, {"engine": "onnxruntime"}):
        assert _registry(repository, **update)._trunk_after == 0
    assert _registry(repository, trunk_after_batches=5)._trunk_after == 5


def test_the_server_gives_a_busy_base_its_trunk(demo_repo: Path) -> None:
    """Only eager tenants (tracing off): after `trunk_after_batches` of their batches the server holds the
    base's trunk (its metrics say so) and answers exactly as before."""
    from fastapi.testclient import TestClient

    from inferpack.server.app import create_app

    settings = ServerSettings(
        repository=str(demo_repo),
        models=TENANTS,
        engine="eager",
        trace_after_batches=0,
        trunk_after_batches=4,
        inference_threads=1,
    )
    query = {"seq_0": "Who wrote it?", "seq_1": "The book was written by Jane Austen in 1811."}
    with TestClient(create_app(settings, repository=LocalRepository(demo_repo))) as client:
        before = {m: client.get(f"/predictions/{m}", params=query).json() for m in TENANTS}
        for m in TENANTS:
            client.get(f"/predictions/{m}", params=query)
        deadline = time.monotonic() + 60
        while 'inferpack_base_trunks_total{event="made"} 1.0' not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the busy base got no trunk in time"
            time.sleep(0.05)
        assert "inferpack_base_trunks_held 1.0" in client.get("/metrics").text
        assert {m: client.get(f"/predictions/{m}", params=query).json() for m in TENANTS} == before
