"""A repository is readable as the umask says, and a file the server cannot read is a per-model error.

The container image runs as uid 10001, usually not the user who made the repository: files written 0600
(mkstemp, safetensors' save_file) made every prediction an HTTP 500 "internal error: PermissionError".
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from inferpack.imports.importer import Importer
from inferpack.imports.samples import make_folder
from inferpack.repository import LocalRepository
from inferpack.repository.copies import make_copies
from inferpack.repository.dedup import dedup_repository
from inferpack.repository.demo import make_demo_models
from inferpack.repository.files import current_umask, umask_mode
from inferpack.server.app import create_app
from inferpack.settings import ServerSettings

NOBODY = 65534
QUESTION = {"question": "Who went home?", "context": "Bob went home after the game."}


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every regular file under `root`, by relative path."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_umask_is_read_without_changing_it() -> None:
    with umask(0o027):
        assert current_umask() == 0o027 and umask_mode() == 0o640
        assert os.umask(0o027) == 0o027  # still what it was


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_of_a_repository_gets_the_umasks_mode(tmp_path: Path, mask: int, mode: int) -> None:
    with umask(mask):
        make_demo_models(tmp_path / "repo", 2, share_base=False, prefix="own")  # whole files, for dedup below
        make_demo_models(
            tmp_path / "repo", 1, prefix="shared"
        )  # manifests, shared weights, the shared tokenizer
        repo = LocalRepository(tmp_path / "repo")
        make_copies(repo, "shared-0000", ["copy-a", "copy-b"])
        report = dedup_repository(repo)
        source = make_folder(tmp_path / "source", "bert")  # `inferpack models import`
        Importer(repo).import_source(str(source), model_id="imported")
    assert report.models_rewritten >= 2  # dedup rewrote own files and wrote a shared one
    found = modes(tmp_path / "repo")
    assert any(p.endswith("manifest.json") for p in found) and any("_shared/weights" in p for p in found)
    assert any(p.startswith("copy-a/") and p.endswith(".safetensors") for p in found)
    assert any(p.startswith("imported/") and p.endswith(".safetensors") for p in found)
    assert {p: m for p, m in found.items() if m != mode} == {}


@contextmanager
def as_user(uid: int) -> Iterator[None]:
    """Run as `uid` for file access (root can switch back); without root, files chmod 0 are unreadable
    to this user already."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def world_readable_repo() -> Iterator[Path]:
    """A tiny-model repository in a folder any user can enter (pytest's tmp folders are root-only)."""
    root = Path(tempfile.mkdtemp(prefix="inferpack-perm-"))
    root.chmod(0o755)
    with umask(0o022):
        make_demo_models(root, 3, arch="tiny", prefix="m")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_unreadable_file_fails_its_model_by_name_and_others_keep_serving(
    world_readable_repo: Path,
) -> None:
    weights = world_readable_repo / "m-0000" / "1" / "model.safetensors"
    manifest = world_readable_repo / "m-0002" / "1" / "manifest.json"
    for path in (weights, manifest):
        path.chmod(0o000 if os.geteuid() != 0 else 0o600)
    settings = ServerSettings(repository=str(world_readable_repo), models=["m-0001"])
    with TestClient(create_app(settings)) as client:
        # m-0001 is loaded (as this user: the imports a load needs are done before switching users)
        assert client.post("/predictions/m-0001", json=QUESTION).status_code == 200
        with as_user(NOBODY):
            load = client.post("/v2/repository/models/m-0000/load")
            predict = client.post("/predictions/m-0000", json=QUESTION)
            unreadable_manifest = client.post("/predictions/m-0002", json=QUESTION)
            other = client.post("/predictions/m-0001", json=QUESTION)
            index = client.post("/v2/repository/index", json={}).json()
    for answer in (load, predict):
        assert answer.status_code == 503, answer.text
        assert f"cannot read {weights}" in answer.json()["error"]
    assert "uid" in load.json()["hint"]
    assert unreadable_manifest.status_code == 503
    assert str(manifest) in unreadable_manifest.json()["error"]
    assert "internal error" not in unreadable_manifest.text
    assert other.status_code == 200
    states = {m["name"]: m for m in index}
    assert states["m-0000"]["state"] == "FAILED" and str(weights) in states["m-0000"]["reason"]
    assert states["m-0001"]["state"] == "READY"
