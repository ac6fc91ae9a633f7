"""Source folders made offline with transformers (session-wide) and a CLI runner with real exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from inferpack.imports.samples import copy_minilm, make_folder


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three acceptance sources: a BERT QA model (safetensors + tokenizer.json), a DistilBERT
    classifier (pytorch_model.bin + only vocab.txt), and the real all-MiniLM-L6-v2 folder."""
    root = tmp_path_factory.mktemp("sources")
    return {
        "bert-qa": make_folder(root / "bert-qa", "bert", "ForQuestionAnswering", seed=1),
        "distil-cls": make_folder(
            root / "distil-cls",
            "distilbert",
            "ForSequenceClassification",
            seed=2,
            weights="bin",
            tokenizer="vocab",
        ),
        "all-MiniLM-L6-v2": copy_minilm(root / "all-MiniLM-L6-v2"),
    }


@dataclass
class CliResult:
    code: int
    out: str
    err: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run `inferpack ARGS` in this process through the real entry point (`main`: exit status 2 on a
    refused input)."""
    from inferpack.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["inferpack", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, " ".join(captured.err.split()))

    return run


def tree(root: Path) -> dict[str, bytes]:
    """Every file under a folder with its content: to check that a refused import changed nothing."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} | {
        str(p.relative_to(root)) + "/": b"" for p in root.rglob("*") if p.is_dir()
    }
