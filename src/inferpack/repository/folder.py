"""The repository layout on local disk, the interface every backend (local, S3) offers, and the local
backend itself (the S3 backend is a read-through cache over it, see `inferpack.repository.s3`).

Layout (like Triton's, one folder per model, one numbered folder per version):

    <repo>/
      <model_id>/
        1/                      # safetensors + transformers config, as made by `inferpack models demo`
          manifest.json
          config.json
          model.safetensors
        2/                      # a TorchScript version made by `inferpack compile`
          manifest.json
          model.pt
      _shared/                  # files many models share (tokenizers), referenced from manifests
        tokenizers/<sha256>.json

Names starting with `_` or `.` are never model ids, so `_shared/` cannot collide with a model.
The served version is the highest-numbered one unless a version is asked for.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Protocol

from inferpack.errors import ModelNotFound, RepositoryError
from inferpack.repository.health import RepositoryHealth
from inferpack.repository.ids import is_valid_model_id, validate_model_id
from inferpack.repository.manifest import MANIFEST_FILE, Manifest, read_manifest, write_manifest

SHARED_DIR = "_shared"


class ModelRepository(Protocol):
    """What the server, compiler and planner need from a repository, whatever stores it."""

    health: RepositoryHealth  # degraded while the source cannot be listed (see `repository.health`)
    # True when a server's RecoveryLoop lists the source (a degraded or stale listing): requests then never
    # wait on it (S3); without one the repository lists the source itself when needed.
    background_probe: bool

    def model_ids(self) -> list[str]:
        """Every model id with at least one version, sorted; the last listing while degraded."""
        ...

    def faults(self) -> dict[str, str]:
        """Models the last listing saw but could not read (id -> reason): listed, never loadable as is."""
        ...

    def probe(self) -> bool:
        """List the source again (blocking: call off the event loop); True when it answered."""
        ...

    def listing_due(self) -> bool:
        """True when a healthy repository's listing is stale and a background probe should refresh it."""
        ...

    def versions(self, model_id: str) -> list[int]:
        """The model's version numbers, ascending; ModelNotFound when it has none."""
        ...

    def manifest(self, model_id: str, version: int | None = None) -> Manifest:
        """The manifest of a version (default: the latest)."""
        ...

    def version_dir(self, model_id: str, version: int | None = None) -> Path:
        """A local folder holding the version's files (a backend may download them first)."""
        ...

    def resolve_file(self, model_id: str, version: int, relative: str) -> Path:
        """A file named in a manifest, resolved to a local path that stays inside the repository."""
        ...

    def describe(self) -> str:
        """Where the repository lives, for messages."""
        ...


# A URL scheme ("s3:", "https:") as the first part of a path; two letters at least, so "C:/" is a folder.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


