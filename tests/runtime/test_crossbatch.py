"""Cross-tenant batching: which layers a tenant owns, mixed batches equal to each model alone (real MiniLM
tenants sharing a base, both compute dtypes), and the batcher lending queued requests between peers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from inferpack.repository.local import LocalRepository
from inferpack.runtime.batcher import InferencePool, ModelBatcher
from inferpack.runtime.crossbatch import (
    Part,
    Peers,
    Piece,
    group_key,
    merge_paths,
    own_paths,
    predict_together,
    signature,
    trunk_paths,
)
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.runtime.tasks import TextInput
from inferpack.settings import BatchingSettings

QUESTIONS = [
    TextInput("Who wrote it?", "The book was written by Jane Austen in 1811."),
    TextInput("Where is the meeting?", "The meeting is in Berlin next week."),
    TextInput("What colour is the car?", "The car is red and very fast."),
    TextInput("Who met Alice?", "Bob met Alice at the station yesterday."),
    TextInput("How many apples?", "There were three apples on the kitchen table."),
    TextInput("When did it rain?", "It rained on Tuesday morning in Paris."),
]


class _Block(nn.Module):
    def __init__(self, inner: nn.Linear, own: nn.Linear) -> None:
        super().__init__()
        self.inner, self.own = inner, own


def test_own_paths_keep_out_shared_and_descend_into_mixed_modules() -> None:
    shared = nn.Linear(4, 4)
    root = nn.Module()
    root.embed = nn.Linear(4, 4)  # shared
    root.block = _Block(shared, nn.Linear(4, 4))  # holds shared and own: descended into
    root.top = nn.Sequential(nn.Linear(4, 4), nn.ReLU())  # only own weights: one path
    root.embed.weight, root.embed.bias = shared.weight, shared.bias
    tensors = [shared.weight, shared.bias]
    assert own_paths(root, tensors) == ["block.own", "top"]
    assert own_paths(root, []) is None  # nothing shared: nothing to run once
    assert own_paths(nn.Linear(4, 4), [torch.zeros(1)]) is None


def test_merge_paths_keeps_the_outermost() -> None:
    assert merge_paths([["a.b", "c"], ["a.b", "c"]]) == ["a.b", "c"]
    assert merge_paths([["a.b", "c"], ["a", "c"]]) == ["a", "c"]  # one model owns all of `a`
    assert merge_paths([["a"], None]) is None


def test_trunk_paths_are_the_shared_subtrees_beside_the_split_points() -> None:
    root = nn.Module()
    root.embed = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))  # shared, with submodules: a piece
    root.norm = nn.LayerNorm(4)  # shared but a lone leaf: no graph would pay
    root.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(3)])
    root.head = nn.Linear(4, 2)
    assert trunk_paths(root, ["layers.2", "head"]) == ["embed", "layers.0", "layers.1"]
    assert trunk_paths(root, ["layers"]) == ["embed"]


class _Masked(nn.Linear):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, flag: bool = False) -> torch.Tensor:
        return super().forward(x) * (2 if flag else 1)


def test_a_piece_runs_the_graph_of_its_call_signature_else_the_eager_module() -> None:
    eager = _Masked(4, 4)
    calls: list[tuple[torch.Tensor, ...]] = []

    def graph(*tensors: torch.Tensor) -> torch.Tensor:
        calls.append(tensors)
        return torch.zeros(1)

    x, mask = torch.ones(2, 4), torch.ones(2, 4)
    traced_for = signature((x,), {"mask": None, "flag": True})
    assert traced_for is not None
    piece = Piece(eager, {traced_for: graph})
    assert torch.equal(piece(x, mask=None, flag=True), torch.zeros(1)) and len(calls) == 1
    assert calls[0][0] is x  # the graph takes the call's tensors, the constants are in it
    # another signature (a mask given, a flag changed): the eager module, which is still right
    with torch.no_grad():
        assert torch.equal(piece(x, mask=None, flag=False), eager(x)) and len(calls) == 1
    assert signature((x,), {"mask": mask}) != signature((x,), {"mask": None})
    assert signature((x,), {"cache": object()}) is None  # a constant that cannot be compared: never traced
    assert list(piece.parameters()) == []  # the eager module stays owned by its model


def _load(demo_repo: Path, dtype: str) -> list[LoadedModel]:
    """The demo repository's two QA tenants of one MiniLM base (own top layer and head)."""
    repo = LocalRepository(demo_repo)
    return [load_model(repo, f"qa-000{i}", dtype=dtype, warmup=False) for i in range(2)]  # type: ignore[arg-type]


