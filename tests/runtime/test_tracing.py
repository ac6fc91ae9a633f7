"""Traced graphs of hot eager models (compile/tracing.py): the graph computes what the eager module does
over the very same tensors, a forward that branches on its data is refused, and the registry traces a
model once it has run `trace_after_batches` batches, keeping its memory record and cross-tenant group."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from inferpack.compile.packedfiles import PackedFiles, weight_key
from inferpack.compile.packing import packs
from inferpack.compile.tracing import graph_bytes, trace_job, traceable, traced
from inferpack.errors import ModelLoadFailed
from inferpack.repository.demo import make_demo_models
from inferpack.repository.local import LocalRepository
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.crossbatch import (
    TRUNKS,
    Part,
    Piece,
    TracedPieces,
    Trunk,
    composite,
    group_key,
    predict_together,
)
from inferpack.runtime.devices import ResolvedDevice
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.memory import MemoryLedger, module_storages
from inferpack.runtime.modeling import LoadedModel, load_model, model_storages, recycle
from inferpack.runtime.registry import ModelRegistry
from inferpack.settings import ServerSettings
from tests.onnx_models import QUESTIONS, assert_same_answers
from tests.waiting import until


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalRepository, list[str]]:
    root: Path = tmp_path_factory.mktemp("traced")
    ids = make_demo_models(root, 2, arch="tiny", prefix="tqa")
    return LocalRepository(root), ids


def test_the_graph_answers_as_eager_over_the_same_tensors(
    repo: tuple[LocalRepository, list[str]], compute_dtype: str
) -> None:
    repository, (model_id, _) = repo
    eager = load_model(repository, model_id, dtype=compute_dtype)  # type: ignore[arg-type]
    assert traceable(eager)
    fast = traced(eager)
    assert isinstance(fast.graph, torch.jit.ScriptModule) and fast.module is eager.module
    assert not traceable(fast)  # traced once
    # not frozen: the graph's parameters are the eager module's storages, so the ledger counts no copy,
    # only the graph's own memory (its IR and plans), estimated from its size, and where linear weights
    # are prepacked (bf16 on a CPU with native bf16: compile/packing.py) the packed copies, under keys
    # of their own (no storage), as many bytes as the plain weights
    in_graph = module_storages(fast.graph)
    assert {k: v for k, v in in_graph.items() if k >= 0} == module_storages(eager.module)
    packed = {k: v for k, v in in_graph.items() if k < 0}
    linears = [m.weight for m in eager.module.modules() if type(m) is torch.nn.Linear]
    assert sum(packed.values()) == (
        sum(w.numel() * w.element_size() for w in linears) if packs(eager.module) else 0
    )
    assert len(packed) == (len(linears) if packs(eager.module) else 0)
    assert fast.extra["graph_bytes"] == graph_bytes(fast.graph) > 0
    assert model_storages(fast) == {
        **model_storages(eager),
        **packed,
        -id(fast.graph): graph_bytes(fast.graph),
    }
    # a padded batch of three lengths and single items: the same answers as the eager module's
    assert_same_answers(fast.predict(QUESTIONS), eager.predict(QUESTIONS))
    for question in QUESTIONS:
        assert_same_answers(fast.predict([question]), eager.predict([question]))
    recycle(fast)
    assert fast.graph is None  # an unloaded model's graph lets go of the weights at once


def test_without_packing_the_graphs_read_the_plain_weights(repo: tuple[LocalRepository, list[str]]) -> None:
    repository, (model_id, _) = repo
    eager = load_model(repository, model_id, dtype="bf16")
    fast = traced(eager, pack=False)  # server.pack_weights = false
    assert fast.graph is not None
    graphs = [fast.graph, *(fast.pieces.graphs() if fast.pieces is not None else ())]
    assert all(k >= 0 for g in graphs for k in module_storages(g))  # no packed copy anywhere
    assert_same_answers(fast.predict(QUESTIONS), eager.predict(QUESTIONS))


def test_packed_weights_shared_through_files_answer_as_eager(
    repo: tuple[LocalRepository, list[str]], tmp_path: Path
) -> None:
    repository, (model_id, _) = repo
    eager = load_model(repository, model_id, dtype="bf16")
    fast = traced(eager, pack=PackedFiles(tmp_path))  # the server's default (server.share_packed_weights)
    assert fast.graph is not None
    if packs(eager.module):  # the packed copies are the files, one per linear weight of the model
        linears = {weight_key(m.weight) for m in eager.module.modules() if type(m) is torch.nn.Linear}
        assert {p.stem for p in tmp_path.rglob("*.packed")} == linears
        assert len([k for k in module_storages(fast.graph) if k < 0]) == len(linears)
    assert_same_answers(fast.predict(QUESTIONS), eager.predict(QUESTIONS))
    for question in QUESTIONS:
        assert_same_answers(fast.predict([question]), eager.predict([question]))


def test_a_forward_that_branches_on_its_data_is_refused(repo: tuple[LocalRepository, list[str]]) -> None:
    repository, (model_id, _) = repo
    eager = load_model(repository, model_id, dtype="fp32")
    module = eager.module
    assert isinstance(module, TaskWrapper)

    class Branchy(type(module)):  # type: ignore[misc]
        """Doubles its output for long batches: a trace records one branch only."""

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = super().forward(ids, mask, types)
            return out * 2 if bool(mask.sum() > 40) else out

    module.__class__ = Branchy
    with pytest.raises(ModelLoadFailed, match="disagrees with the eager module"):
        traced(eager)


def test_traced_tenants_of_one_base_mix_through_their_pieces(demo_repo: Path, compute_dtype: str) -> None:
    repository = LocalRepository(demo_repo)
    eager = [load_model(repository, f"qa-000{i}", dtype=compute_dtype) for i in range(2)]  # type: ignore[arg-type]
    alone = eager[1].predict(QUESTIONS)  # plain eager: no trunk yet
    fast = [traced(m) for m in eager]
    pieces = [f.pieces for f in fast]
    assert pieces[0] is not None and pieces[1] is not None
    # each tenant's own layer as graphs, one per call signature (a padded batch's mask, None unpadded)
    assert (
        list(pieces[0].own) == ["model.bert.encoder.layer.5"]
        and len(pieces[0].own["model.bert.encoder.layer.5"]) == 2
    )
    # the base's trunk made once, held by both: the embeddings and the five shared layers
    assert pieces[0].trunk is pieces[1].trunk is not None
    assert list(pieces[0].trunk.graphs) == [
        "model.bert.embeddings",
        *(f"model.bert.encoder.layer.{i}" for i in range(5)),
    ]
    # traced tenants with pieces mix again, with each other and with an eager tenant of their base
    assert group_key(fast[0]) == group_key(fast[1]) == group_key(eager[0]) is not None
    split = [QUESTIONS[:2], QUESTIONS[2:]]
    raw = [[False, False], [False, False, False]]
    want = predict_together([Part(m, q, r) for m, q, r in zip(eager, split, raw, strict=True)])
    for models in (fast, [fast[0], eager[1]]):
        got = predict_together([Part(m, q, r) for m, q, r in zip(models, split, raw, strict=True)])
        for mine, theirs in zip(got, want, strict=True):
            assert_same_answers(mine, theirs)
    # memory: the trunk is one record whoever holds it, each tenant's own graphs are its own
    ledger = MemoryLedger()
    for f in fast:
        ledger.add(f.model_id, model_storages(f))
    trunk = pieces[0].trunk
    assert model_storages(fast[0])[-id(trunk)] == trunk.bytes > 0
    assert ledger.total_bytes == sum(
        {**model_storages(fast[0]), **model_storages(fast[1])}.values()
    )  # shared base and trunk once
    assert ledger.freeable_bytes(fast[0].model_id) < ledger.model_bytes(fast[0].model_id) - trunk.bytes
    # an eager tenant of the base runs its own batches through the trunk too (its own layer eager)
    assert TRUNKS.of(eager[1]) is trunk
    assert_same_answers(eager[1].predict(QUESTIONS), alone)
    # the trunk (made from the first tenant's module) outlives that tenant: unloaded, its module shell is
    # emptied for reuse, and the trunk's graphs keep the shared tensors
    recycle(fast[0])
    assert fast[0].pieces is None and TRUNKS.of(eager[1]) is trunk
    assert_same_answers(eager[1].predict(QUESTIONS), alone)
    # the trunk lives as long as a traced tenant holds it; then eager tenants are plain eager again
    del fast, pieces, trunk, models, got, ledger, f
    gc.collect()
    assert TRUNKS.of(eager[1]) is None
    assert eager[1]._module_for(1) is eager[1].module


def test_a_trunk_serves_only_the_split_it_was_made_for() -> None:
    """A trunk made where layer 1 is shared must not stand in for layer 1 in a batch where a tenant owns it."""
    shared = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    own = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    root = nn.Module()
    root.layers = nn.ModuleList([shared, own, nn.Sequential(nn.Linear(4, 4))])
    calls: list[str] = []
    trunk = Trunk({"layers.1": {}}, split=("layers.2",))
    for split, expect in ((["layers.2"], True), (["layers.1", "layers.2"], False)):
        module = composite([root], split, [(0, 2)], [TracedPieces(trunk=trunk)])
        layer = module.get_submodule("layers.1")
        calls.append(type(layer).__name__)
        assert isinstance(layer, Piece) is expect
    assert calls == ["Piece", "RowSplit"]


def _registry(repository: LocalRepository, **settings: object) -> ModelRegistry:
    options = ServerSettings(lazy_load=True, engine="eager", dtype="fp32", inference_threads=2)
    return ModelRegistry(repository, options.model_copy(update=settings), InferencePool(2), tracer=trace_job)


async def test_a_hot_model_is_traced_and_keeps_its_answers_memory_and_group(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, (model_id, _) = repo
    registry = _registry(repository, trace_after_batches=3)
    answers = []
    async with registry.use(model_id) as (batcher, _):
        eager = batcher.model
        for _ in range(2):
            answers.append(await batcher.submit_many(QUESTIONS[:1]))
        assert registry.stats.swaps == 0 and not registry._upgrades.pending(model_id)
        answers.append(await batcher.submit_many(QUESTIONS[:1]))  # the third batch makes it hot
    await until(lambda: registry.stats.swaps == 1)
    entry = registry.entry(model_id)
    fast = entry.loaded
    assert isinstance(fast, LoadedModel) and fast.graph is not None and fast.module is eager.module
    assert entry.batcher is not None and entry.batcher.model is fast
    # the graph adds no copy of the weights, only its own memory
    assert entry.memory_bytes == sum(model_storages(eager).values()) + fast.extra["graph_bytes"]
    # tiny demo tenants share no base: no pieces for mixed batches, so it batches alone on its graph
    assert fast.pieces is None and group_key(fast) is None
    async with registry.use(model_id) as (batcher, _):
        for expected in answers:
            assert_same_answers(await batcher.submit_many(QUESTIONS[:1]), expected)
    await registry.close()


async def test_no_tracing_when_disabled_or_off_the_eager_engine(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, ids = repo
    for registry in (
        _registry(repository, trace_after_batches=0),
        _registry(repository, trace_after_batches=1, engine="onnxruntime"),
    ):
        async with registry.use(ids[1]) as (batcher, _):
            for _ in range(4):
                await batcher.submit_many(QUESTIONS[:1])
        await asyncio.sleep(0.05)
        loaded = registry.entry(ids[1]).loaded
        assert loaded is not None and loaded.graph is None and not registry._upgrades.pending(ids[1])
        assert registry.stats.swaps == 0
        await registry.close()


@pytest.mark.parametrize("kind", ["cuda", "neuron"])
def test_no_tracing_off_the_cpu(repo: tuple[LocalRepository, list[str]], kind: str) -> None:
    """A trace of a GPU model would run there too, unchecked on this machine (no GPU), and a Neuron
    model is a compiled graph already: the registry never asks for one off the CPU, whatever the
    setting (this builds no model on the device, so it runs here)."""
    repository, _ = repo
    device = ResolvedDevice(requested=kind, name=kind, kind=kind, detail=f"a {kind} device")  # type: ignore[arg-type]
    options = ServerSettings(engine="eager", trace_after_batches=1, memory_budget_mb=64)
    registry = ModelRegistry(repository, options, InferencePool(1), tracer=trace_job, device=device)
    assert registry._trace_after == 0
    on_cpu = ModelRegistry(repository, options, InferencePool(1), tracer=trace_job)
    assert on_cpu._trace_after == 1


async def test_a_graph_takes_only_free_budget(repo: tuple[LocalRepository, list[str]]) -> None:
    repository, ids = repo
    registry = _registry(repository, trace_after_batches=2)
    for model_id in ids:  # both loaded, one batch each
        async with registry.use(model_id) as (batcher, _):
            await batcher.submit_many(QUESTIONS[:1])
    registry.budget_bytes = registry.ledger.total_bytes + 2**16  # now full: room for no graph
    for model_id in ids:  # the second batch makes each hot: traced, but its graph does not fit
        async with registry.use(model_id) as (batcher, _):
            await batcher.submit_many(QUESTIONS[:1])
    await until(lambda: not any(registry._upgrades.pending(m) for m in ids))
    for model_id in ids:
        loaded = registry.entry(model_id).loaded
        assert loaded is not None and loaded.graph is None and registry.entry(model_id).state == "ready"
    assert registry.stats.swaps == 0 and registry.stats.evictions == {"budget": 0, "idle": 0}
    await registry.close()


async def test_an_unload_during_a_trace_keeps_the_module_shell_out_of_reuse(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, (model_id, _) = repo
    registry = _registry(repository, trace_after_batches=1)
    async with registry.use(model_id) as (batcher, _):
        await batcher.submit_many(QUESTIONS[:1])  # hot: its trace starts on the upgrade lane
        module = batcher.model.module
    assert registry._upgrades.pending(model_id) and registry.stats.upgrades_busy == 1
    await registry.unload(model_id)
    # the trace still reads the module: its shell must not be refilled with another model's weights
    assert all(p.device.type != "meta" for p in module.parameters())  # type: ignore[attr-defined]
    assert registry.entry(model_id).loaded is None and registry.stats.swaps == 0
    # the dropped trace still runs on the lane, and counts there until it ends
    deadline = time.monotonic() + 60
    while registry.stats.upgrades_busy:
        assert time.monotonic() < deadline, "the dropped trace never ended"
        await asyncio.sleep(0.05)
    await registry.close()


def test_the_server_traces_its_hot_models(repo: tuple[LocalRepository, list[str]]) -> None:
    from fastapi.testclient import TestClient

    from inferpack.server.app import create_app

    repository, (model_id, _) = repo
    settings = ServerSettings(
        repository=str(repository.root), models=[model_id], engine="eager", trace_after_batches=2
    )
    with TestClient(create_app(settings, repository=repository)) as client:
        answers = [client.get(f"/predictions/{model_id}").json() for _ in range(3)]
        deadline = time.monotonic() + 60
        while "inferpack_runtime_swaps_total 1.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the hot model was not traced in time"
            time.sleep(0.05)
        assert client.get(f"/predictions/{model_id}").json() == answers[0]  # the graph answers alike
        # the lane is idle once the graph took over: a benchmark waits for this before it measures
        assert "inferpack_upgrades_in_progress 0.0" in client.get("/metrics").text


def test_the_server_mixes_its_traced_tenants(demo_repo: Path) -> None:
    """Two MiniLM tenants of one base, one inference thread: once both are traced, concurrent requests
    for both still form mixed forwards (inferpack_batch_models above 1), answered as before."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from inferpack.server.app import create_app

    ids = ["qa-0000", "qa-0001"]
    settings = ServerSettings(
        repository=str(demo_repo), models=ids, engine="eager", trace_after_batches=2, inference_threads=1
    )
    query = {"seq_0": "Who wrote it?", "seq_1": "The book was written by Jane Austen in 1811."}
    with TestClient(create_app(settings, repository=LocalRepository(demo_repo))) as client:
        before = {m: client.get(f"/predictions/{m}", params=query).json() for m in ids}
        for _ in range(2):
            for m in ids:
                client.get(f"/predictions/{m}", params=query)
        deadline = time.monotonic() + 120
        while "inferpack_runtime_swaps_total 2.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the hot tenants were not traced in time"
            time.sleep(0.05)
        assert TRUNKS.of(load_model(LocalRepository(demo_repo), ids[0], warmup=False)) is not None

        def models_per_forward() -> tuple[float, float]:
            text = client.get("/metrics").text
            values = dict(
                line.rsplit(" ", 1)
                for line in text.splitlines()
                if line.startswith("inferpack_batch_models_")
            )
            return float(values["inferpack_batch_models_sum"]), float(values["inferpack_batch_models_count"])

        start = models_per_forward()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):  # bursts of 8 over one thread: the queued requests of both form mixed batches
                got = list(pool.map(lambda m: client.get(f"/predictions/{m}", params=query).json(), ids * 4))
                assert got == [before[m] for m in ids * 4]  # the answer spans (the seed API's `detail`)
                models, forwards = models_per_forward()
                if models - start[0] > forwards - start[1]:
                    break
        assert models - start[0] > forwards - start[1], "no mixed forward after tracing"
