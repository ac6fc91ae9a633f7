"""Open a model repository by location: a local folder, or `s3://bucket/prefix` (synced to a local cache).

The layout, the `ModelRepository` interface and `LocalRepository` live in `inferpack.repository.folder`;
they are importable from here too, as they always were. This module sits above both backends so that
neither imports the other's opener (no import cycle).
"""

from __future__ import annotations

from pathlib import Path

from inferpack.repository.folder import SHARED_DIR, LocalRepository, ModelRepository
from inferpack.repository.s3 import open_s3_repository

__all__ = ["SHARED_DIR", "LocalRepository", "ModelRepository", "open_repository"]


def open_repository(location: str | Path, *, cache_dir: Path | None = None) -> LocalRepository:
    """Open a repository by location: a local folder, or `s3://bucket/prefix` (synced to a local cache)."""
    text = str(location)
    if text.startswith("s3://"):
        return open_s3_repository(text, cache_dir=cache_dir)
    return LocalRepository(Path(text))
