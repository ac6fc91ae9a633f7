"""Demo models and the runtime on the real MiniLM weights: uniqueness, tasks, dtypes, truncation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput


def test_demo_models_are_unique_and_idempotent(tmp_path: Path) -> None:
    ids = make_demo_models(tmp_path, 3, task="feature-extraction", prefix="t")
    assert ids == ["t-0000", "t-0001", "t-0002"]
    assert make_demo_models(tmp_path, 3, task="feature-extraction", prefix="t") == ids  # nothing rewritten
    repo = LocalRepository(tmp_path)
    vecs = [
        load_model(repo, m, dtype="fp32").predict([TextInput("the same sentence")])[0]["embedding"]
        for m in ids
    ]
    assert not np.allclose(vecs[0], vecs[1]) and not np.allclose(vecs[1], vecs[2])
    # a perturbation, not a different model: the real MiniLM semantics survive
    assert float(np.dot(vecs[0], vecs[1])) > 0.9
    manifest = repo.manifest(ids[0])
    assert "untrained" in manifest.description and manifest.tokenizer.startswith("../../_shared/")


def test_embeddings_are_meaningful(demo_repo: Path, compute_dtype: str) -> None:
    model = load_model(LocalRepository(demo_repo), "emb-0000", dtype=compute_dtype)
    a, b, c = (
        r["embedding"]
        for r in model.predict(
            [
                TextInput("A man is playing a guitar."),
                TextInput("Someone plays an instrument."),
                TextInput("The stock market fell today."),
            ]
        )
    )
    assert float(np.dot(a, b)) > float(np.dot(a, c))
    for row in (a, b, c):  # pooled and normalised in fp32, whatever the compute dtype
        assert row.dtype == np.float32 and abs(float(np.linalg.norm(row)) - 1.0) < 1e-5


def test_bf16_agrees_with_fp32(demo_repo: Path) -> None:
    repo = LocalRepository(demo_repo)
    fp32 = load_model(repo, "emb-0000", dtype="fp32")
    bf16 = load_model(repo, "emb-0000", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    texts = [
        TextInput("inference at scale"),
        TextInput("a much longer sentence about serving thousands of models"),
    ]
    for x, y in zip(fp32.predict(texts), bf16.predict(texts), strict=True):
        assert float(np.dot(x["embedding"], y["embedding"])) > 0.999


def test_dynamic_padding_gives_the_same_result_alone_or_batched(demo_repo: Path) -> None:
    model = load_model(LocalRepository(demo_repo), "qa-0000", dtype="fp32")
    short = TextInput("Who?", "Ann met Bob at noon.")
    long = TextInput(
        "Where did they meet?", "Ann met Bob at noon, by the fountain in the middle of the old square."
    )
    alone = model.predict([short])[0]
    batched = model.predict([short, long])[0]
    assert alone["answer"] == batched["answer"]
    assert abs(alone["score"] - batched["score"]) < 1e-4


def test_truncation_keeps_question_and_cuts_context(demo_repo: Path) -> None:
    model = load_model(LocalRepository(demo_repo), "qa-0000", dtype="fp32", max_sequence_length=32)
    batch = model.tokenizer.encode([TextInput("What is it?", "word " * 500)])
    assert batch.input_ids.shape[1] == 32
    assert model.predict([TextInput("q " * 100, "context " * 100)])[0]["answer"] is not None


def test_servers_choose_a_version_that_suits_them(tmp_path: Path) -> None:
    import pytest

    from inferpack.errors import ModelLoadFailed
    from inferpack.repository.manifest import Agreement, Manifest, write_manifest
    from inferpack.runtime.versions import choose_version

    make_demo_models(tmp_path, 1, task="feature-extraction", prefix="m")
    repo = LocalRepository(tmp_path)

    def add(**fields: object) -> int:
        version, vdir = repo.new_version_dir("m-0000")
        base = {
            "format": "torchscript",
            "task": "feature-extraction",
            "weights": "model.pt",
            "tokenizer": "../1/x",
        }
        write_manifest(vdir / "manifest.json", Manifest.model_validate({**base, **fields}))
        return version

    failed = Agreement(max_abs_diff=1.0, cosine=0.5, tolerance=0.01, passed=False)
    add(target="cuda")
    add(quantization="int8-dynamic")
    add(agreement=failed)
    add(dtype="bf16")
    assert choose_version(repo, "m-0000", "cpu", torch.float32) == 1  # none of the compiled ones suit
    good = add()
    assert choose_version(repo, "m-0000", "cpu", torch.float32) == good
    assert choose_version(repo, "m-0000", "cuda", torch.bfloat16) == 1
    assert choose_version(repo, "m-0000", "cuda:0", torch.float32) == 2  # the CUDA trace, on any GPU index
    assert choose_version(repo, "m-0000", "cuda", torch.float16) == 1  # no fp16 trace: convert at load
    # Neuron serves Neuron graphs only: in its dtype when there is one, else in the one there is.
    neuron_fp32 = add(target="neuron")
    assert choose_version(repo, "m-0000", "neuron", torch.bfloat16) == neuron_fp32
    neuron_bf16 = add(target="neuron", dtype="bf16")
    assert choose_version(repo, "m-0000", "neuron", torch.bfloat16) == neuron_bf16
    assert choose_version(repo, "m-0000", "neuron", torch.float32) == neuron_fp32
    assert choose_version(repo, "m-0000", "cpu", torch.float32) == good
    # Weights stored in bf16 (compile --format safetensors) serve bf16 servers only, and only once checked.
    cast = add(format="safetensors", weights="model.safetensors", dtype="bf16", compiled_from=1)
    assert choose_version(repo, "m-0000", "cpu", torch.bfloat16) == cast
    assert choose_version(repo, "m-0000", "cuda", torch.bfloat16) == cast
    assert choose_version(repo, "m-0000", "cpu", torch.float32) == good  # never widens rounded weights
    assert choose_version(repo, "m-0000", "cuda", torch.float16) == 1
    add(format="safetensors", weights="model.safetensors", dtype="bf16", agreement=failed)
    assert choose_version(repo, "m-0000", "cpu", torch.bfloat16) == cast
    with pytest.raises(ModelLoadFailed, match="compiled for cuda"):
        load_model(repo, "m-0000", 2)


def test_recycled_shells_are_refilled_with_the_next_models_weights(demo_repo: Path) -> None:
    from inferpack.runtime.modeling import recycle
    from inferpack.runtime.skeletons import SKELETONS

    repo = LocalRepository(demo_repo)
    texts = [TextInput("Who?", "Ann met Bob at the station.")]
    first = load_model(repo, "qa-0000", dtype="fp32")
    expected = load_model(repo, "qa-0001", dtype="fp32").predict(texts)
    shell = first.module
    recycle(first)
    assert all(p.device.type == "meta" for p in shell.parameters())  # its weights are released
    again = load_model(repo, "qa-0001", dtype="fp32")
    assert again.module is shell  # reused, not rebuilt
    got = again.predict(texts)
    assert got[0]["answer"] == expected[0]["answer"]
    assert abs(got[0]["score"] - expected[0]["score"]) < 1e-6
    assert SKELETONS.take(again.module.skeleton_key) is None  # type: ignore[union-attr]


def test_raw_outputs_are_fp32_rows_trimmed_to_each_items_tokens(demo_repo: Path) -> None:
    repo = LocalRepository(demo_repo)
    short = TextInput("Who?", "Ann met Bob at noon.")
    long = TextInput("Where did they meet?", "Ann met Bob at noon, by the fountain in the old square.")
    for dtype in ("fp32", "bf16"):
        model = load_model(repo, "qa-0000", dtype=dtype)  # type: ignore[arg-type]
        tokens = [len(e.ids) for e in model.tokenizer.encode([short, long]).encodings]
        raw_short, decoded_long = model.predict([short, long], raw=[True, False])
        assert decoded_long["answer"] == model.predict([long])[0]["answer"]  # the widest row: no padding
        assert set(raw_short) == {"start_logits", "end_logits"}
        assert raw_short["start_logits"].dtype == np.float32 and len(raw_short["start_logits"]) == tokens[0]
        alone = model.predict([short], raw=[True])[0]
        tolerance = 1e-4 if dtype == "fp32" else 0.1
        np.testing.assert_allclose(raw_short["end_logits"], alone["end_logits"], atol=tolerance)
    classifier = load_model(repo, "cls-0000", dtype="fp32")
    (raw,) = classifier.predict([TextInput("a fine day")], raw=[True])
    (decoded,) = classifier.predict([TextInput("a fine day")])
    probs = np.exp(raw["logits"]) / np.exp(raw["logits"]).sum()
    np.testing.assert_allclose(probs, decoded["probabilities"], rtol=1e-5)
