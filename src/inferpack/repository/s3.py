"""A model repository in S3 (`s3://bucket/prefix`), served from a local cache that is filled on demand.

The bucket holds the same layout as a local repository (see `inferpack.repository.local`) under `prefix/`.
A version exists once its `manifest.json` exists, and `push_repository` uploads each version's manifest
last, so a reader never sees a version whose weights are still on their way.

Cache: `<cache_dir>/<bucket>/<prefix>/` mirrors the layout. A version is downloaded whole into a hidden
temporary folder, every file checked (size always; the MD5 ETag of single-part uploads; the sha256 that
`push_repository` stores in the object's metadata), then renamed into place in one step; a version folder
that exists in the cache is complete and is reused without contacting S3. Versions are immutable: publish
a change as a new version number, never by overwriting one.

Connection (standard AWS chain: env vars, shared config, IRSA web identity, instance profile):
- `INFERPACK_S3_ENDPOINT_URL`: an S3-compatible endpoint (MinIO, SeaweedFS...); path-style addressing is
  used with it. `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` are honoured by boto3 itself otherwise.
- `INFERPACK_S3_CACHE_DIR`: the cache (default `~/.cache/inferpack/s3`).
- Transient errors are retried by botocore (standard mode, 5 attempts) and a failed file check is retried
  by downloading again (3 attempts).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferpack.errors import ModelNotFound, RepositoryError
from inferpack.repository.ids import is_valid_model_id, validate_model_id
from inferpack.repository.local import SHARED_DIR, LocalRepository
from inferpack.repository.manifest import MANIFEST_FILE, Manifest

log = logging.getLogger(__name__)

ENDPOINT_ENV = "INFERPACK_S3_ENDPOINT_URL"
CACHE_ENV = "INFERPACK_S3_CACHE_DIR"
SYNC_RECORD = ".inferpack-sync.json"
SHA256_META = "sha256"
DOWNLOAD_ATTEMPTS = 3
CHUNK = 1 << 20
LISTING_TTL_S = 60.0


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix without leading or trailing '/' (may be empty)."""

    bucket: str
    prefix: str

    def key(self, relative: str) -> str:
        """The object key of a repository-relative path."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def relative(self, key: str) -> str:
        """The repository-relative path of an object key under the prefix."""
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def uri(self) -> str:
        """Back to `s3://bucket/prefix`."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_uri(uri: str) -> S3Location:
    """`s3://bucket/some/prefix/` -> S3Location("bucket", "some/prefix")."""
    if not uri.startswith("s3://"):
        raise RepositoryError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or any(part in ("", ".", "..") for part in prefix.split("/") if prefix):
        raise RepositoryError(f"{uri!r} is not a usable s3://bucket/prefix URI")
    return S3Location(bucket, prefix)


def make_s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client: the standard credential chain, `INFERPACK_S3_ENDPOINT_URL` when set, retries."""
    import boto3  # imported here: boto3 costs ~0.3 s to import; only S3 users pay it
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        # S3-compatible servers rarely do virtual-host buckets on a bare IP:port.
        s3={"addressing_style": "path"} if endpoint else {},
        connect_timeout=5,
        read_timeout=60,
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def default_cache_dir() -> Path:
    """`INFERPACK_S3_CACHE_DIR`, else ~/.cache/inferpack/s3."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "inferpack" / "s3"


def _is_transport_error(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError) and not isinstance(exc, ClientError)


def _error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


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
            if not _is_transport_error(exc) and _error_code(exc) not in ("NoSuchBucket", "AccessDenied"):
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
            if _error_code(exc) in ("NoSuchKey", "404"):
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
                if _error_code(exc) in ("NoSuchKey", "404", "AccessDenied", "403"):
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
    """Open `s3://bucket/prefix` with a cache (default `INFERPACK_S3_CACHE_DIR` or ~/.cache/inferpack/s3)."""
    return S3Repository(parse_s3_uri(uri), cache_dir or default_cache_dir(), client or make_s3_client())


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
            if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise RepositoryError(f"checking s3://{location.bucket}/{key} failed: {exc}") from exc
        try:
            client.upload_file(str(path), location.bucket, key, ExtraArgs={"Metadata": {SHA256_META: sha}})
        except Exception as exc:
            raise RepositoryError(f"uploading {path} to s3://{location.bucket}/{key} failed: {exc}") from exc
        counts["uploaded"] += 1
    return counts
