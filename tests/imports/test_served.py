"""The acceptance test of bring-your-own-models: three models made offline with transformers, imported
with the CLI, served over real HTTP (seed API and V2 via tritonclient), answer as transformers does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton

from tests.imports.conftest import CliRunner
from tests.integration.conftest import RunningServer, running_server

QUESTION = "Who won the race in Paris?"
CONTEXT = "After a long and windy day on the road, Ann won the race in Paris, ahead of Bo and Cy."
TEXTS = ["what a lovely day for a walk", "the parcel arrived broken and late"]


@pytest.fixture(scope="module")
def served(
    sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, Path]]:
    from inferpack.cli import main  # the CLI, as a user runs it

    repo = tmp_path_factory.mktemp("byo") / "repo"
    mp = pytest.MonkeyPatch()
    for folder in sources.values():
        mp.setattr("sys.argv", ["inferpack", "models", "import", str(folder), "--repository", str(repo)])
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code in (0, None)
    mp.undo()
    with running_server(repo, dtype="fp32", inference_threads=1) as server:
        yield server, repo


def _transformers_qa(folder: Path) -> str:
    """transformers' own answer: best span (start <= end, under 30 tokens) inside the context."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    enc = tok(QUESTION, CONTEXT, return_tensors="pt", return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping")[0]
    with torch.inference_mode():
        out = model(**enc)
    context = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
    best, span = -float("inf"), (0, 0)
    for i in context:
        for j in context:
            if i <= j < i + 30:
                score = float(out.start_logits[0, i] + out.end_logits[0, j])
                if score > best:
                    best, span = score, (int(offsets[i][0]), int(offsets[j][1]))
    return CONTEXT[span[0] : span[1]]


def _transformers_labels(folder: Path) -> list[str]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    labels = []
    for text in TEXTS:
        with torch.inference_mode():
            logits = model(**tok(text, return_tensors="pt")).logits[0]
        labels.append(model.config.id2label[int(logits.argmax())])
    return labels


def _transformers_embeddings(folder: Path) -> np.ndarray[Any, Any]:
    """sentence-transformers' recipe by hand: mean over tokens, then L2 normalisation."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    rows = []
    for text in TEXTS:
        with torch.inference_mode():
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
        pooled = hidden.mean(dim=0)
        rows.append((pooled / pooled.norm()).numpy())
    return np.stack(rows)


def _v2(server: RunningServer, model: str, output: str, **inputs: list[str]) -> np.ndarray[Any, Any]:
    """One V2 inference with the real tritonclient (binary tensors, its default)."""
    tc = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensors = []
    for name, values in inputs.items():
        tensor = triton.InferInput(name, [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
        tensors.append(tensor)
    return tc.infer(model, tensors).as_numpy(output)  # type: ignore[no-any-return]


def _seed(server: RunningServer, model: str, *params: str) -> Any:
    query = dict(zip(("seq_0", "seq_1"), params, strict=False))
    response = httpx.get(f"{server.url}/predictions/{model}", params=query)
    assert response.status_code == 200, response.text
    return response.json()["detail"]


def test_imported_versions_record_their_check(served: tuple[RunningServer, Path]) -> None:
    from inferpack.repository.local import LocalRepository

    repo = LocalRepository(served[1])
    assert repo.model_ids() == ["all-MiniLM-L6-v2", "bert-qa", "distil-cls"]
    for model_id in repo.model_ids():
        manifest = repo.manifest(model_id)
        assert manifest.agreement is not None and manifest.agreement.passed
        assert manifest.format == "safetensors" and manifest.source is not None
    assert repo.manifest("distil-cls").labels == ["negative", "neutral", "positive"]
    assert repo.manifest("all-MiniLM-L6-v2").max_sequence_length == 256  # sentence_bert_config.json


def test_question_answering_matches_transformers(
    served: tuple[RunningServer, Path], sources: dict[str, Path]
) -> None:
    server, _ = served
    expected = _transformers_qa(sources["bert-qa"])
    assert expected  # a real span of the context
    assert _seed(server, "bert-qa", QUESTION, CONTEXT) == expected
    answer = _v2(server, "bert-qa", "answer", question=[QUESTION], context=[CONTEXT])[0].decode()
    assert answer == expected


def test_classification_matches_transformers(
    served: tuple[RunningServer, Path], sources: dict[str, Path]
) -> None:
    server, _ = served
    expected = _transformers_labels(sources["distil-cls"])
    assert [_seed(server, "distil-cls", t) for t in TEXTS] == expected
    assert [x.decode() for x in _v2(server, "distil-cls", "label", text=TEXTS)] == expected


def test_embeddings_match_sentence_transformers_recipe(
    served: tuple[RunningServer, Path], sources: dict[str, Path]
) -> None:
    server, _ = served
    expected = _transformers_embeddings(sources["all-MiniLM-L6-v2"])
    seed = np.array([_seed(server, "all-MiniLM-L6-v2", t) for t in TEXTS])
    v2 = _v2(server, "all-MiniLM-L6-v2", "embedding", text=TEXTS)
    for got in (seed, v2):
        assert got.shape == (len(TEXTS), 384)
        cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() >= 0.9999


def test_cli_import_prints_the_check(cli: CliRunner, sources: dict[str, Path], tmp_path: Path) -> None:
    result = cli(
        "models", "import", str(sources["bert-qa"]), "--repository", str(tmp_path / "r"), "--id", "x"
    )
    assert result.code == 0, result.err
    assert "passed" in result.out
    # Whole values on the 80 columns a captured console has (a table cut them to `questio…`, `1.0000…`).
    assert "…" not in result.out
    assert "question-answering" in result.out and "cosine 1.000000" in result.out
    assert str(sources["bert-qa"]) in "".join(result.out.split())
