"""`inferpack models gc`: unreferenced files of `_shared/` go, referenced and young ones stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.errors import RepositoryError
from inferpack.repository.dedup import store_shared_tensors
from inferpack.repository.gc import collect_garbage, collect_s3_garbage
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import MANIFEST_FILE, Manifest, write_manifest
from inferpack.repository.s3config import make_s3_client, parse_s3_uri
from inferpack.repository.s3push import push_repository
from inferpack.repository.sharing import store_shared_tokenizer

NOW = 1_000_000_000.0
HOUR = 3600.0


def _age(path: Path, seconds: float) -> None:
    os.utime(path, (NOW - seconds, NOW - seconds))


def _version(repo: LocalRepository, model_id: str, shared: list[Path], tokenizer: Path) -> int:
    version, vdir = repo.new_version_dir(model_id)
    manifest = Manifest(
        format="safetensors",
        task="feature-extraction",
        weights="model.safetensors",
        tokenizer=os.path.relpath(tokenizer, vdir),
        shared_weights=[os.path.relpath(p, vdir) for p in shared],
    )
    write_manifest(vdir / MANIFEST_FILE, manifest)
    return version


@pytest.fixture
def repo(tmp_path: Path) -> tuple[LocalRepository, dict[str, Path]]:
    """Two models: `a` v1 and v2 (v2 a bf16-style cast with its own shared file), `b` sharing v1's file."""
    repo = LocalRepository(tmp_path)
    source = tmp_path / "tok.json"
    source.write_text("{}")
    files = {
        "tok": store_shared_tokenizer(repo, source),
        "base": store_shared_tensors(repo, {"w": torch.ones(4, 4)}),
        "cast": store_shared_tensors(repo, {"w": torch.ones(4, 4, dtype=torch.bfloat16)}),
        "b-only": store_shared_tensors(repo, {"w": torch.zeros(8)}),
    }
    _version(repo, "a", [files["base"]], files["tok"])
    _version(repo, "a", [files["cast"]], files["tok"])
    _version(repo, "b", [files["base"], files["b-only"]], files["tok"])
    for path in files.values():
        _age(path, 2 * HOUR)
    return repo, files


def _rel(repo: LocalRepository, path: Path) -> str:
    return path.relative_to(repo.root.resolve()).as_posix()


def test_nothing_is_removed_while_every_file_is_referenced(
    repo: tuple[LocalRepository, dict[str, Path]],
) -> None:
    local, files = repo
    report = collect_garbage(local.root, clock=lambda: NOW)
    assert report.removed == []
    assert report.referenced == len(files)
    assert all(p.is_file() for p in files.values())


def test_deleted_versions_and_models_leave_garbage_that_is_collected(
    repo: tuple[LocalRepository, dict[str, Path]],
) -> None:
    local, files = repo
    local.remove_version("a", 2)  # the cast version: its cast shared file is now unreferenced
    (local.root / "b" / "1").joinpath(MANIFEST_FILE).unlink()  # model b removed (its folder left empty)
    size = files["cast"].stat().st_size + files["b-only"].stat().st_size

    dry = collect_garbage(local.root, dry_run=True, clock=lambda: NOW)
    assert sorted(r for r, _ in dry.removed) == sorted(
        [_rel(local, files["cast"]), _rel(local, files["b-only"])]
    )
    assert dry.bytes_removed == size
    assert files["cast"].is_file() and files["b-only"].is_file()  # a dry run removes nothing

    report = collect_garbage(local.root, clock=lambda: NOW)
    assert report.removed == dry.removed
    assert not files["cast"].exists() and not files["b-only"].exists()
    assert files["base"].is_file() and files["tok"].is_file()  # a v1 still names them