def test_tenants_own_only_their_top_layer_and_head(demo_repo: Path) -> None:
    models = _load(demo_repo, "fp32")
    assert {tuple(m.extra["own_paths"]) for m in models} == {
        ("model.bert.encoder.layer.5", "model.qa_outputs")
    }
    assert len({group_key(m) for m in models}) == 1 and group_key(models[0]) is not None
    classifier = load_model(LocalRepository(demo_repo), "cls-0000", warmup=False)
    assert group_key(classifier) not in (None, group_key(models[0]))  # another architecture: never mixed


Compared = tuple[LoadedModel, list[TextInput], list[bool], list[Any], list[Any], list[Any]]


def _mixed_and_alone(
    models: list[LoadedModel], split: list[list[TextInput]], raw: list[list[bool]]
) -> list[Compared]:
    """Per model: its items and raw flags, its results from one batch mixing every model, and its own
    results alone (raw for every item, then decoded)."""
    mixed = predict_together(
        [Part(m, items, flags) for m, items, flags in zip(models, split, raw, strict=True)]
    )
    return [
        (model, items, flags, results, model.predict(items, [True] * len(items)), model.predict(items))
        for model, items, flags, results in zip(models, split, raw, mixed, strict=True)
    ]


def test_a_mixed_batch_equals_each_model_alone(demo_repo: Path, compute_dtype: str) -> None:
    models = _load(demo_repo, compute_dtype)
    split = [QUESTIONS[:2], QUESTIONS[2:]]  # 2 + 4 rows
    raw = [[True, False], [False, True, False, True]]
    # fp32: rounding only (a batch of other rows changes nothing else); bf16 rounds each layer to 8 bits
    atol = 1e-4 if compute_dtype == "fp32" else 0.05
    for model, _, flags, results, alone_raw, alone in _mixed_and_alone(models, split, raw):
        for i, result in enumerate(results):
            if flags[i]:
                for key in ("start_logits", "end_logits"):
                    got, want = torch.tensor(result[key]), torch.tensor(alone_raw[i][key])
                    assert torch.allclose(got, want, atol=atol), (model.model_id, key)
            else:
                assert result["answer"] == alone[i]["answer"]
                assert result["score"] == pytest.approx(alone[i]["score"], abs=10 * atol)


SENTENCES = [
    TextInput("Ann Smith met Bob Jones in Paris on Tuesday."),
    TextInput("The Louvre is in Paris."),
    TextInput("Acme Corp opened an office in Berlin and another one in Rome last spring."),
    TextInput("Hi"),
    TextInput("Margaret teaches in Leeds."),
]


