"""A user's own token-classification (NER) fine-tune, end to end: a tiny random BertForTokenClassification
folder made offline is imported, answers as transformers' own token-classification pipeline
(aggregation_strategy="simple") and model do, is served over real HTTP (seed API, and V2 through the real
tritonclient with metadata that describes its entities output), and answers alike when traced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton

from inferpack.errors import ImportFailed
from inferpack.imports.importer import Importer
from inferpack.imports.samples import TAGS, make_folder
from inferpack.repository.local import LocalRepository
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.runtime.tasks import Result, TextInput
from inferpack.server.v2_schema import ModelMetadata
from tests.integration.conftest import RunningServer, running_server

TEXTS = [
    "Ann Smith flew from Paris to New York on Tuesday with Bob Jones of Acme Corp.",
    "The Louvre is in Paris.",
    "Hello",
]
MODEL = "ner"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(
        tmp_path_factory.mktemp("ner-src") / "bert-ner", "bert", "ForTokenClassification", seed=4
    )


@pytest.fixture(scope="module")
def repo(source: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalRepository:
    repository = LocalRepository(tmp_path_factory.mktemp("ner-repo") / "repo")
    result = Importer(repository).import_source(str(source), model_id=MODEL)
    assert result.task == "token-classification"  # from config.json's BertForTokenClassification
    assert result.agreement is not None and result.agreement.passed
    return repository


@pytest.fixture(scope="module")
def model(repo: LocalRepository) -> LoadedModel:
    return load_model(repo, MODEL, dtype="fp32")


def _pipeline(source: Path) -> Any:
    from transformers import pipeline

    return pipeline("token-classification", model=str(source), aggregation_strategy="simple", device="cpu")


def _assert_like_pipeline(got: list[dict[str, Any]], expected: list[dict[str, Any]], text: str) -> None:
    """Same entities, spans and scores; `word` is the text's own slice, where the pipeline joins the
    (lower-cased, for this uncased vocabulary) tokens back with spaces around punctuation."""
    assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [
        (e["entity_group"], e["start"], e["end"]) for e in expected
    ]
    for g, e in zip(got, expected, strict=True):
        assert g["word"] == text[g["start"] : g["end"]]
        # a run may start inside a word: the pipeline then keeps the "##" of its first piece
        assert g["word"].lower().replace(" ", "") == str(e["word"]).replace(" ", "").replace("##", "")
        assert g["score"] == pytest.approx(float(e["score"]), abs=1e-5)


def test_the_import_records_the_task_and_the_tags(repo: LocalRepository) -> None:
    manifest = repo.manifest(MODEL)
    assert manifest.task == "token-classification"
    assert manifest.labels == list(TAGS.values())
    assert manifest.class_scores == "softmax"


def test_entities_match_the_transformers_pipeline(model: LoadedModel, source: Path) -> None:
    nlp = _pipeline(source)
    expected = [nlp(text) for text in TEXTS]
    assert expected[0], "a random 9-tag head tags something in a long sentence"
    # as one padded batch and one by one: padding never changes an answer
    together = model.predict([TextInput(t) for t in TEXTS])
    for text, want, batched in zip(TEXTS, expected, together, strict=True):
        _assert_like_pipeline(batched["entities"], want, text)
        _assert_like_pipeline(model.predict([TextInput(text)])[0]["entities"], want, text)


def test_raw_logits_are_the_transformers_models(model: LoadedModel, source: Path) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    reference = AutoModelForTokenClassification.from_pretrained(str(source)).eval()
    raw = model.predict([TextInput(t) for t in TEXTS], [True] * len(TEXTS))
    for text, got in zip(TEXTS, raw, strict=True):
        with torch.inference_mode():
            want = reference(**tokenizer(text, return_tensors="pt")).logits[0].numpy()
        assert got["logits"].shape == want.shape == (want.shape[0], len(TAGS))  # every token, no padding
        np.testing.assert_allclose(got["logits"], want, atol=1e-5)


def _same_entities(got: list[Result], want: list[Result], atol: float = 1e-5) -> None:
    for g, w in zip(got, want, strict=True):
        spans = [(e["entity_group"], e["word"], e["start"], e["end"]) for e in g["entities"]]
        assert spans == [(e["entity_group"], e["word"], e["start"], e["end"]) for e in w["entities"]]
        assert [e["score"] for e in g["entities"]] == pytest.approx(
            [e["score"] for e in w["entities"]], abs=atol
        )


def test_a_traced_graph_answers_as_eager(repo: LocalRepository) -> None:
    """A hot model's TorchScript graph over the same weights (compile/tracing.py)."""
    from inferpack.compile.tracing import traced

    eager = load_model(repo, MODEL, dtype="fp32")
    fast = traced(eager)
    assert isinstance(fast.graph, torch.jit.ScriptModule)
    items = [TextInput(t) for t in TEXTS]
    _same_entities(fast.predict(items), eager.predict(items))
    for item in items:
        _same_entities(fast.predict([item]), eager.predict([item]))
    for f, e in zip(fast.predict(items, [True] * 3), eager.predict(items, [True] * 3), strict=True):
        np.testing.assert_allclose(f["logits"], e["logits"], atol=1e-5)


