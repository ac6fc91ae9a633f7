"""`inferpack compile` through the real CLI app: help, one model, --all, and a clear refusal."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.errors import CompileError

from .conftest import RepoFactory

runner = CliRunner()


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_help_lists_the_options() -> None:
    result = runner.invoke(app, ["compile", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = _plain(result.output)
    for flag in (
        "--repository",
        "--target",
        "--dtype",
        "--quantize",
        "--version",
        "--all",
        "--force",
        "--format",
    ):
        assert flag in text
    assert "cpu|cuda|neuron" in text


def test_compiles_one_model_and_prints_the_table(repo_copy: RepoFactory) -> None:
    repo = repo_copy("emb-0000")
    result = runner.invoke(
        app,
        ["compile", "emb-0000", "--repository", str(repo.root), "--quantize", "int8"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    row = next(line for line in text.splitlines() if "emb-0000" in line)
    cells = row.split()  # model, new, from, variant, max diff, cosine, answers, check, secs
    assert cells[:4] == ["emb-0000", "v2", "v1", "int8"] and cells[7] == "passed"
    assert 0.5 < float(cells[5]) < 0.999  # mean cosine to eager fp32: int8 loses some, never most
    assert cells[6] == "-"  # embeddings have no discrete answer to compare
    assert repo.manifest("emb-0000", 2).quantization == "int8-dynamic"


@pytest.mark.slow  # two full compiles through the CLI: tens of seconds on a shared 2-core machine
def test_all_compiles_every_model(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000", "cls-0000")
    result = runner.invoke(
        app,
        ["compile", "--all", "--repository", str(repo.root), "--dtype", "fp32"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "compiling" in _plain(result.stderr)  # the progress bar
    for model_id in ("qa-0000", "cls-0000"):
        row = next(line for line in _plain(result.stdout).splitlines() if model_id in line)
        assert "fp32" in row and "passed" in row and "100%" in row  # fp32: every answer unchanged
        assert repo.manifest(model_id, 2).format == "torchscript"


def test_neither_model_nor_all_is_a_usage_error(repo_copy: RepoFactory) -> None:
    result = runner.invoke(app, ["compile", "--repository", "nowhere"])
    assert result.exit_code == 2
    assert "--all" in _plain(result.output)


def test_a_refused_compile_surfaces_the_compile_error(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000")
    result = runner.invoke(app, ["compile", "qa-0000", "--repository", str(repo.root), "--target", "neuron"])
    # main() turns InferpackError into a one-line message and exit status 2; the app itself raises it.
    assert isinstance(result.exception, CompileError)
    assert "Neuron SDK" in result.exception.message
    assert repo.versions("qa-0000") == [1]


def test_failure_reasons_under_the_table_keep_their_brackets(
    repo_copy: RepoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Printed as rich markup, "[batch, tokens]" in a reason vanished.
    import inferpack.compile.compiler as compiler

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise CompileError("returns [batch, tokens] instead of [batch, labels]")

    monkeypatch.setattr(compiler, "compile_model", refuse)
    repo = repo_copy("cls-0000")
    result = runner.invoke(app, ["compile", "--all", "--repository", str(repo.root)], env={"COLUMNS": "200"})
    assert isinstance(result.exception, CompileError)  # "1 of 1 models failed" (main() prints it)
    assert "cls-0000: returns [batch, tokens] instead of [batch, labels]" in _plain(result.stderr)
