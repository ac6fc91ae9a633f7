"""Keep the S3 read-through cache within a size cap: least-recently-used whole versions are removed.

A synced version folder holds a sync record; its modification time is the version's last use (the
repository touches it on every lookup). Eviction removes the record first, so a version being evicted is
never taken as complete, then the folder. A model already loaded keeps its weights: its files stay
readable to the process that mapped them after they are unlinked. Files under `_shared/` are counted but
never evicted (any version may name them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedVersion:
    """One complete version in the cache: its folder, bytes on disk and last use (epoch seconds)."""

    path: Path
    size: int
    last_used: float


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 when it is gone)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


def cached_versions(root: Path, record: str) -> list[CachedVersion]:
    """Every complete version (`<root>/<model>/<version>/<record>`), least recently used first."""
    out = []
    for marker in root.glob(f"*/*/{record}"):
        try:
            used = marker.stat().st_mtime
        except FileNotFoundError:
            continue
        out.append(CachedVersion(marker.parent, folder_bytes(marker.parent), used))
    return sorted(out, key=lambda v: (v.last_used, str(v.path)))


def evict_to_cap(root: Path, record: str, cap_bytes: int, keep: Path) -> list[Path]:
    """Remove least-recently-used versions until the cache holds at most `cap_bytes`; never `keep` (the
    version just asked for). Returns the folders removed."""
    versions = cached_versions(root, record)
    total = sum(v.size for v in versions) + folder_bytes(root / "_shared")
    removed: list[Path] = []
    for version in versions:
        if total <= cap_bytes:
            break
        if version.path == keep or not _remove_version(version.path, record):
            continue
        total -= version.size
        removed.append(version.path)
    if total > cap_bytes:
        log.warning(
            "S3 cache %s holds %d bytes, over its cap of %d: the version in use does not fit",
            root,
            total,
            cap_bytes,
        )
    return removed


def evict_for_space(
    root: Path, record: str, needed: int, keep: Path, free: Callable[[Path], int] | None = None
) -> list[Path]:
    """The cache's disk is full: remove least-recently-used versions (never `keep`) until `needed` bytes
    are free on it. Returns the folders removed (empty when there was nothing to remove). Space held by a
    loaded model's mapped files returns only when it is unloaded, so this may free less than it removes."""
    free_bytes = free or (lambda path: shutil.disk_usage(path).free)
    removed: list[Path] = []
    for version in cached_versions(root, record):
        if free_bytes(root) >= needed:
            break
        if version.path == keep or not _remove_version(version.path, record):
            continue
        removed.append(version.path)
    if removed:
        log.warning("S3 cache %s: disk full, evicted %d version(s) to make room", root, len(removed))
    return removed


def _remove_version(path: Path, record: str) -> bool:
    """Remove a version: its record first (no reader takes it as complete any more), then the folder.
    False when another process removed it first."""
    try:
        (path / record).unlink()
    except FileNotFoundError:
        return False
    doomed = path.with_name(f".evict-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def touch(path: Path) -> None:
    """Mark a version used now (its sync record's modification time)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)
