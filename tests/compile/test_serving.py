"""A compiled version must serve: `load_model` of it answers like the eager version it came from."""

from __future__ import annotations

import numpy as np
import pytest

from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput

from .conftest import MODELS, Compiled

CONTEXTS = [
    "The museum opens at nine and closes at five, except on Mondays when it stays shut all day.",
    "Rain.",
    "After a long debate the council approved the new tram line, which will link the harbour, the "
    "university and the airport by 2031 at a cost of 1.2 billion euros.",
]


def _items(task: str) -> list[TextInput]:
    if task == "question-answering":
        questions = ["When does the museum close?", "What is the weather?", "What will the line link?"]
        return [TextInput(q, c) for q, c in zip(questions, CONTEXTS, strict=True)]
    return [TextInput(c) for c in CONTEXTS]


@pytest.mark.parametrize("task", list(MODELS))
def test_compiled_version_answers_like_eager(fp32_compiled: Compiled, task: str) -> None:
    repo, model_id = fp32_compiled.repo, MODELS[task]
    eager = load_model(repo, model_id, 1, dtype="fp32")
    traced = load_model(repo, model_id, fp32_compiled.results[task].version)
    assert traced.manifest.format == "torchscript"
    assert traced.hidden_size == eager.hidden_size == 384
    items = _items(task)
    # The whole batch (padded to its longest) and each item alone (no padding): both must match.
    for batch in (items, *([item] for item in items)):
        expected, got = eager.predict(batch), traced.predict(batch)
        for e, g in zip(expected, got, strict=True):
            if task == "question-answering":
                assert (g["answer"], g["start"], g["end"]) == (e["answer"], e["start"], e["end"])
                assert g["score"] == pytest.approx(e["score"], rel=1e-4)
            elif task == "text-classification":
                assert g["label"] == e["label"]
                np.testing.assert_allclose(g["probabilities"], e["probabilities"], rtol=1e-4, atol=1e-6)
            elif task == "token-classification":
                spans = [(x["entity_group"], x["word"], x["start"], x["end"]) for x in g["entities"]]
                assert spans == [(x["entity_group"], x["word"], x["start"], x["end"]) for x in e["entities"]]
                scores = [x["score"] for x in e["entities"]]
                assert [x["score"] for x in g["entities"]] == pytest.approx(scores, rel=1e-4)
            else:
                np.testing.assert_allclose(g["embedding"], e["embedding"], rtol=1e-4, atol=1e-6)


def test_bf16_version_serves_close_answers(qa_variants: Compiled) -> None:
    repo = qa_variants.repo
    eager = load_model(repo, "qa-0000", 1, dtype="fp32")
    traced = load_model(repo, "qa-0000", qa_variants.results["bf16"].version)
    assert str(traced.dtype) == "torch.bfloat16"
    items = _items("question-answering")
    for e, g in zip(eager.predict(items), traced.predict(items), strict=True):
        assert g["score"] == pytest.approx(e["score"], rel=0.1)
