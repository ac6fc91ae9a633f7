"""The S3 cache's size cap: least-recently-used whole versions go, the one in use stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inferpack.errors import RepositoryError
from inferpack.repository.s3cache import cached_versions, evict_to_cap, folder_bytes
from inferpack.repository.s3config import default_cache_max_bytes

RECORD = ".inferpack-sync.json"


def _version(root: Path, model: str, version: int, size: int, used: float) -> Path:
    path = root / model / str(version)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * size)
    (path / RECORD).write_text("{}")
    os.utime(path / RECORD, (used, used))
    return path


def test_evicts_least_recently_used_versions_until_under_the_cap(tmp_path: Path) -> None:
    old = _version(tmp_path, "a", 1, 1000, used=100)
    mid = _version(tmp_path, "b", 1, 1000, used=200)
    new = _version(tmp_path, "c", 1, 1000, used=300)
    just_synced = _version(tmp_path, "d", 1, 1000, used=50)  # oldest mark, but the one being asked for
    removed = evict_to_cap(tmp_path, RECORD, cap_bytes=2100, keep=just_synced)
    assert removed == [old, mid]
    assert not old.exists() and not mid.exists() and new.exists() and just_synced.exists()
    assert folder_bytes(tmp_path) <= 2100
    assert [v.path for v in cached_versions(tmp_path, RECORD)] == [just_synced, new]
    # no hidden leftovers of the removal
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []


def test_nothing_goes_while_under_the_cap_and_the_version_in_use_always_stays(tmp_path: Path) -> None:
    one = _version(tmp_path, "a", 1, 1000, used=100)
    assert evict_to_cap(tmp_path, RECORD, cap_bytes=10_000, keep=one) == []
    big = _version(tmp_path, "b", 1, 5000, used=200)
    assert evict_to_cap(tmp_path, RECORD, cap_bytes=2000, keep=big) == [one]
    assert big.exists()  # over the cap alone: kept (a warning says so), since it is the one asked for


def test_incomplete_versions_are_neither_counted_as_cached_nor_evicted(tmp_path: Path) -> None:
    done = _version(tmp_path, "a", 1, 100, used=100)
    partial = tmp_path / "a" / ".sync-2-xyz"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x" * 100)
    assert [v.path for v in cached_versions(tmp_path, RECORD)] == [done]


def test_cap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERPACK_S3_CACHE_MAX_MB", raising=False)
    assert default_cache_max_bytes() is None
    monkeypatch.setenv("INFERPACK_S3_CACHE_MAX_MB", "2")
    assert default_cache_max_bytes() == 2 * 1024 * 1024
    monkeypatch.setenv("INFERPACK_S3_CACHE_MAX_MB", "lots")
    with pytest.raises(RepositoryError):
        default_cache_max_bytes()


def test_a_full_disk_evicts_least_recently_used_versions_until_the_new_one_fits(tmp_path: Path) -> None:
    from inferpack.repository.s3cache import evict_for_space

    old = _version(tmp_path, "a", 1, 1000, used=100)
    mid = _version(tmp_path, "b", 1, 1000, used=200)
    new = _version(tmp_path, "c", 1, 1000, used=300)
    asked = tmp_path / "d" / "1"  # being synced: never a victim, even if it looks old
    asked.mkdir(parents=True)

    def free(_root: Path) -> int:  # a disk with 500 bytes free besides what the cache holds
        return 500 + 3000 - sum(folder_bytes(v) for v in (old, mid, new))

    assert evict_for_space(tmp_path, RECORD, 1800, keep=asked, free=free) == [old, mid]
    assert new.is_dir() and not old.exists() and not mid.exists()
    # nothing left to evict but the one asked for: an empty answer, the caller reports the full disk
    assert evict_for_space(tmp_path, RECORD, 10_000, keep=new, free=free) == []
    assert new.is_dir()


def test_s3_attempts_are_bounded_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferpack.repository.s3config import ATTEMPTS_ENV, max_attempts

    monkeypatch.delenv(ATTEMPTS_ENV, raising=False)
    assert max_attempts() == 3
    monkeypatch.setenv(ATTEMPTS_ENV, "1")
    assert max_attempts() == 1
    for bad in ("0", "11", "three"):
        monkeypatch.setenv(ATTEMPTS_ENV, bad)
        with pytest.raises(RepositoryError, match=ATTEMPTS_ENV):
            max_attempts()
