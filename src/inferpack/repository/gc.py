"""Remove the files of `<repo>/_shared/` that no version references: `inferpack models gc`.

Shared files (deduplicated tensors, bf16 casts of shared tensors, copies' weights, tokenizers) are named by
their content and referenced by relative paths from the manifests of many versions; deleting a version or a
model leaves its shared files behind. A file is garbage when no manifest of any version of any model names
it (`weights`, `config`, `tokenizer` or `shared_weights`). The import's digest index
(`_shared/weights/groups.jsonl`) is never removed; writers' temporary files left by a crash are garbage.

Safety against a concurrent writer (a `compile`, `dedup`, `demo` or `copies` running meanwhile): a writer
stores a shared file *before* the manifest that names it, so a fresh unreferenced file may be a manifest on
its way. Only files older than a grace period (default one hour, by modification time) are removed, and
the writers touch a content-named file they reuse (`store_shared_tensors`, `store_shared_tokenizer`,
`GroupStore.split`), so a reused file counts as fresh too. The modification time is checked again just
before each removal. A manifest the collector cannot read stops it before it removes anything: what that
version names is unknown.

S3 repositories (written by `inferpack models push`, which never deletes) are collected by
`collect_s3_garbage` the same way, by the objects' LastModified; see its docstring for its one race.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferpack.errors import RepositoryError
from inferpack.jsonfile import parse_json_model
from inferpack.repository.folder import SHARED_DIR
from inferpack.repository.manifest import MANIFEST_FILE, Manifest, read_manifest
from inferpack.repository.s3config import S3Location, make_s3_client, parse_s3_uri
from inferpack.repository.sharing import INDEX

DEFAULT_GRACE_S = 3600.0


@dataclass
class GcReport:
    """What a collection found: the unreferenced files removed (or, in a dry run, to remove) with their
    sizes, and the unreferenced ones kept because they are younger than the grace period."""

    removed: list[tuple[str, int]] = field(default_factory=list)  # path relative to the repo, bytes
    kept_young: list[str] = field(default_factory=list)
    referenced: int = 0
    dry_run: bool = False

    @property
    def bytes_removed(self) -> int:
        """Bytes removed (or that a real run would remove)."""
        return sum(size for _, size in self.removed)


def referenced_files(root: Path) -> set[Path]:
    """Every file a manifest of any version of any model names, resolved. RepositoryError naming the
    manifests that cannot be read (a collection must not guess what they reference)."""
    found: set[Path] = set()
    unreadable: list[str] = []
    for manifest_path in sorted(root.glob(f"*/*/{MANIFEST_FILE}")):
        model_dir = manifest_path.parent.parent.name
        if model_dir.startswith(("_", ".")):
            continue  # `_shared` and hidden folders hold no models
        try:
            manifest = read_manifest(manifest_path)
        except (RepositoryError, OSError, ValueError) as exc:
            unreadable.append(f"{manifest_path.relative_to(root)} ({exc})")
            continue
        names = [manifest.weights, manifest.tokenizer, *manifest.shared_weights]
        if manifest.config is not None:
            names.append(manifest.config)
        found.update((manifest_path.parent / name).resolve() for name in names)
    if unreadable:
        raise RepositoryError(
            f"{len(unreadable)} manifest(s) cannot be read, so what they reference is unknown: "
            + "; ".join(unreadable[:5]),
            hint="fix or remove those versions (`inferpack models list` names the broken folders), then "
            "collect again",
        )
    return found


def collect_garbage(
    root: Path,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    """Remove the files under `<root>/_shared/` no manifest references and last modified more than
    `grace_s` seconds ago (`clock` is wall time, as file times are); with `dry_run`, only report them."""
    root = root.resolve()
    report = GcReport(dry_run=dry_run)
    shared = root / SHARED_DIR
    if not shared.is_dir():
        return report
    live = referenced_files(root)
    for path in sorted(p for p in shared.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.name == INDEX:
            continue  # the import's index of digests seen: a hint no manifest names, never garbage
        if path.resolve() in live:
            report.referenced += 1
            continue
        relative = path.relative_to(root).as_posix()
        stat = path.stat()
        if clock() - stat.st_mtime < grace_s:
            report.kept_young.append(relative)
            continue
        if not dry_run:
            # checked again: a writer that reused the file since the scan has touched it
            try:
                if clock() - path.stat().st_mtime < grace_s:
                    report.kept_young.append(relative)
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # another collector got there first
        report.removed.append((relative, stat.st_size))
    return report


def collect_s3_garbage(
    uri: str,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
    client: Any = None,
    clock: Callable[[], float] = time.time,
) -> GcReport:
    """The same collection for an S3 repository (`s3://bucket/prefix`, as `inferpack models push` wrote
    it): objects under `_shared/` no version's manifest names, last modified more than `grace_s` ago.
    The manifests are listed again just before deleting, so a version pushed meanwhile keeps its files;
    a push that reuses an older unreferenced object without re-uploading it (unchanged files are skipped)
    can still lose it if its manifest lands after that second listing: collect while no push runs."""
    location = parse_s3_uri(uri)
    client = client or make_s3_client()
    report = GcReport(dry_run=dry_run)
    candidates: list[tuple[str, int]] = []
    live = _s3_referenced(client, location)
    for obj in _s3_objects(client, location, f"{SHARED_DIR}/"):
        relative = location.relative(obj["Key"])
        if relative in live:
            report.referenced += 1
        elif relative.rsplit("/", 1)[-1] == INDEX:
            continue
        elif clock() - obj["LastModified"].timestamp() < grace_s:
            report.kept_young.append(relative)
        else:
            candidates.append((relative, int(obj["Size"])))
    if candidates and not dry_run:
        live = _s3_referenced(client, location)  # a version pushed since the first listing
    for relative, size in candidates:
        if relative in live:
            report.referenced += 1
            continue
        if not dry_run:
            try:
                client.delete_object(Bucket=location.bucket, Key=location.key(relative))
            except Exception as exc:
                raise RepositoryError(f"deleting {location.uri()}/{relative} failed: {exc}") from exc
        report.removed.append((relative, size))
    return report


def _s3_objects(client: Any, location: S3Location, under: str) -> list[dict[str, Any]]:
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=location.key(under)
        )
        return [obj for page in pages for obj in page.get("Contents", [])]
    except Exception as exc:
        raise RepositoryError(f"listing {location.uri()} failed: {exc}") from exc


def _s3_referenced(client: Any, location: S3Location) -> set[str]:
    """Repository-relative keys every manifest names (RepositoryError on one that cannot be read)."""
    found: set[str] = set()
    for obj in _s3_objects(client, location, ""):
        relative = location.relative(obj["Key"])
        parts = relative.split("/")
        if len(parts) != 3 or parts[2] != MANIFEST_FILE or parts[0].startswith(("_", ".")):
            continue
        try:
            body = client.get_object(Bucket=location.bucket, Key=obj["Key"])["Body"].read()
        except Exception as exc:
            raise RepositoryError(f"reading {location.uri()}/{relative} failed: {exc}") from exc
        manifest = parse_json_model(
            body.decode("utf-8", "replace"), Manifest, f"{location.uri()}/{relative}", error=RepositoryError
        )
        names = [manifest.weights, manifest.tokenizer, *manifest.shared_weights]
        if manifest.config is not None:
            names.append(manifest.config)
        base = "/".join(parts[:2])
        found.update(posixpath.normpath(posixpath.join(base, name)) for name in names)
    return found
