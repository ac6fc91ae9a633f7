from __future__ import annotations

from pathlib import Path

import pytest

from inferpack.errors import InvalidModelId, ModelNotFound, RepositoryError
from inferpack.repository import LocalRepository, Manifest, validate_model_id
from inferpack.repository.manifest import write_manifest


@pytest.mark.parametrize("good", ["a", "A1", "tenant-42_v2.bert", "x" * 128])
def test_valid_ids(good: str) -> None:
    assert validate_model_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "../etc", "a/b", "/abs", "..", "a..b", ".hidden", "_shared", "x" * 129, "a b", "é"]
)
def test_invalid_ids(bad: str) -> None:
    with pytest.raises(InvalidModelId, match="invalid model id"):
        validate_model_id(bad)


def _version(repo: LocalRepository, model: str) -> Path:
    _, vdir = repo.new_version_dir(model)
    write_manifest(
        vdir / "manifest.json", Manifest(format="torchscript", task="feature-extraction", weights="model.pt")
    )
    return vdir


def test_layout_versions_and_listing(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path)
    v1 = _version(repo, "m1")
    _version(repo, "m1")
    _version(repo, "m2")
    (tmp_path / "_shared").mkdir()
    (tmp_path / "not-a-model").mkdir()  # no versions: ignored
    assert repo.model_ids() == ["m1", "m2"]
    assert repo.versions("m1") == [1, 2] and repo.latest_version("m1") == 2
    assert v1 == tmp_path.resolve() / "m1" / "1"
    assert repo.manifest("m1").format == "torchscript"
    with pytest.raises(ModelNotFound):
        repo.versions("m3")
    with pytest.raises(ModelNotFound, match="no version 9"):
        repo.version_dir("m1", 9)


def test_manifest_files_cannot_escape_the_repository(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path / "repo")
    vdir = _version(repo, "m")
    (tmp_path / "secret").write_text("x")
    (vdir / "tok.json").write_text("{}")
    assert repo.resolve_file("m", 1, "tok.json") == (vdir / "tok.json").resolve()
    with pytest.raises(RepositoryError, match="outside the repository"):
        repo.resolve_file("m", 1, "../../../secret")
    with pytest.raises(RepositoryError, match="does not exist"):
        repo.resolve_file("m", 1, "missing.json")


def test_missing_repository_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError) as info:
        LocalRepository(tmp_path / "nope").model_ids()
    assert info.value.hint and "models demo" in info.value.hint
    # a user with models of their own was pointed only at the demo zoo
    assert "inferpack models import SOURCE --repository DIR" in info.value.hint
    assert "--repository DIR" in info.value.hint.split(",")[0]


def test_a_url_is_not_taken_for_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Path("s3://bucket/prefix") is the relative folder "s3:/bucket/prefix", which writers created.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RepositoryError, match="is not a folder") as info:
        LocalRepository(Path("s3://bucket/prefix"))
    assert info.value.hint is not None and "models push" in info.value.hint
    assert list(tmp_path.iterdir()) == []
    assert LocalRepository(Path("C:/models")).root.name == "models"  # a drive letter is no scheme


def test_invalid_manifest_names_the_file(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path)
    vdir = _version(repo, "m")
    (vdir / "manifest.json").write_text('{"format": "onnx"}')
    with pytest.raises(RepositoryError, match=r"manifest\.json is not valid"):
        repo.manifest("m")
