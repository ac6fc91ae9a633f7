"""Shared fixtures: a small demo repository (real MiniLM weights) made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The `container` tests' fixtures (podman ready, the image built once per session): tests/containers.py.
from tests.containers import inferpack_image, podman_ready  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The compute dtype numeric tests run in. Unset: both, on every machine, so the bf16 path (the default
# where the CPU computes bf16 natively) and the fp32 path (the default elsewhere) are both exercised.
# INFERPACK_TEST_DTYPE=fp32|bf16 forces one, and also sets the dtype of the shared test servers.
FORCED_DTYPE = os.environ.get("INFERPACK_TEST_DTYPE") or None
if FORCED_DTYPE not in (None, "fp32", "bf16"):
    raise pytest.UsageError(f"INFERPACK_TEST_DTYPE must be fp32 or bf16, got {FORCED_DTYPE!r}")
COMPUTE_DTYPES = [FORCED_DTYPE] if FORCED_DTYPE else ["fp32", "bf16"]
SERVER_DTYPE = FORCED_DTYPE or "auto"


@pytest.fixture(scope="session", autouse=True)
def packed_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the servers the tests start share their packed weights (server.packed_weights_dir): a directory
    of the test session's, not the user's cache."""
    path = tmp_path_factory.mktemp("packed-weights")
    os.environ.setdefault("INFERPACK_SERVER__PACKED_WEIGHTS_DIR", str(path))
    return path


@pytest.fixture(params=COMPUTE_DTYPES)
def compute_dtype(request: pytest.FixtureRequest) -> str:
    """Each compute dtype the numeric tests must hold in (see COMPUTE_DTYPES)."""
    return str(request.param)


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
