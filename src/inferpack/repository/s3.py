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

import errno
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

from inferpack.errors import CacheFull, ModelNotFound, RepositoryError
from inferpack.repository.files import umask_mode
from inferpack.repository.folder import SHARED_DIR, LocalRepository
from inferpack.repository.health import RepositoryHealth
from inferpack.repository.ids import is_valid_model_id, validate_model_id
from inferpack.repository.manifest import MANIFEST_FILE, Manifest
from inferpack.repository.s3cache import evict_for_space, evict_to_cap, touch
from inferpack.repository.s3config import (
    CACHE_MAX_ENV,
    CHUNK,
    ENDPOINT_ENV,
    NOT_FOUND_CODES,
    SHA256_META,
    S3Location,
    default_cache_dir,
    default_cache_max_bytes,
    error_code,
    make_s3_client,
    parse_s3_uri,
)

log = logging.getLogger(__name__)

SYNC_RECORD = ".inferpack-sync.json"
DOWNLOAD_ATTEMPTS = 3
LISTING_TTL_S = 60.0
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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
        self.health = RepositoryHealth(location.uri())

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
        """The listing, kept `listing_ttl_s`. When S3 cannot be listed (refused, timed out, or answering
        errors such as InternalError or SlowDown) the repository is degraded and serves the last listing,
        else the versions in the cache. In a server (`background_probe`) its recovery loop lists again
        (with backoff while degraded, after the TTL while healthy), so requests never wait on S3; without
        one, S3 is listed here when the TTL has passed."""
        if self._index is not None and (
            self.background_probe or self._clock() - self._listed_at <= self._ttl
        ):
            return self._index  # fresh, or the recovery loop refreshes it off the request path
        if not (self.health.degraded and self.background_probe) and self.probe():
            assert self._index is not None
            return self._index
        if self._index is not None:
            self._listed_at = self._clock()  # without a recovery loop: try S3 again after another TTL
            return self._index
        cached = {
            entry.name: self._version_numbers(entry)
            for entry in (self.root.iterdir() if self.root.is_dir() else [])
            if entry.is_dir() and is_valid_model_id(entry.name)
        }
        cached = {k: v for k, v in cached.items() if v}
        if not cached:
            raise RepositoryError(
                f"cannot list {self.location.uri()} and the cache {self.root} is empty: "
                f"{self.health.view().reason}",
                hint=f"check the bucket, credentials and {ENDPOINT_ENV}",
            )
        return cached

    def listing_due(self) -> bool:
        """True when the listing is older than its TTL (or there is none yet)."""
        return self._index is None or self._clock() - self._listed_at > self._ttl

    def probe(self) -> bool:
        """List the bucket now (blocking); on success the listing is refreshed and the repository healthy,
        on failure it is degraded with the reason. True when S3 answered."""
        try:
            listing = self._list_index()
        except Exception as exc:  # any failure, transport or S3 error answer: fall back, keep serving
            self.health.failed(f"listing {self.location.uri()} failed: {exc}")
            return False
        self._index, self._listed_at = listing, self._clock()
        self.health.recovered()
        return True

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
        self._refuse_while_degraded(model_id, chosen)
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
            objects = self._version_objects(model_id, chosen)
            needed = sum(int(o.get("Size", 0)) for o in objects)
            try:
                self._sync_version(model_id, chosen, path, objects)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                # The disk is full: make room from least-recently-used versions, then try once more.
                freed = evict_for_space(self.root, SYNC_RECORD, needed, keep=path)
                if not freed:
                    raise self._cache_full(model_id, chosen, needed, exc) from exc
                try:
                    self._sync_version(model_id, chosen, path, objects)
                except OSError as again:
                    if again.errno not in NO_SPACE:
                        raise
                    raise self._cache_full(model_id, chosen, needed, again) from again
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
            try:
                self._download_checked(self.location.key(rel), path)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                raise self._cache_full(model_id, version, 0, exc) from exc
        return super().resolve_file(model_id, version, relative)

    def _cache_full(self, model_id: str, version: int, needed: int, exc: OSError) -> CacheFull:
        """The error for a version that does not fit the cache's disk: what, where, how much, what to do."""
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            free = 0
        size = f"{needed / 2**20:.1f} MiB; " if needed else ""
        return CacheFull(
            f"model {model_id!r} v{version}: the S3 cache {self.root} is out of disk space "
            f"({size}{free / 2**20:.1f} MiB free): {exc.strerror or exc}",
            hint=f"give the cache a bigger volume, free space on it, or set {CACHE_MAX_ENV} below its size "
            "so that least-recently-used versions are evicted first",
        )

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

    def _refuse_while_degraded(self, model_id: str, version: int) -> None:
        """While a recovery loop re-lists a degraded S3, a version outside the cache fails at once
        instead of waiting on S3's retries (a metadata request runs on the server's event loop)."""
        state = self.health.view()
        if state.degraded and self.background_probe:
            raise RepositoryError(
                f"model {model_id!r} v{version} is not in the local cache and S3 is degraded: {state.reason}",
                hint="it loads once S3 answers again (the server retries in the background); the "
                "repository index and /v2/health/ready say whether S3 is still degraded",
            )

    def _version_objects(self, model_id: str, version: int) -> list[dict[str, Any]]:
        """The objects of a version (ModelNotFound without a manifest)."""
        self._refuse_while_degraded(model_id, version)
        version_prefix = self.location.key(f"{model_id}/{version}/")
        objects: list[dict[str, Any]] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=version_prefix):
                objects.extend(o for o in page.get("Contents", []) if not o["Key"].endswith("/"))
        except Exception as exc:
            raise RepositoryError(
                f"model {model_id!r} v{version} is not in the local cache and listing "
                f"s3://{self.location.bucket}/{version_prefix} failed: {exc}",
                hint="it loads once S3 answers again; the repository index shows whether S3 is degraded",
            ) from exc
        if not any(o["Key"][len(version_prefix) :] == MANIFEST_FILE for o in objects):
            raise ModelNotFound(f"model {model_id!r} has no version {version} in {self.location.uri()}")
        return objects

    def _sync_version(self, model_id: str, version: int, final: Path, objects: list[dict[str, Any]]) -> None:
        """Download every object of a version into a temporary folder, check each, then rename into place."""
        version_prefix = self.location.key(f"{model_id}/{version}/")
        names = [o["Key"][len(version_prefix) :] for o in objects]
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
            except OSError as exc:
                if exc.errno in NO_SPACE:
                    raise  # the disk is full: downloading again cannot help (see version_dir)
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