class LocalRepository:
    """A repository in a local folder (see the module docstring for the layout)."""

    def __init__(self, root: Path) -> None:
        if _URL.match(str(root)):
            # Path("s3://bucket/prefix") is the relative folder "s3:/bucket/prefix": commands that write a
            # local repository (import, compile, demo, dedup) created it there without a word.
            raise RepositoryError(
                f"{root} is not a folder: this command works on a local repository (an s3:// location "
                "is served with `inferpack serve --repository s3://...`, and written with `models push`)",
                hint="run it on a local folder, then upload that with `inferpack models push DIR "
                "s3://bucket/prefix`",
            )
        self.root = root.resolve()
        self.health = RepositoryHealth(str(self.root))
        self._listed: list[str] | None = None  # the last listing that succeeded
        self._faults: dict[str, str] = {}
        self.background_probe = False  # a local folder lists cheaply: the request path may always re-list

    def describe(self) -> str:
        """The folder's path."""
        return str(self.root)

    def read_hint(self) -> str:
        """What to do about a file or folder the server cannot read."""
        return (
            f"the server runs as uid {os.geteuid()}: make the repository readable to it "
            f"(e.g. chmod -R a+rX {self.root})"
        )

    def unreadable(self, what: str, path: Path, exc: OSError) -> RepositoryError:
        """The error for a file or folder that cannot be read: names it, the reason, and the remedy."""
        return RepositoryError(f"{what} cannot read {path}: {exc.strerror or exc}", hint=self.read_hint())

    def exists(self) -> bool:
        """True when the repository folder exists."""
        return self.root.is_dir()

    def model_ids(self) -> list[str]:
        """Sub-folders with a valid id and at least one version, plus those that cannot be read (see
        `faults`). Once a listing succeeded, a folder that becomes unreadable or vanishes (a lost mount)
        degrades the repository: the last listing is served and `probe` tries again."""
        try:
            ids, faults = self._scan()
        except (OSError, RepositoryError) as exc:
            error = exc if isinstance(exc, RepositoryError) else self.unreadable("repository", self.root, exc)
            self.health.failed(error.message)
            if self._listed is None:
                raise error from exc
            return list(self._listed)
        self._listed, self._faults = ids, faults
        self.health.recovered()
        return list(ids)

    def faults(self) -> dict[str, str]:
        """Model folders of the last listing that could not be read, with the reason."""
        return dict(self._faults)

    def probe(self) -> bool:
        """List the folder again; True when it could be read."""
        try:
            self.model_ids()
        except RepositoryError:
            return False
        return not self.health.degraded

    def listing_due(self) -> bool:
        """Never: a local folder is listed on the request path (a directory read)."""
        return False

    def _scan(self) -> tuple[list[str], dict[str, str]]:
        if not self.root.is_dir():
            raise RepositoryError(
                f"model repository {self.root} does not exist",
                hint="name your repository with --repository DIR, import your own models into one with "
                "`inferpack models import SOURCE --repository DIR`, or create demo models with "
                "`inferpack models demo --out DIR`",
            )
        ids, faults = [], {}
        for entry in self.root.iterdir():
            if not is_valid_model_id(entry.name):
                continue
            try:
                if entry.is_dir() and self._version_numbers(entry):
                    ids.append(entry.name)
            except OSError as exc:  # one unreadable model must not hide the others
                ids.append(entry.name)
                faults[entry.name] = self.unreadable(f"model {entry.name!r}:", entry, exc).message
        return sorted(ids), faults

    def has_model(self, model_id: str) -> bool:
        """True when the id is valid and has at least one version."""
        return is_valid_model_id(model_id) and bool(self._readable_versions(model_id))

    def versions(self, model_id: str) -> list[int]:
        """Version numbers of a model, ascending."""
        validate_model_id(model_id)
        numbers = self._readable_versions(model_id)
        if not numbers:
            raise ModelNotFound(f"model {model_id!r} is not in the repository {self.root}")
        return numbers

    def _readable_versions(self, model_id: str) -> list[int]:
        folder = self.root / model_id
        try:
            return self._version_numbers(folder)
        except OSError as exc:
            raise self.unreadable(f"model {model_id!r}:", folder, exc) from exc

    def latest_version(self, model_id: str) -> int:
        """The highest version number."""
        return self.versions(model_id)[-1]

    def version_dir(self, model_id: str, version: int | None = None) -> Path:
        """The folder of a version (default: latest); ModelNotFound when absent."""
        chosen = self.latest_version(model_id) if version is None else version
        path = self.root / model_id / str(chosen)
        try:
            found = (path / MANIFEST_FILE).is_file()
        except OSError as exc:
            raise self.unreadable(f"model {model_id!r} v{chosen}:", path, exc) from exc
        if not found:
            raise ModelNotFound(
                f"model {model_id!r} has no version {chosen} in {self.root}",
                hint="the repository changed since it was listed: restore the version or load another",
            )
        return path

    def manifest(self, model_id: str, version: int | None = None) -> Manifest:
        """The version's manifest."""
        return read_manifest(self.version_dir(model_id, version) / MANIFEST_FILE)

    def write_manifest(self, model_id: str, version: int, manifest: Manifest) -> None:
        """Replace a version's manifest atomically (e.g. to record a measured footprint)."""
        write_manifest(self.version_dir(model_id, version) / MANIFEST_FILE, manifest)

    def resolve_file(self, model_id: str, version: int, relative: str) -> Path:
        """Resolve a manifest's relative file name; refuse anything escaping the repository."""
        base = self.version_dir(model_id, version)
        path = (base / relative).resolve()
        if not path.is_relative_to(self.root):
            raise RepositoryError(f"model {model_id!r} v{version} names {relative!r}, outside the repository")
        try:  # opened here so a missing or unreadable file is named, not reported as a confusing load error
            with path.open("rb"):
                pass
        except FileNotFoundError as exc:
            raise RepositoryError(
                f"model {model_id!r} v{version} names {relative!r}, which does not exist ({path})",
                hint="the repository changed under the server: restore the file, or import or push the "
                "model again",
            ) from exc
        except OSError as exc:
            raise self.unreadable(f"model {model_id!r} v{version}", path, exc) from exc
        return path

    def new_version_dir(self, model_id: str) -> tuple[int, Path]:
        """Create and return the next version folder (latest + 1, or 1 for a new model)."""
        validate_model_id(model_id)
        numbers = self._version_numbers(self.root / model_id)
        version = (numbers[-1] if numbers else 0) + 1
        path = self.root / model_id / str(version)
        path.mkdir(parents=True, exist_ok=False)
        return version, path

    def remove_version(self, model_id: str, version: int) -> None:
        """Delete one version folder (used to clean up a failed compile)."""
        shutil.rmtree(self.root / validate_model_id(model_id) / str(version), ignore_errors=True)

    def shared_dir(self) -> Path:
        """`<repo>/_shared`, for files many models reference."""
        path = self.root / SHARED_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def problems(self) -> list[tuple[str, str]]:
        """Folders that are not (wholly) valid models, each with the reason: a name that is not a model
        id, no version with a manifest, a version folder without one, a manifest that cannot be read,
        and staging folders an interrupted import left."""
        found: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return found
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.name.startswith("_"):
                continue
            if entry.name.startswith("."):
                if entry.name.startswith(".import-"):
                    found.append((entry.name, "left by an interrupted import: delete it"))
                continue
            if not is_valid_model_id(entry.name):
                found.append((entry.name, "not a valid model id (1-128 of A-Z a-z 0-9 . _ -; no '..')"))
                continue
            numbered = [p for p in entry.iterdir() if p.is_dir() and p.name.isdigit()]
            if not numbered:
                found.append((entry.name, "no version folder (1/, 2/, ...) holding a manifest.json"))
                continue
            for version in sorted(numbered, key=lambda p: int(p.name)):
                name = f"{entry.name}/{version.name}"
                if not (version / MANIFEST_FILE).is_file():
                    found.append((name, "no manifest.json: not a version (an unfinished write?)"))
                    continue
                try:
                    read_manifest(version / MANIFEST_FILE)
                except RepositoryError as exc:
                    found.append((name, exc.message))
        return found

    @staticmethod
    def _version_numbers(model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.name.isdigit() and not p.name.startswith("0") and (p / MANIFEST_FILE).is_file()
        )
