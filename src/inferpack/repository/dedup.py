"""Store identical tensors once: `inferpack models dedup`.

Tenants' models are often fine-tunes of one base that share most tensors bit for bit. This scans the latest
safetensors version of every model, hashes each tensor's content (dtype, shape and bytes), and moves every
tensor found in at least `min_models` models into one file per distinct set under
`<repo>/_shared/weights/<sha256>.safetensors`, listed in each manifest's `shared_weights`. The server then
reads each shared file once and holds its tensors once in memory (see `inferpack.runtime.shared`).

Every intermediate state loads correctly, so a server may keep serving during the rewrite: the shared file
is written first, then the manifest gains `shared_weights` (the still-full own file overrides it), and last
the own file is atomically replaced by its unique remainder.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from inferpack.repository.files import save_tensors
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import MANIFEST_FILE, write_manifest


@dataclass
class DedupReport:
    """What a dedup pass found and changed."""

    models_scanned: int = 0
    models_rewritten: int = 0
    shared_files: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


def tensor_digest(tensor: torch.Tensor) -> str:
    """Content hash of a tensor: dtype, shape and raw bytes."""
    h = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    h.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dedup_repository(
    repo: LocalRepository,
    *,
    min_models: int = 2,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DedupReport:
    """Move tensors shared by `min_models`+ models into shared files; returns what changed."""
    report = DedupReport()
    digests: dict[str, dict[str, str]] = {}  # model -> tensor name -> digest
    for model_id in repo.model_ids():
        manifest = repo.manifest(model_id)
        if manifest.format != "safetensors" or manifest.shared_weights:
            continue  # TorchScript files are opaque; already-deduplicated models are left as they are
        path = repo.version_dir(model_id) / manifest.weights
        with safe_open(str(path), framework="pt") as fh:
            digests[model_id] = {name: tensor_digest(fh.get_tensor(name)) for name in fh.keys()}  # noqa: SIM118
        report.models_scanned += 1
        report.bytes_before += path.stat().st_size
        if progress is not None:
            progress(model_id)
    users: dict[str, int] = defaultdict(int)
    for names in digests.values():
        for digest in set(names.values()):
            users[digest] += 1
    groups: dict[frozenset[tuple[str, str]], list[str]] = defaultdict(list)
    for model_id, names in digests.items():
        common = frozenset((n, d) for n, d in names.items() if users[d] >= min_models)
        if common:
            groups[common].append(model_id)
    for common, members in groups.items():
        if len(members) < min_models:
            continue
        if dry_run:
            report.models_rewritten += len(members)
            continue
        shared_path = _write_shared(repo, members[0], {n for n, _ in common})
        report.shared_files.append(shared_path.name)
        report.bytes_after += shared_path.stat().st_size
        for model_id in members:
            _rewrite_model(repo, model_id, shared_path, {n for n, _ in common})
            report.models_rewritten += 1
    for model_id in digests:
        report.bytes_after += (repo.version_dir(model_id) / repo.manifest(model_id).weights).stat().st_size
    return report


def store_shared_tensors(repo: LocalRepository, tensors: dict[str, torch.Tensor]) -> Path:
    """Write tensors to `<repo>/_shared/weights/<sha256>.safetensors`, named by the file's content (so
    the same set is stored once however often it is written); returns the file's path."""
    folder = repo.shared_dir() / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}.safetensors"
    save_tensors(tensors, tmp)
    target = folder / f"{hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]}.safetensors"
    if target.is_file():
        tmp.unlink()
        # reused: fresh again, so `models gc` (which spares young files) does not remove it before the
        # manifest that will name it is written
        os.utime(target)
    else:
        tmp.replace(target)
    return target


def _write_shared(repo: LocalRepository, source_model: str, names: set[str]) -> Path:
    manifest = repo.manifest(source_model)
    with safe_open(str(repo.version_dir(source_model) / manifest.weights), framework="pt") as fh:
        return store_shared_tensors(repo, {n: fh.get_tensor(n) for n in sorted(names)})


def _rewrite_model(repo: LocalRepository, model_id: str, shared_path: Path, names: set[str]) -> None:
    version = repo.latest_version(model_id)
    vdir = repo.version_dir(model_id, version)
    manifest = repo.manifest(model_id, version)
    own_path = vdir / manifest.weights
    with safe_open(str(own_path), framework="pt") as fh:
        remainder = {n: fh.get_tensor(n) for n in fh.keys() if n not in names}  # noqa: SIM118
    relative = os.path.relpath(shared_path, vdir)
    # 1. the manifest gains the shared file while the own file is still complete (own tensors win)
    write_manifest(vdir / MANIFEST_FILE, manifest.model_copy(update={"shared_weights": [relative]}))
    # 2. then the own file shrinks to what is unique, atomically
    tmp = vdir / f".{manifest.weights}.tmp"
    save_tensors(remainder, tmp)
    tmp.replace(own_path)