@pytest.mark.parametrize("output_format", ["torchscript", "onnx"])
def test_a_compiled_version_answers_as_eager(source: Path, tmp_path: Path, output_format: str) -> None:
    """`inferpack compile` to TorchScript (a traced, frozen graph) and to ONNX (for ONNX Runtime)."""
    from inferpack.compile.compiler import compile_model
    from inferpack.compile.options import CompileOptions

    if output_format == "onnx":
        pytest.importorskip("onnxruntime")
    repository = LocalRepository(tmp_path / "repo")
    Importer(repository).import_source(str(source), model_id=MODEL)
    result = compile_model(repository, MODEL, CompileOptions(output_format=output_format))  # type: ignore[arg-type]
    assert result.agreement.passed and result.same_answers == 1.0  # the same entities on the checks
    compiled = load_model(repository, MODEL, result.version)
    assert compiled.manifest.format == output_format and compiled.manifest.task == "token-classification"
    assert compiled.manifest.labels == list(TAGS.values())
    eager = load_model(repository, MODEL, 1, dtype="fp32")
    items = [TextInput(t) for t in TEXTS]
    _same_entities(compiled.predict(items), eager.predict(items), atol=1e-4)
    for item in items:
        _same_entities(compiled.predict([item]), eager.predict([item]), atol=1e-4)


def test_a_checkpoint_without_a_token_classifier_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "qa", "bert", "ForQuestionAnswering")
    repository = LocalRepository(tmp_path / "repo")
    with pytest.raises(ImportFailed, match=r"do not match config\.json for token-classification"):
        Importer(repository).import_source(str(folder), task="token-classification")
    assert not repository.root.exists() or repository.model_ids() == []


# -- served over HTTP -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(repo: LocalRepository) -> Iterator[RunningServer]:
    with running_server(repo.root, dtype="fp32", inference_threads=1) as running:
        yield running


def _seed(server: RunningServer, text: str, **params: str) -> Any:
    response = httpx.get(f"{server.url}/predictions/{MODEL}", params={"seq_0": text, **params})
    assert response.status_code == 200, response.text
    return response.json()["detail"]


def test_the_seed_api_answers_the_entities(server: RunningServer, model: LoadedModel) -> None:
    for text in TEXTS:
        expected = model.predict([TextInput(text)])[0]
        _same_entities([{"entities": _seed(server, text)}], [expected])
        raw = np.array(_seed(server, text, postprocess="false")["logits"], dtype=np.float32)
        np.testing.assert_allclose(raw, model.predict([TextInput(text)], [True])[0]["logits"], atol=1e-5)


def test_v2_metadata_describes_the_entities_output(server: RunningServer) -> None:
    tc = triton.InferenceServerClient(server.url.removeprefix("http://"))
    meta = tc.get_model_metadata(MODEL)
    ModelMetadata.model_validate(meta)  # what the OpenAPI document says it is
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {
            "name": "entities",
            "datatype": "BYTES",
            "shape": [-1],
            "parameters": {"content_type": "application/json"},
        }
    ]
    assert meta["parameters"]["task"] == "token-classification"
    doc = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    assert doc["TensorMetadata"]["properties"]["parameters"]["anyOf"][0] == {
        "$ref": "#/components/schemas/MetadataParameters"
    }
    assert "application/json" in doc["MetadataParameters"]["properties"]["content_type"]["description"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_gets_one_json_document_per_item(
    server: RunningServer, model: LoadedModel, binary: bool
) -> None:
    tc = triton.InferenceServerClient(server.url.removeprefix("http://"))
    text = triton.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary_data=binary)
    wanted = [triton.InferRequestedOutput("entities", binary_data=binary)]
    result = tc.infer(MODEL, [text], outputs=wanted)
    elements = result.as_numpy("entities")
    assert elements.shape == (len(TEXTS),)
    got = [{"entities": json.loads(e.decode() if isinstance(e, bytes) else str(e))} for e in elements]
    _same_entities(got, model.predict([TextInput(t) for t in TEXTS]))
    output = result.get_output("entities")
    assert output["parameters"]["content_type"] == "application/json"


def test_v2_refuses_a_second_text(server: RunningServer) -> None:
    inputs = [
        {"name": name, "datatype": "BYTES", "shape": [1], "data": [value]}
        for name, value in (("text", "Ann lives in Paris"), ("text_pair", "and Bob in Rome"))
    ]
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json={"inputs": inputs})
    assert response.status_code == 400 and "text_pair" in response.json()["error"]