def test_young_unreferenced_files_are_spared(repo: tuple[LocalRepository, dict[str, Path]]) -> None:
    local, files = repo
    local.remove_version("a", 2)
    _age(files["cast"], 10 * 60)  # a writer may be about to write the manifest naming it
    report = collect_garbage(local.root, grace_s=HOUR, clock=lambda: NOW)
    assert report.removed == []
    assert report.kept_young == [_rel(local, files["cast"])]
    assert files["cast"].is_file()
    assert [r for r, _ in collect_garbage(local.root, grace_s=60, clock=lambda: NOW).removed] == [
        _rel(local, files["cast"])
    ]


def test_a_reused_shared_file_counts_as_fresh(repo: tuple[LocalRepository, dict[str, Path]]) -> None:
    local, files = repo
    local.remove_version("a", 2)
    again = store_shared_tensors(local, {"w": torch.ones(4, 4, dtype=torch.bfloat16)})  # a compile reuses it
    assert again == files["cast"]
    report = collect_garbage(local.root, grace_s=HOUR)  # the real clock: the file was just touched
    assert _rel(local, files["cast"]) in report.kept_young
    assert files["cast"].is_file()


def test_an_unreadable_manifest_stops_the_collection(repo: tuple[LocalRepository, dict[str, Path]]) -> None:
    local, files = repo
    local.remove_version("a", 2)
    (local.root / "b" / "1" / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(RepositoryError, match="cannot be read"):
        collect_garbage(local.root, clock=lambda: NOW)
    assert all(p.is_file() for p in files.values())


def test_cli_dry_run_lists_files_and_bytes(repo: tuple[LocalRepository, dict[str, Path]]) -> None:
    local, files = repo
    local.remove_version("a", 2)
    _age(files["cast"], 400 * 24 * HOUR)  # older than the CLI's grace period on the real clock
    result = CliRunner().invoke(app, ["models", "gc", "--repository", str(local.root), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would remove {_rel(local, files['cast'])}" in result.output
    assert files["cast"].is_file()
    result = CliRunner().invoke(app, ["models", "gc", "--repository", str(local.root)])
    assert result.exit_code == 0, result.output
    assert not files["cast"].exists()


def test_the_import_index_stays_and_a_crashed_writers_temp_file_goes(
    repo: tuple[LocalRepository, dict[str, Path]],
) -> None:
    local, files = repo
    index = files["base"].parent / "groups.jsonl"  # the import's digest index: named by no manifest
    index.write_text('{"digest": "abc"}\n')
    temp = files["base"].parent / ".tmp-12345.safetensors"  # a writer killed before its rename
    temp.write_bytes(b"x" * 10)
    _age(index, 2 * HOUR)
    _age(temp, 2 * HOUR)
    report = collect_garbage(local.root, clock=lambda: NOW)
    assert report.removed == [(_rel(local, temp), 10)]
    assert index.is_file()


def test_s3_collection_after_a_version_is_deleted_in_the_bucket(
    repo: tuple[LocalRepository, dict[str, Path]], bucket: str
) -> None:
    local, files = repo
    uri = f"s3://{bucket}"
    push_repository(local.root, uri)
    location, client = parse_s3_uri(uri), make_s3_client()
    for obj in client.list_objects_v2(Bucket=location.bucket, Prefix=location.key("a/2/"))["Contents"]:
        client.delete_object(Bucket=location.bucket, Key=obj["Key"])  # version a/2 deleted in the bucket
    later = time.time() + 2 * HOUR  # the objects were just uploaded: past the grace period by then
    cast = _rel(local, files["cast"])

    assert collect_s3_garbage(uri, grace_s=HOUR).kept_young == [cast]  # just written: spared
    dry = collect_s3_garbage(uri, grace_s=HOUR, dry_run=True, clock=lambda: later)
    assert dry.removed == [(cast, files["cast"].stat().st_size)]
    report = collect_s3_garbage(uri, grace_s=HOUR, clock=lambda: later)
    assert report.removed == dry.removed and report.referenced == 3
    left = {location.relative(o["Key"]) for o in client.list_objects_v2(Bucket=location.bucket)["Contents"]}
    assert cast not in left
    assert {_rel(local, files[k]) for k in ("base", "b-only", "tok")} <= left
