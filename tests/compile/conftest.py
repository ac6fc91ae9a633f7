"""Fixtures for compile tests: one tiny demo repository (real MiniLM weights), and cheap private copies.

Copies hard-link the source files: compiling only ever adds new version folders and replaces manifests
atomically (a new inode), so a test's copy can never change the shared originals.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from inferpack.repository.local import LocalRepository

if TYPE_CHECKING:
    from inferpack.compile.checks import CompileResult

MODELS = {
    "question-answering": "qa-0000",
    "text-classification": "cls-0000",
    "token-classification": "ner-0000",
    "feature-extraction": "emb-0000",
}


@pytest.fixture(scope="session")
def compile_source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model per task, version 1 each (safetensors)."""
    from inferpack.repository.demo import make_demo_models

    root = tmp_path_factory.mktemp("compile-src")
    make_demo_models(root, 1, task="question-answering", prefix="qa")
    make_demo_models(root, 1, task="text-classification", prefix="cls")
    make_demo_models(root, 1, task="token-classification", prefix="ner")
    make_demo_models(root, 1, task="feature-extraction", prefix="emb")
    return root


RepoFactory = Callable[..., LocalRepository]


@dataclass(frozen=True)
class Compiled:
    """A repository and the compile results made in it, by key (task or variant)."""

    repo: LocalRepository
    results: dict[str, CompileResult]


@pytest.fixture
def repo_copy(compile_source_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> RepoFactory:
    """`repo_copy("qa-0000", ...)`: a private repository holding just those models (and `_shared/`)."""

    def make(*model_ids: str) -> LocalRepository:
        return _copy(compile_source_repo, tmp_path_factory.mktemp("compile-repo"), model_ids)

    return make


def _copy(source: Path, dest: Path, model_ids: tuple[str, ...]) -> LocalRepository:
    for name in ("_shared", *model_ids):
        shutil.copytree(source / name, dest / name, copy_function=os.link)
    return LocalRepository(dest)


@pytest.fixture(scope="session")
def fp32_compiled(compile_source_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """Every task's model compiled once to fp32 TorchScript for cpu (shared by tests that only read)."""
    from inferpack.compile.compiler import compile_model
    from inferpack.compile.options import CompileOptions

    repo = _copy(compile_source_repo, tmp_path_factory.mktemp("fp32"), tuple(MODELS.values()))
    return Compiled(repo, {task: compile_model(repo, mid, CompileOptions()) for task, mid in MODELS.items()})


@pytest.fixture(scope="session")
def qa_variants(compile_source_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    """The QA model compiled to bf16 and int8 in one repository (versions 2, 3); fp32 is in fp32_compiled."""
    from inferpack.compile.compiler import compile_model
    from inferpack.compile.options import CompileOptions

    repo = _copy(compile_source_repo, tmp_path_factory.mktemp("variants"), ("qa-0000",))
    options = {
        "bf16": CompileOptions(dtype="bf16"),
        "int8": CompileOptions(quantize="int8"),
    }
    return Compiled(repo, {name: compile_model(repo, "qa-0000", o) for name, o in options.items()})