@pytest.fixture(scope="module")
def ner_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two token-classification tenants of one MiniLM base (own top layer and per-token classifier)."""
    from inferpack.repository.demo import make_demo_models

    root = tmp_path_factory.mktemp("ner-tenants")
    make_demo_models(root, 2, task="token-classification", prefix="ner")
    return root


def test_token_classification_tenants_mix_like_each_alone(ner_repo: Path, compute_dtype: str) -> None:
    repo = LocalRepository(ner_repo)
    models = [load_model(repo, f"ner-000{i}", dtype=compute_dtype, warmup=False) for i in range(2)]  # type: ignore[arg-type]
    # the per-token classifier is a tenant's own, like QA's head: it runs on that tenant's rows only
    assert {tuple(m.extra["own_paths"]) for m in models} == {
        ("model.bert.encoder.layer.5", "model.classifier")
    }
    assert len({group_key(m) for m in models}) == 1 and group_key(models[0]) is not None
    split = [SENTENCES[:2], SENTENCES[2:]]  # 2 + 3 rows of different lengths: one padded batch
    raw = [[True, False], [False, True, False]]
    atol = 1e-4 if compute_dtype == "fp32" else 0.05
    for _, items, flags, results, alone_raw, alone in _mixed_and_alone(models, split, raw):
        for i, result in enumerate(results):
            if flags[i]:  # the item's own tokens only, whatever the mixed batch's width
                assert result["logits"].shape == alone_raw[i]["logits"].shape
                assert torch.allclose(
                    torch.tensor(result["logits"]), torch.tensor(alone_raw[i]["logits"]), atol=atol
                )
            else:
                assert alone[i]["entities"]  # a random head tags most tokens: never all O
                for e in result["entities"]:
                    assert e["word"] == items[i].text[e["start"] : e["end"]]
                if compute_dtype != "fp32":
                    # bf16 rounds differently in another batch: with an untrained head's near-even tags an
                    # argmax may flip, so bf16 is held to the logits above and fp32 to the same entities
                    continue
                spans = [(e["entity_group"], e["word"], e["start"], e["end"]) for e in result["entities"]]
                assert spans == [
                    (e["entity_group"], e["word"], e["start"], e["end"]) for e in alone[i]["entities"]
                ]
                got = [e["score"] for e in result["entities"]]
                assert got == pytest.approx([e["score"] for e in alone[i]["entities"]], abs=10 * atol)


class _Fake:
    """A model whose predict blocks until the gate opens; its group is its `base`."""

    def __init__(self, name: str, base: str, gate: threading.Event) -> None:
        self.model_id, self.version, self.base, self.gate = name, 1, base, gate
        self.entered = threading.Semaphore(0)

    def predict(self, items: list[TextInput], raw: Any = None) -> list[dict[str, Any]]:
        self.entered.release()
        self.gate.wait(timeout=30)
        return [{"echo": i.text, "by": self.model_id} for i in items]


@pytest.fixture
def pool() -> Iterator[InferencePool]:
    pool = InferencePool(threads=1)
    yield pool
    pool.shutdown()


async def test_a_free_thread_takes_queued_requests_of_the_same_base(pool: InferencePool) -> None:
    gate = threading.Event()
    mixed: list[list[tuple[str, list[str]]]] = []

    def run(parts: list[Part]) -> list[list[dict[str, Any]]]:
        mixed.append([(p.model.model_id, [i.text for i in p.items]) for p in parts])
        return [[{"echo": i.text, "by": p.model.model_id, "mixed": True} for i in p.items] for p in parts]

    peers = Peers(key=lambda m: (m.base,), run=run)
    forwards: list[tuple[int, int]] = []  # what the server's metrics hear: rows and models per forward
    pool.forward_observer = lambda rows, models: forwards.append((rows, models))
    settings = BatchingSettings(max_batch_size=4, max_batch_latency_ms=0, max_wait_ms=0, max_queue=16)
    a, b, c = _Fake("a", "base", gate), _Fake("b", "base", gate), _Fake("c", "other", gate)
    batchers = {m.model_id: ModelBatcher(m, pool, settings, peers=peers) for m in (a, b, c)}  # type: ignore[arg-type]
    first = asyncio.create_task(batchers["a"].submit(TextInput("a1")))
    await asyncio.get_running_loop().run_in_executor(None, a.entered.acquire)  # the one thread is busy
    queued = [
        asyncio.create_task(batchers[name].submit(TextInput(text)))
        for name, text in (("a", "a2"), ("b", "b1"), ("b", "b2"), ("c", "c1"), ("b", "b3"))
    ]
    while sum(x.queue_depth for x in batchers.values()) < 5 or pool.state().waiting < 3:
        await asyncio.sleep(0)
    # admission sees a base as one queue and one line: a and b share theirs, c (another base) has its own
    ab, own_c = batchers["a"].line, batchers["c"].line
    assert batchers["b"].line is ab and own_c is not ab
    assert (ab.queued, len(ab.tickets), own_c.queued, len(own_c.tickets)) == (4, 2, 1, 1)
    first_place = pool.position(ab.tickets[0])
    assert first_place in (0, 1)  # a's or b's dispatcher ahead of c's, or c's ahead of both
    gate.set()
    results = {r["echo"]: r for r in await asyncio.gather(first, *queued)}
    assert (ab.queued, len(ab.tickets), own_c.queued, len(own_c.tickets)) == (0, 0, 0, 0)
    assert {k: v["by"] for k, v in results.items()} == {
        "a1": "a", "a2": "a", "b1": "b", "b2": "b", "b3": "b", "c1": "c"
    }  # fmt: skip
    assert results["c1"].get("mixed") is None  # another base: never in a mixed batch
    # whichever of a and b got the free thread first took its own queue, then the other's, up to the
    # batch limit of 4: one batch mixing both models, one forward for the four
    assert len(mixed) == 1 and {name for name, _ in mixed[0]} == {"a", "b"}
    assert sorted(text for _, texts in mixed[0] for text in texts) == ["a2", "b1", "b2", "b3"]
    assert sorted(forwards) == [(1, 1), (1, 1), (4, 2)]  # a1 alone, c1 alone, the mixed batch of 4 rows
    # the base's batch times (which size its batches) hold the mixed batch, whoever formed it
    group = peers.estimator(batchers["a"])
    assert group is not None and group is peers.estimator(batchers["b"])
    assert group.batch_seconds(4) > 0 and peers.estimator(batchers["c"]) is not group
    for batcher in batchers.values():
        await batcher.close()
    assert peers.others(batchers["a"]) == []  # closed batchers leave their group
    assert peers.estimator(batchers["a"]) is None


async def test_a_model_that_leaves_its_group_takes_its_queue_to_a_line_of_its_own(
    pool: InferencePool,
) -> None:
    gate = threading.Event()
    peers = Peers(key=lambda m: None if m.base is None else (m.base,))
    settings = BatchingSettings(max_batch_size=4, max_batch_latency_ms=0, max_wait_ms=0, max_queue=16)
    a, b = _Fake("a", "base", gate), _Fake("b", "base", gate)
    batchers = {m.model_id: ModelBatcher(m, pool, settings, peers=peers) for m in (a, b)}  # type: ignore[arg-type]
    first = asyncio.create_task(batchers["a"].submit(TextInput("a1")))
    await asyncio.get_running_loop().run_in_executor(None, a.entered.acquire)  # the one thread is busy
    queued = [
        asyncio.create_task(batchers[name].submit(TextInput(text)))
        for name, text in (("a", "a2"), ("b", "b1"), ("b", "b2"))
    ]
    while sum(x.queue_depth for x in batchers.values()) < 3 or pool.state().waiting < 2:
        await asyncio.sleep(0)
    shared = batchers["a"].line
    assert batchers["b"].line is shared and shared.queued == 3
    # b's model is replaced by one that mixes with no one (a traced graph, an ONNX Runtime session)
    alone = _Fake("b", None, gate)  # type: ignore[arg-type]
    batchers["b"].replace_model(alone)  # type: ignore[arg-type]
    assert peers.others(batchers["a"]) == [] and batchers["b"].line is not shared
    assert (shared.queued, batchers["b"].line.queued) == (1, 2)
    gate.set()
    results = {r["echo"]: r["by"] for r in await asyncio.gather(first, *queued)}
    assert results == {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}
    assert (shared.queued, len(shared.tickets), batchers["b"].line.queued) == (0, 0, 0)
    assert len(batchers["b"].line.tickets) == 0
    for batcher in batchers.values():
        await batcher.close()


async def test_an_unload_waits_for_a_mixed_batch_holding_its_rows(pool: InferencePool) -> None:
    gate = threading.Event()
    started = threading.Event()

    def run(parts: list[Part]) -> list[list[dict[str, Any]]]:
        started.set()
        gate.wait(timeout=30)
        return [[{"echo": i.text} for i in p.items] for p in parts]

    peers = Peers(key=lambda m: (m.base,), run=run)
    settings = BatchingSettings(max_batch_size=8, max_batch_latency_ms=0, max_wait_ms=0, max_queue=16)
    a, b = _Fake("a", "base", threading.Event()), _Fake("b", "base", gate)
    ba, bb = (ModelBatcher(m, pool, settings, peers=peers) for m in (a, b))  # type: ignore[arg-type]
    first = asyncio.create_task(ba.submit(TextInput("a1")))
    await asyncio.get_running_loop().run_in_executor(None, a.entered.acquire)
    later = [asyncio.create_task(ba.submit(TextInput("a2"))), asyncio.create_task(bb.submit(TextInput("b1")))]
    while ba.queue_depth + bb.queue_depth < 2:
        await asyncio.sleep(0)
    a.gate.set()  # a1 finishes; the mixed batch of a2 and b1 then blocks on `gate`
    await first
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
    assert bb.busy  # b's request runs in a's batch: b counts as busy (not evicted, unload waits)
    closing = asyncio.create_task(bb.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    gate.set()
    await closing
    assert [r["echo"] for r in await asyncio.gather(*later)] == ["a2", "b1"]
    await ba.close()
