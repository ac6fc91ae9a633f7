"""`inferpack compile --format safetensors`: weights stored in bf16, checked, served without a copy."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.compile import agreement
from inferpack.compile.agreement import Tolerance
from inferpack.compile.checks import source_version
from inferpack.compile.compiler import compile_model
from inferpack.compile.options import CompileOptions
from inferpack.errors import CompileError
from inferpack.runtime.versions import choose_version

from .conftest import RepoFactory

runner = CliRunner()


def _dtypes(path: str) -> set[torch.dtype]:
    with safe_open(path, framework="pt") as fh:
        return {fh.get_tensor(name).dtype for name in fh.keys()}  # noqa: SIM118


def test_the_cli_stores_checked_bf16_weights_that_bf16_servers_choose(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000")
    args = [
        "compile",
        "qa-0000",
        "--repository",
        str(repo.root),
        "--dtype",
        "bf16",
        "--format",
        "safetensors",
    ]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(
        line for line in re.sub(r"\x1b\[[0-9;]*m", "", result.output).splitlines() if "qa-0000" in line
    )
    assert row.split()[:4] == ["qa-0000", "v2", "v1", "bf16"] and "passed" in row
    cast, source = repo.manifest("qa-0000", 2), repo.manifest("qa-0000", 1)
    assert (cast.format, cast.dtype, cast.compiled_from) == ("safetensors", "bf16", 1)
    assert cast.agreement is not None and cast.agreement.passed and cast.agreement.cosine > 0.999
    own = repo.resolve_file("qa-0000", 2, cast.weights)
    assert _dtypes(str(own)) == {torch.bfloat16}
    # the base is cast once into its own content-named shared file, half the size of the fp32 one
    [new_base] = [repo.resolve_file("qa-0000", 2, rel) for rel in cast.shared_weights]
    [old_base] = [repo.resolve_file("qa-0000", 1, rel) for rel in source.shared_weights]
    assert new_base != old_base and new_base.parent == old_base.parent
    assert _dtypes(str(new_base)) == {torch.bfloat16}
    assert new_base.stat().st_size < 0.51 * old_base.stat().st_size
    assert choose_version(repo, "qa-0000", "cpu", torch.bfloat16) == 2
    assert choose_version(repo, "qa-0000", "cpu", torch.float32) == 1
    # the fp32 version stays the source of every later compile and the reference of its check
    assert source_version(repo, "qa-0000", None) == 1
    with pytest.raises(CompileError, match="compile from an fp32 safetensors version"):
        source_version(repo, "qa-0000", 2)


def test_a_failed_check_stores_no_version(repo_copy: RepoFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = repo_copy("emb-0000")
    monkeypatch.setitem(agreement.TOLERANCES, "bf16", Tolerance(relative=1e-3, min_cosine=1.5))
    with pytest.raises(CompileError, match="disagrees with eager fp32"):
        compile_model(repo, "emb-0000", CompileOptions(dtype="bf16", output_format="safetensors"))
    assert repo.versions("emb-0000") == [1]
    assert sorted(p.name for p in (repo.root / "emb-0000").iterdir()) == ["1"]
