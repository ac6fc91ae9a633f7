"""Bulk import from a list: progress, resume after an interruption, identical layers stored once."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferpack.imports.bulk import import_list, read_list
from inferpack.imports.importer import Importer
from inferpack.imports.samples import make_finetunes, make_folder
from inferpack.repository.local import LocalRepository
from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput
from tests.imports.conftest import CliRunner


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture
def finetunes(tmp_path: Path) -> tuple[Path, list[Path]]:
    base = make_folder(tmp_path / "base", "bert", "ForQuestionAnswering", num_hidden_layers=4)
    folders = make_finetunes(base, tmp_path / "src", 6)
    csv = tmp_path / "src" / "models.csv"
    lines = ["id,source,task"] + [f"{f.name},{f.name},question-answering" for f in folders]
    csv.write_text("\n".join(lines) + "\n")
    return csv, folders


class Interrupted(Exception):
    pass


def test_interrupted_bulk_import_resumes_and_shares_identical_layers(
    finetunes: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    csv, folders = finetunes
    repo = LocalRepository(tmp_path / "repo")
    rows = read_list(csv)
    done: list[str] = []

    def stop_after_three(row: object) -> None:
        done.append(str(row))
        if len(done) == 3:
            raise Interrupted  # as Ctrl-C would, between two models

    with pytest.raises(Interrupted):
        import_list(Importer(repo), rows, base=csv.parent, progress=stop_after_three)
    assert repo.model_ids() == [f.name for f in folders[:3]]

    report = import_list(Importer(repo), rows, base=csv.parent)
    assert (len(report.skipped), len(report.imported), report.failed) == (3, 3, [])
    assert all(repo.versions(f.name) == [1] for f in folders)  # resumed: nothing imported twice

    # Everything but the top layer and the head is shared: stored once, not six times.
    inputs = sum(_size(f) for f in folders)
    own = sum((repo.version_dir(f.name) / "model.safetensors").stat().st_size for f in folders)
    assert own < inputs / 2
    assert _size(repo.root) < inputs / 2
    manifest = repo.manifest(folders[-1].name)
    assert manifest.shared_weights and manifest.agreement is not None and manifest.agreement.passed
    # and the shared layout loads and answers as the importer checked
    item = [TextInput("Who won?", "Ann won the race in Paris.")]
    assert load_model(repo, folders[-1].name, dtype="fp32").predict(item)[0]["answer"]


def test_cli_bulk_reports_failures_and_exits_2(
    cli: CliRunner, finetunes: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    csv, folders = finetunes
    (folders[1] / "config.json").unlink()
    repo = tmp_path / "repo"
    result = cli("models", "import", "--from-list", str(csv), "--repository", str(repo))
    assert result.code == 2
    assert "imported 5, already imported 0, failed 1" in " ".join(result.out.split())
    assert folders[1].name in result.err and "config.json" in result.err
    again = cli("models", "import", "--from-list", str(csv), "--repository", str(repo))
    assert "imported 0, already imported 5, failed 1" in " ".join(again.out.split())


def test_list_errors_name_the_line(tmp_path: Path) -> None:
    from inferpack.errors import ImportFailed

    csv = tmp_path / "l.csv"
    csv.write_text("id,source\na,./a\nb,./b,translation\n")
    with pytest.raises(ImportFailed, match="line 3: unknown task 'translation'"):
        read_list(csv)
    csv.write_text("a,./a\na,./b\n")
    with pytest.raises(ImportFailed, match="line 2: id 'a' appears twice"):
        read_list(csv)
