"""Publishing a local repository to S3 (`inferpack models push`): incremental, manifests last.

Readers (`inferpack.repository.s3`) treat a version as existing once its `manifest.json` exists, so each
version's manifest is uploaded after its other files: a reader never sees a version whose weights are
still on their way. Each object carries its sha256 in its metadata, which readers check after download.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from inferpack.errors import RepositoryError
from inferpack.repository.manifest import MANIFEST_FILE
from inferpack.repository.s3config import (
    CHUNK,
    NOT_FOUND_CODES,
    SHA256_META,
    error_code,
    make_s3_client,
    parse_s3_uri,
)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def push_repository(source: Path, uri: str, *, client: Any = None) -> dict[str, int]:
    """Upload a local repository to `s3://bucket/prefix`; returns counts of uploaded and skipped files.

    Files whose object already has the same size and sha256 are skipped (pushing again is cheap). Each
    version's manifest goes last, so readers only ever see complete versions. Hidden files are skipped.
    """
    root = source.resolve()
    if not root.is_dir():
        raise RepositoryError(f"repository {source} does not exist")
    location = parse_s3_uri(uri)
    client = client or make_s3_client()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise RepositoryError(f"repository {source} has no files to push")
    # Manifests last: a version becomes visible (listable) only when all its other files are there.
    files.sort(key=lambda p: p.name == MANIFEST_FILE)
    counts = {"uploaded": 0, "skipped": 0}
    for path in files:
        key = location.key(path.relative_to(root).as_posix())
        sha = _sha256_file(path)
        try:
            head = client.head_object(Bucket=location.bucket, Key=key)
            if (
                int(head["ContentLength"]) == path.stat().st_size
                and head.get("Metadata", {}).get(SHA256_META) == sha
            ):
                counts["skipped"] += 1
                continue
        except Exception as exc:
            if error_code(exc) not in NOT_FOUND_CODES:
                raise RepositoryError(f"checking s3://{location.bucket}/{key} failed: {exc}") from exc
        try:
            client.upload_file(str(path), location.bucket, key, ExtraArgs={"Metadata": {SHA256_META: sha}})
        except Exception as exc:
            raise RepositoryError(f"uploading {path} to s3://{location.bucket}/{key} failed: {exc}") from exc
        counts["uploaded"] += 1
    return counts
