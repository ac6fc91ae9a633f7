"""Refused imports: one clear error naming the file and what to do, exit status 2, repository unchanged."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.imports.conftest import CliRunner, tree


@pytest.fixture(scope="module")
def base_repo(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository that already holds one imported model (so `_shared/` exists too)."""
    from inferpack.imports.importer import Importer
    from inferpack.repository.local import LocalRepository

    root = tmp_path_factory.mktemp("bad") / "repo"
    Importer(LocalRepository(root)).import_source(str(sources["bert-qa"]))
    return root


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))

    return edit


def _truncate(name: str) -> Callable[[Path], None]:
    def cut(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return cut


def _sentencepiece_only(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "spm.model").write_bytes(b"\x0a\x05not a real model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))


def _unconvertible(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text('{"a": 0}')
    (folder / "merges.txt").write_text("not merges\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NoSuchTokenizer"}))


CASES: dict[str, tuple[str, Callable[[Path], None], tuple[str, ...], tuple[str, ...]]] = {
    # name: (source model, change, extra args, words the message must hold)
    "no config": ("bert-qa", lambda f: (f / "config.json").unlink(), (), ("config.json", "save_pretrained")),
    "weights unlike config": (
        "bert-qa",
        _edit_config(intermediate_size=80),
        (),
        ("model.safetensors", "do not match config.json", "in the file", "by config"),
    ),
    "unsupported architecture": (
        "bert-qa",
        _edit_config(architectures=["BertForMaskedLM"]),
        (),
        ("config.json", "BertForMaskedLM", "supported", "--task"),
    ),
    "no architectures entry": (
        "bert-qa",
        _edit_config(architectures=None),
        (),
        ("config.json has no architectures entry", "--task", "model.save_pretrained"),
    ),
    "task without its head": (
        "all-MiniLM-L6-v2",
        lambda f: None,
        ("--task", "question-answering"),
        ("do not match config.json", "qa_outputs", "feature-extraction"),
    ),
    # without sentencepiece installed: "needs the Python package(s) ..."; with it: "cannot be converted"
    "sentencepiece not convertible": ("bert-qa", _sentencepiece_only, (), ("spm.model", "tokenizer.json")),
    "tokenizer not convertible": ("bert-qa", _unconvertible, (), ("cannot be converted", "merges.txt")),
    "exists with --no-new-version": ("bert-qa", lambda f: None, ("--no-new-version",), ("already exists",)),
    "truncated safetensors": (
        "bert-qa",
        _truncate("model.safetensors"),
        (),
        ("model.safetensors", "truncated"),
    ),
    "truncated pytorch_model.bin": (
        "distil-cls",
        _truncate("pytorch_model.bin"),
        (),
        ("pytorch_model.bin", "truncated"),
    ),
    "truncated tokenizer.json": ("bert-qa", _truncate("tokenizer.json"), (), ("tokenizer.json", "truncated")),
    "truncated config.json": ("bert-qa", _truncate("config.json"), (), ("config.json", "truncated")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_changes_nothing(
    case: str, cli: CliRunner, sources: dict[str, Path], base_repo: Path, tmp_path: Path
) -> None:
    model, change, args, words = CASES[case]
    folder = tmp_path / "bert-qa"  # the id of the model already in the repository
    shutil.copytree(sources[model], folder)
    change(folder)
    repo = tmp_path / "repo"
    shutil.copytree(base_repo, repo)
    before = tree(repo)
    result = cli("models", "import", str(folder), "--repository", str(repo), *args)
    assert result.code == 2, result.out + result.err
    assert result.err.count("error:") == 1
    for word in words:  # rich wraps long lines anywhere: compare without white space
        assert word.replace(" ", "") in result.err.replace(" ", ""), (word, result.err)
    assert tree(repo) == before


class _TokenScores(torch.nn.Module):
    """A TorchScript candidate of the wrong contract: [batch, tokens] scores, no QA pair per token."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return (ids * mask + types).float()


def test_messages_in_brackets_reach_the_terminal_whole(
    cli: CliRunner, sources: dict[str, Path], tmp_path: Path
) -> None:
    # The hint names shapes such as [batch, tokens, 2]; printed as rich markup they vanished ("returns
    # QA logits,  class logits or  embeddings").
    scripted = torch.jit.script(_TokenScores())
    path = tmp_path / "scores.pt"
    scripted.save(str(path))  # type: ignore[no-untyped-call]
    tokenizer = str(sources["bert-qa"] / "tokenizer.json")
    args = ("--task", "question-answering", "--tokenizer", tokenizer, "--repository", str(tmp_path / "r"))
    result = cli("models", "import", str(path), *args)
    assert result.code == 2, result.out + result.err
    assert "[batch, tokens, 2] QA logits, [batch, labels] class logits" in result.err, result.err


def test_a_folder_name_that_is_no_model_id_asks_for_id(
    cli: CliRunner, sources: dict[str, Path], tmp_path: Path
) -> None:
    # The user gave no id: "invalid model id 'My Model (v2)'" alone did not say where it came from.
    folder = shutil.copytree(sources["bert-qa"], tmp_path / "My Model (v2)")
    result = cli("models", "import", str(folder), "--repository", str(tmp_path / "repo"))
    assert result.code == 2
    assert "defaults to the source's name 'My Model (v2)'" in result.err and "--id" in result.err
    assert not (tmp_path / "repo").exists()


def test_refused_import_into_a_new_repository_leaves_no_folder(
    cli: CliRunner, sources: dict[str, Path], tmp_path: Path
) -> None:
    folder = shutil.copytree(sources["bert-qa"], tmp_path / "m")
    (folder / "config.json").unlink()
    result = cli("models", "import", str(folder), "--repository", str(tmp_path / "new-repo"))
    assert result.code == 2 and not (tmp_path / "new-repo").exists()


def test_unknown_task_and_bad_id_are_usage_errors(
    cli: CliRunner, sources: dict[str, Path], tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    assert (
        cli("models", "import", str(sources["bert-qa"]), "--repository", repo, "--task", "translation").code
        == 2
    )
    bad_id = cli("models", "import", str(sources["bert-qa"]), "--repository", repo, "--id", "../x")
    assert bad_id.code == 2 and "invalid model id" in bad_id.err
    assert not (tmp_path / "repo").exists()


def test_models_list_shows_invalid_folders_with_reasons(
    cli: CliRunner, base_repo: Path, tmp_path: Path
) -> None:
    repo = shutil.copytree(base_repo, tmp_path / "repo")
    (repo / "no-versions").mkdir()
    (repo / "bad id!").mkdir()
    (repo / "bert-qa" / "2").mkdir()  # an unfinished version
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "manifest.json").write_text("{not json")
    (repo / ".import-0123456789ab").mkdir()
    shutil.copytree(repo / "bert-qa", repo / "tenant-0001-bert-qa")  # a longer id widens the table
    result = cli("models", "list", "--repository", str(repo))
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "bert-qa" in text
    assert "tenant-0001-bert-qa" in "".join(result.out.split())
    assert "question-answering" in result.out  # whole on the captured console's 80 columns
    for name, reason in [
        ("no-versions", "no version folder"),
        ("bad id!", "not a valid model id"),
        ("bert-qa/2", "no manifest.json"),
        ("broken/1", "not valid"),
        (".import-0123456789ab", "interrupted import"),
    ]:
        assert name in text and reason in text, (name, reason)


def test_help_names_every_option(cli: CliRunner) -> None:
    result = cli("models", "import", "--help")
    assert result.code == 0
    for option in (
        "--repository",
        "--id",
        "--task",
        "--tokenizer",
        "--no-new-version",
        "--from-list",
        "--share",
    ):
        assert option in result.out
