"""Classifier scores as transformers' text-classification pipeline gives them: a softmax over the labels
of a single-label checkpoint, a sigmoid per label of a multi-label or one-label checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from inferpack.imports.importer import Importer
from inferpack.imports.samples import make_folder
from inferpack.repository.local import LocalRepository
from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput

TEXT = "you are awful and I will find you"

CASES: dict[str, tuple[dict[str, Any], str]] = {
    # name: (config changes, the pipeline's function)
    "single": ({"num_labels": 3}, "softmax"),
    "multi": ({"num_labels": 3, "problem_type": "multi_label_classification"}, "sigmoid"),
    "one-label": ({"num_labels": 1}, "sigmoid"),  # a softmax over one label was always 1.0
}


@pytest.mark.parametrize("case", list(CASES))
def test_scores_follow_the_checkpoint_like_the_pipeline(case: str, tmp_path: Path) -> None:
    changes, function = CASES[case]
    folder = make_folder(tmp_path / case, "bert", "ForSequenceClassification", seed=3, **changes)
    repo = LocalRepository(tmp_path / "repo")
    Importer(repo).import_source(str(folder))
    assert repo.manifest(case).class_scores == function

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        logits = model(**AutoTokenizer.from_pretrained(folder)(TEXT, return_tensors="pt")).logits[0]
    expected = (torch.sigmoid(logits) if function == "sigmoid" else torch.softmax(logits, -1)).numpy()

    got = load_model(repo, case, dtype="fp32").predict([TextInput(TEXT)])[0]
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
    assert got["score"] == pytest.approx(float(expected.max()), abs=1e-5)
