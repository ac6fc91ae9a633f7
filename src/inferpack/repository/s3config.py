"""Where an S3 repository is and how to reach it: `s3://bucket/prefix` URIs, the boto3 client, the local
cache folder, and the S3 error kinds the cache and the publisher act on.

Connection (standard AWS chain: env vars, shared config, IRSA web identity, instance profile):
- `INFERPACK_S3_ENDPOINT_URL`: an S3-compatible endpoint (MinIO, SeaweedFS...); path-style addressing is
  used with it. `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` are honoured by boto3 itself otherwise.
- `INFERPACK_S3_CACHE_DIR`: the cache (default `~/.cache/inferpack/s3`).
- `INFERPACK_S3_MAX_ATTEMPTS`: attempts per S3 call, retries included (botocore standard mode, default
  3). Kept low so that a failing S3 costs seconds, not minutes: the repository falls back to its cache
  and a server re-lists in the background (see `inferpack.repository.health`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferpack.errors import RepositoryError

ENDPOINT_ENV = "INFERPACK_S3_ENDPOINT_URL"
CACHE_ENV = "INFERPACK_S3_CACHE_DIR"
CACHE_MAX_ENV = "INFERPACK_S3_CACHE_MAX_MB"
ATTEMPTS_ENV = "INFERPACK_S3_MAX_ATTEMPTS"
DEFAULT_ATTEMPTS = 3
SHA256_META = "sha256"  # object metadata key: the file's sha256, written by `push_repository`
CHUNK = 1 << 20
NOT_FOUND_CODES = ("NoSuchKey", "404", "NotFound")


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
    """A boto3 S3 client: the standard credential chain, `INFERPACK_S3_ENDPOINT_URL` when set, bounded
    retries (`INFERPACK_S3_MAX_ATTEMPTS`) and timeouts."""
    import boto3  # imported here: boto3 costs ~0.3 s to import; only S3 users pay it
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    config = Config(
        # standard mode waits rand(0, 1) x 2^i s between attempts after a throttling answer (SlowDown),
        # 50 ms x 2^i after others: 3 attempts give up within ~3 s; the former 6 (5 retries) took ~20 s
        # per call against an endpoint answering SlowDown
        retries={"total_max_attempts": max_attempts(), "mode": "standard"},
        # S3-compatible servers rarely do virtual-host buckets on a bare IP:port.
        s3={"addressing_style": "path"} if endpoint else {},
        connect_timeout=5,
        read_timeout=30,  # per read of the socket, not per download: large files are not cut short
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def max_attempts() -> int:
    """`INFERPACK_S3_MAX_ATTEMPTS` (1-10), else 3."""
    env = os.environ.get(ATTEMPTS_ENV)
    if not env:
        return DEFAULT_ATTEMPTS
    if not env.isdigit() or not 1 <= int(env) <= 10:
        raise RepositoryError(f"{ATTEMPTS_ENV} must be a whole number from 1 to 10, got {env!r}")
    return int(env)


def default_cache_max_bytes() -> int | None:
    """`INFERPACK_S3_CACHE_MAX_MB` in bytes, else None (no cap)."""
    env = os.environ.get(CACHE_MAX_ENV)
    if not env:
        return None
    try:
        megabytes = float(env)
    except ValueError as exc:
        raise RepositoryError(f"{CACHE_MAX_ENV} must be a number of MiB, got {env!r}") from exc
    if megabytes <= 0:
        raise RepositoryError(f"{CACHE_MAX_ENV} must be positive, got {env!r}")
    return int(megabytes * 1024 * 1024)


def default_cache_dir() -> Path:
    """`INFERPACK_S3_CACHE_DIR`, else ~/.cache/inferpack/s3."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "inferpack" / "s3"


def error_code(exc: BaseException) -> str:
    """The S3 error code of a client error (`NoSuchKey`, `AccessDenied`, `404`...), else ''."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
