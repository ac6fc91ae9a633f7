"""N copies of one model: the reference's benchmark set-up (`inferpack models demo --copies-of M --count N`).

The reference serves one model N times under the ids `model0` .. `model{N-1}` (`num_models`), and its
benchmark client asks for those ids. Here each copy is a model of its own (its own id, version folder,
manifest, registry entry, queue and metrics) whose tensors all live in shared weight files under
`<repo>/_shared/weights/`: the source's shared files as they are, plus one content-named file holding the
source's own tensors. The copies therefore cost one set of weights on disk (plus a few KB each) and, once
loaded by one server, one set in memory (`inferpack.runtime.shared`), and S3 repositories fetch them like
any shared file. A TorchScript source cannot share memory; its file is hard-linked into each copy (one
file on disk where links are possible).

The source may live in another repository (`--from`): its tensors are then stored once in this one.
Only the source's latest version is copied. Ids that already exist are left alone (idempotent).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from inferpack.errors import RepositoryError
from inferpack.repository.dedup import store_shared_tensors
from inferpack.repository.files import save_tensors
from inferpack.repository.ids import validate_model_id
from inferpack.repository.local import SHARED_DIR, LocalRepository
from inferpack.repository.manifest import MANIFEST_FILE, Manifest, write_manifest
from inferpack.repository.sharing import store_shared_tokenizer

WEIGHTS_FILE = "model.safetensors"


def copy_ids(source: str, count: int, *, seed_names: bool = False, prefix: str | None = None) -> list[str]:
    """The copies' ids: `model0`.. with `seed_names` (the reference's), else `<source>-copy-0000`..;
    `prefix` replaces `model` / `<source>-copy`."""
    if count < 1:
        raise RepositoryError("--count must be at least 1")
    if seed_names:
        return [validate_model_id(f"{prefix or 'model'}{i}") for i in range(count)]
    return [validate_model_id(f"{prefix or source + '-copy'}-{i:04d}") for i in range(count)]


def make_copies(
    repo: LocalRepository,
    source: str,
    ids: list[str],
    *,
    source_repo: LocalRepository | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Create each id in `ids` (in `repo`) as a copy of `source`'s latest version (in `source_repo`,
    default `repo`); returns the ids."""
    src = source_repo or repo
    version = src.latest_version(source)
    manifest = src.manifest(source, version)
    if src.root == repo.root and source in ids:
        raise RepositoryError(
            f"the source {source!r} is among the copies' ids", hint="choose another --prefix"
        )
    todo = [m for m in ids if not repo.has_model(m)]
    if not todo:
        return ids
    tokenizer = _shared_tokenizer(repo, src.resolve_file(source, version, manifest.tokenizer))
    shared: list[Path] = []
    if manifest.format == "safetensors":
        shared = _shared_weights(repo, src, source, version, manifest)
    for model_id in todo:
        _, vdir = repo.new_version_dir(model_id)
        copied = manifest.model_copy(
            update={
                "tokenizer": os.path.relpath(tokenizer, vdir),
                "footprint": None,  # measured for the source alone; a copy's share is far smaller
                "description": f"copy of {source} v{version} (inferpack models demo --copies-of)",
            }
        )
        if manifest.config is not None:
            shutil.copyfile(src.resolve_file(source, version, manifest.config), vdir / "config.json")
            copied = copied.model_copy(update={"config": "config.json"})
        if manifest.format == "safetensors":
            save_tensors({}, vdir / WEIGHTS_FILE)  # nothing of its own: every tensor is shared
            copied = copied.model_copy(
                update={"weights": WEIGHTS_FILE, "shared_weights": [os.path.relpath(p, vdir) for p in shared]}
            )
        else:
            name = Path(manifest.weights).name
            _link_or_copy(src.resolve_file(source, version, manifest.weights), vdir / name)
            copied = copied.model_copy(update={"weights": name})
        write_manifest(vdir / MANIFEST_FILE, copied)
        if progress is not None:
            progress(model_id)
    return ids


def _shared_weights(
    repo: LocalRepository, src: LocalRepository, source: str, version: int, manifest: Manifest
) -> list[Path]:
    """The shared files that hold every tensor of the source, in `repo`'s `_shared/weights/`."""
    shared = [src.resolve_file(source, version, rel) for rel in manifest.shared_weights]
    own = load_file(str(src.resolve_file(source, version, manifest.weights)))
    if src.root != repo.root:
        # Another repository's files cannot be named: store the source's whole state once, here.
        merged: dict[str, torch.Tensor] = {}
        for path in shared:
            merged.update(load_file(str(path)))
        return [store_shared_tensors(repo, {**merged, **own})]
    if own:  # the source's own tensors come last: they override its shared ones, as in the source
        shared.append(store_shared_tensors(repo, own))
    return shared


def _shared_tokenizer(repo: LocalRepository, path: Path) -> Path:
    """`path` when it already lies in `<repo>/_shared/`, else a content-named copy of it there."""
    return path if path.is_relative_to(repo.root / SHARED_DIR) else store_shared_tokenizer(repo, path)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
