"""Shared fixtures: a small demo repository (real MiniLM weights) made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 QA models, 1 classifier, 1 embedder, and one model whose weights file is corrupt."""
    from inferpack.repository.demo import make_demo_models

    root = tmp_path_factory.mktemp("repo")
    make_demo_models(root, 2, task="question-answering", prefix="qa")
    make_demo_models(root, 1, task="text-classification", prefix="cls")
    make_demo_models(root, 1, task="feature-extraction", prefix="emb")
    make_demo_models(root, 1, task="question-answering", prefix="broken")
    (root / "broken-0000" / "1" / "model.safetensors").write_bytes(b"not a safetensors file")
    return root
