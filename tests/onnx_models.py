"""Tiny QA models with an ONNX version each (compiled from v1 by `inferpack compile --format onnx`), for
the ONNX Runtime engine's tests: the compile tests, the tier's registry tests and the server tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferpack.repository.local import LocalRepository
from inferpack.runtime.tasks import TextInput

QUESTIONS = [
    TextInput("Which bridge did they repair?", "They repaired the old stone bridge near the mill first."),
    TextInput("Who?", "An engineer from the coast, after the spring floods, with a crew of nine."),
    TextInput("When?", "Tomorrow."),
]


def onnx_repo(root: Path, count: int = 2) -> tuple[LocalRepository, list[str]]:
    """`count` tiny QA models (2 layers, hidden 128): v1 safetensors, v2 ONNX compiled from v1."""
    from inferpack.compile.compiler import compile_model
    from inferpack.compile.options import CompileOptions
    from inferpack.repository.demo import make_demo_models

    ids = make_demo_models(root, count, arch="tiny", prefix="oqa")
    repo = LocalRepository(root)
    for model_id in ids:
        compile_model(repo, model_id, CompileOptions(output_format="onnx"))
    return repo, ids


def assert_same_answers(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same spans, and scores equal to fp32 rounding (ONNX Runtime fuses kernels differently)."""
    assert [(g["answer"], g["start"], g["end"]) for g in got] == [
        (e["answer"], e["start"], e["end"]) for e in expected
    ]
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-4)
