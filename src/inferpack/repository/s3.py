"""A model repository in S3 (`s3://bucket/prefix`), served from a local cache that is filled on demand
(the read-through cache; where the bucket is and how to reach it: `s3config`; publishing: `s3push`).

The bucket holds the same layout as a local repository (see `inferpack.repository.folder`) under `prefix/`.
A version exists once its `manifest.json` exists, and `push_repository` uploads each version's manifest
last, so a reader never sees a version whose weights are still on their way.

Cache: `<cache_dir>/<bucket>/<prefix>/` mirrors the layout. A version is downloaded whole into a hidden
temporary folder, every file checked (size always; the MD5 ETag of single-part uploads; the sha256 that
`push_repository` stores in the object's metadata), then renamed into place in one step; a version folder
that exists in the cache is complete and is reused without contacting S3. Versions are immutable: publish
a change as a new version number, never by overwriting one.

Transient errors are retried by botocore (see `s3config`) and a failed file check is retried by
downloading again (3 attempts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferpack.errors import ModelNotFound, RepositoryError
from inferpack.repository.files import umask_mode
from inferpack.repository.folder import SHARED_DIR, LocalRepository
from inferpack.repository.ids import is_valid_model_id, validate_model_id
from inferpack.repository.manifest import MANIFEST_FILE, Manifest
from inferpack.repository.s3cache import evict_to_cap, touch
from inferpack.repository.s3config import (
    CHUNK,
    ENDPOINT_ENV,
    NOT_FOUND_CODES,
    SHA256_META,
    S3Location,
    default_cache_dir,
    default_cache_max_bytes,
    error_code,
    is_transport_error,
    make_s3_client,
    parse_s3_uri,
)

log = logging.getLogger(__name__)

SYNC_RECORD = ".inferpack-sync.json"
DOWNLOAD_ATTEMPTS = 3
LISTING_TTL_S = 60.0


class S3Repository(LocalRepository):
    """A read-only repository in S3, served from a local cache (see the module docstring)."""

    def __init__(
        self,
        location: S3Location,
        cache_dir: Path,
        client: Any,
        *,
        listing_ttl_s: float = LISTING_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        cache_max_bytes: int | None = None,
    ) -> None:
        root = (
            cache_dir / location.bucket / location.prefix if location.prefix else cache_dir / location.bucket
        )
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root)
        self.location = location
        self.client = client
        self._index: dict[str, list[int]] | None = None
        self._listed_at = 0.0
        # The listing is kept for `listing_ttl_s`, so versions pushed later are seen without a restart,
        # while a burst of lookups (a server loading hundreds of models) costs one listing.
        self._ttl = listing_ttl_s
        self._clock = clock
        # Least-recently-used versions leave the cache when a new one would push it over this (s3cache).
        self.cache_max_bytes = cache_max_bytes

    def describe(self) -> str:
        """The S3 URI and the cache folder."""
        return f"{self.location.uri()} (cache {self.root})"

    # --- listing ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget the listing, so the next call sees versions pushed since."""
        self._index = None

    def _list_index(self) -> dict[str, list[int]]:
        """Model id -> versions, from the keys `<model>/<n>/manifest.json` under the prefix."""
        found: dict[str, set[int]] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        start = self.location.key("")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=start):
            for obj in page.get("Contents", []):
                parts = self.location.relative(obj["Key"]).split("/")
                if len(parts) != 3 or parts[2] != MANIFEST_FILE:
                    continue
                model_id, version = parts[0], parts[1]
                if is_valid_model_id(model_id) and version.isdigit() and not version.startswith("0"):
                    found.setdefault(model_id, set()).add(int(version))
        return {model_id: sorted(versions) for model_id, versions in found.items()}

    def _versions_index(self) -> dict[str, list[int]]:
        """The listing, kept `listing_ttl_s`; when S3 cannot be listed, the last listing, else the cache."""
        if self._index is not None and self._clock() - self._listed_at <= self._ttl:
            return self._index
        try:
            self._index = self._list_index()
            self._listed_at = self._clock()
            return self._index
        except Exception as exc:
            if not is_transport_error(exc) and error_code(exc) not in ("NoSuchBucket", "AccessDenied"):
                raise RepositoryError(f"listing {self.location.uri()} failed: {exc}") from exc
            # Serving what we know beats refusing to start (or to serve) when S3 has a bad minute.
            log.warning("S3 listing of %s failed (%s); using what is known", self.location.uri(), exc)
            if self._index is not None:
                self._listed_at = self._clock()  # try S3 again after another TTL, not on every call
                return self._index
            cached = {
                entry.name: self._version_numbers(entry)
                for entry in (self.root.iterdir() if self.root.is_dir() else [])
                if entry.is_dir() and is_valid_model_id(entry.name)
            }
            cached = {k: v for k, v in cached.items() if v}
            if not cached:
                raise RepositoryError(
                    f"cannot list {self.location.uri()} and the cache {self.root} is empty: {exc}",
                    hint=f"check the bucket, credentials and {ENDPOINT_ENV}",
                ) from exc
            return cached

    def model_ids(self) -> list[str]:
        """Every model id with at least one version in the bucket."""
        return sorted(self._versions_index())

    def has_model(self, model_id: str) -> bool:
        """True when the id is valid and has at least one version in the bucket."""
        return is_valid_model_id(model_id) and model_id in self._versions_index()

    def versions(self, model_id: str) -> list[int]:
        """Version numbers of a model in the bucket, ascending."""
        validate_model_id(model_id)
        numbers = self._versions_index().get(model_id)
        if not numbers:
            raise ModelNotFound(f"model {model_id!r} is not in the repository {self.location.uri()}")
        return numbers

    # --- reading ---------------------------------------------------------------------------------------

    def manifest(self, model_id: str, version: int | None = None) -> Manifest:
        """The version's manifest: from the cache when synced, else just that one object (no weights)."""
        chosen = self.latest_version(model_id) if version is None else version
        local = self.root / model_id / str(chosen)
        if (local / SYNC_RECORD).is_file():
            return super().manifest(model_id, chosen)
        key = self.location.key(f"{model_id}/{chosen}/{MANIFEST_FILE}")
        try:
            body = self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                raise ModelNotFound(
                    f"model {model_id!r} has no version {chosen} in {self.location.uri()}"
                ) from exc
            raise RepositoryError(f"reading s3://{self.location.bucket}/{key} failed: {exc}") from exc
        try:
            return Manifest.model_validate(json.loads(body))
        except ValueError as exc:
            raise RepositoryError(f"manifest s3://{self.location.bucket}/{key} is invalid: {exc}") from exc

    def version_dir(self, model_id: str, version: int | None = None) -> Path:
        """The version's folder in the cache, downloaded (and checked) first when it is not there."""
        validate_model_id(model_id)
        chosen = self.latest_version(model_id) if version is None else version
        path = self.root / model_id / str(chosen)
        if not (path / SYNC_RECORD).is_file():
            self._sync_version(model_id, chosen, path)
            if self.cache_max_bytes is not None:
                evict_to_cap(self.root, SYNC_RECORD, self.cache_max_bytes, keep=path)
        elif self.cache_max_bytes is not None:
            touch(path / SYNC_RECORD)
        return path

    def resolve_file(self, model_id: str, version: int, relative: str) -> Path:
        """A manifest's file; files under `_shared/` are fetched on first use."""
        base = self.version_dir(model_id, version)
        path = (base / relative).resolve()
        shared = (self.root / SHARED_DIR).resolve()
        if path.is_relative_to(shared) and not path.is_file():
            rel = path.relative_to(self.root).as_posix()
            self._download_checked(self.location.key(rel), path)
        return super().resolve_file(model_id, version, relative)

    def is_cached(self, model_id: str, version: int) -> bool:
        """True when the version is complete in the local cache."""
        return (self.root / model_id / str(version) / SYNC_RECORD).is_file()

    # --- read-only -------------------------------------------------------------------------------------

    def new_version_dir(self, model_id: str) -> tuple[int, Path]:
        """S3 repositories are read-only here: build locally, then `inferpack models push`."""
        raise RepositoryError(
            f"{self.location.uri()} is read-only",
            hint="work on a local repository, then `inferpack models push`",
        )

    def write_manifest(self, model_id: str, version: int, manifest: Manifest) -> None:
        """Read-only (see `new_version_dir`)."""
        self.new_version_dir(model_id)

    def remove_version(self, model_id: str, version: int) -> None:
        """Read-only (see `new_version_dir`)."""
        self.new_version_dir(model_id)

    # --- download --------------------------------------------------------------------------------------

    def _sync_version(self, model_id: str, version: int, final: Path) -> None:
        """Download every object of a version into a temporary folder, check each, then rename into place."""
        version_prefix = self.location.key(f"{model_id}/{version}/")
        objects: list[dict[str, Any]] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=version_prefix):
                objects.extend(o for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        except Exception as exc:
            raise RepositoryError(
                f"listing s3://{self.location.bucket}/{version_prefix} failed: {exc}"
            ) from exc
        names = [o["Key"][len(version_prefix) :] for o in objects]
        if MANIFEST_FILE not in names:
            raise ModelNotFound(f"model {model_id!r} has no version {version} in {self.location.uri()}")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".sync-{version}-"))
        try:
            record = []
            for obj, name in zip(objects, names, strict=True):
                target = (tmp / name).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise RepositoryError(f"object key {obj['Key']!r} escapes the version folder")
                record.append(self._download_checked(obj["Key"], target))
            (tmp / SYNC_RECORD).write_text(
                json.dumps({"source": self.location.uri(), "files": record}, indent=1)
            )
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process finished the same version first; theirs is as good as ours.
                if not (final / SYNC_RECORD).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _download_checked(self, key: str, target: Path) -> dict[str, Any]:
        """Download one object to `target` atomically, checking size and checksums; retry a bad copy."""
        last: Exception | None = None
        for _attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                return self._download_once(key, target)
            except RepositoryError as exc:  # a checksum or size mismatch: fetch again
                last = exc
            except Exception as exc:
                if error_code(exc) in ("NoSuchKey", "404", "AccessDenied", "403"):
                    raise RepositoryError(f"s3://{self.location.bucket}/{key}: {exc}") from exc
                last = exc
        raise RepositoryError(
            f"downloading s3://{self.location.bucket}/{key} failed {DOWNLOAD_ATTEMPTS} times: {last}"
        ) from last

    def _download_once(self, key: str, target: Path) -> dict[str, Any]:
        response = self.client.get_object(Bucket=self.location.bucket, Key=key)
        expected_size = int(response["ContentLength"])
        etag = str(response.get("ETag", "")).strip('"')
        expected_sha = response.get("Metadata", {}).get(SHA256_META)
        md5, sha, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        os.fchmod(fd, umask_mode())  # a cache shared between users reads like any other repository
        try:
            with os.fdopen(fd, "wb") as fh:
                body = response["Body"]
                while chunk := body.read(CHUNK):
                    fh.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    size += len(chunk)
            if size != expected_size:
                raise RepositoryError(
                    f"s3://{self.location.bucket}/{key}: got {size} bytes, expected {expected_size}"
                )
            # Multipart ETags ("<md5>-<parts>") are not the file's MD5; the sha256 metadata covers them.
            if len(etag) == 32 and "-" not in etag and md5.hexdigest() != etag:
                raise RepositoryError(f"s3://{self.location.bucket}/{key}: MD5 differs from the ETag")
            if expected_sha and sha.hexdigest() != expected_sha:
                raise RepositoryError(f"s3://{self.location.bucket}/{key}: sha256 differs from its metadata")
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return {"key": key, "size": size, "etag": etag, "sha256": sha.hexdigest()}


def open_s3_repository(uri: str, *, cache_dir: Path | None = None, client: Any = None) -> S3Repository:
    """Open `s3://bucket/prefix` with a cache (default `INFERPACK_S3_CACHE_DIR` or ~/.cache/inferpack/s3),
    capped at `INFERPACK_S3_CACHE_MAX_MB` when set (least-recently-used versions are evicted)."""
    return S3Repository(
        parse_s3_uri(uri),
        cache_dir or default_cache_dir(),
        client or make_s3_client(),
        cache_max_bytes=default_cache_max_bytes(),
    )
