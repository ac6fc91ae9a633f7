"""Storing a compiled model as a new version: `model.pt` (or `model.onnx`), a copy of the architecture
config, the tokenizer re-pointed from the new folder, and the manifest written last.

The manifest is what makes a version folder a version (`LocalRepository` ignores folders without one), so
writing it last means a reader never sees a half-written version; any failure removes the folder.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from inferpack.errors import CompileError
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import MANIFEST_FILE, Manifest, write_manifest

WEIGHTS_FILE = "model.pt"


def repoint(target: Path, new_dir: Path) -> str:
    """The path of `target` as a manifest in `new_dir` names it (relative, so the repository can move)."""
    return os.path.relpath(target.resolve(), new_dir.resolve())


def torchscript_writer(module: torch.jit.ScriptModule) -> Callable[[Path], None]:
    """Writes a TorchScript module to a path (what `store_version` calls for a traced model)."""

    def write(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice; see trace.jit_trace
            torch.jit.save(module, str(path))

    return write


def store_version(
    repo: LocalRepository,
    model_id: str,
    source_version: int,
    write: Callable[[Path], None],
    manifest: Manifest,
) -> tuple[int, Path]:
    """Write a new version folder: `write` puts the compiled graph at the manifest's `weights` path, then
    `manifest` follows (with file references fixed up).

    Files that live inside the source version (a private tokenizer, the config) are copied, so the new
    version survives the source being deleted; files elsewhere (`<repo>/_shared/tokenizers/...`) are
    referenced from the new folder. Returns the new version number and folder.
    """
    source = repo.manifest(model_id, source_version)
    version, new_dir = new_version(repo, model_id)
    try:
        write(new_dir / manifest.weights)
        tokenizer = carry_file(repo, model_id, source_version, source.tokenizer, new_dir)
        config = (
            carry_file(repo, model_id, source_version, source.config, new_dir)
            if source.config is not None
            else None
        )
        final = manifest.model_copy(update={"tokenizer": tokenizer, "config": config})
        write_manifest(new_dir / MANIFEST_FILE, final)
    except BaseException:
        # BaseException too: a Ctrl-C halfway through must not leave a folder behind either.
        repo.remove_version(model_id, version)
        raise
    return version, new_dir


def new_version(repo: LocalRepository, model_id: str) -> tuple[int, Path]:
    """The next version's number and (new, empty) folder; CompileError when a half-written one is there."""
    try:
        return repo.new_version_dir(model_id)
    except FileExistsError as exc:
        # Version folders count once their manifest exists, so the next number's folder already being
        # there means another compile of this model is writing it, or one was killed (kill -9) mid-write.
        raise CompileError(
            f"{exc.filename} already exists without a manifest: another compile of {model_id!r} is "
            "writing it, or a killed one left it behind",
            hint="wait for the other compile, or delete that folder if no compile is running",
        ) from exc


def carry_file(repo: LocalRepository, model_id: str, version: int, relative: str, new_dir: Path) -> str:
    """Copy a file that lives in the source version folder; re-point one that lives elsewhere."""
    source_dir = repo.version_dir(model_id, version)
    path = repo.resolve_file(model_id, version, relative)  # refuses paths escaping the repository
    if path.is_relative_to(source_dir.resolve()):
        rel_inside = path.relative_to(source_dir.resolve())
        (new_dir / rel_inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, new_dir / rel_inside)
        return str(rel_inside)
    return repoint(path, new_dir)
