"""Identical tensors stored once across imports: layer groups named by their content hash.

A fine-tune that froze some layers shares those layers bit for bit with its base and every sibling. An
import splits its weights into layer groups (the embeddings, each encoder layer, the pooler, the head),
hashes each group's content (names, dtypes, shapes, bytes), and:
- stores a group seen before in `<repo>/_shared/weights/g-<digest>.safetensors` (once, whoever wrote it
  first), listed in the manifest's `shared_weights`, so the server also holds it once in memory;
- keeps a group seen for the first time in the model's own file and notes its digest in
  `<repo>/_shared/weights/groups.jsonl`, so a later sibling shares it (the first holder keeps its copy).

N fine-tunes of one base then take one base plus what differs (and one extra copy of the shared layers,
in the first model). The index is only a hint: a missing entry costs a copy, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inferpack.repository.dedup import tensor_digest
from inferpack.repository.files import save_tensors
from inferpack.repository.local import LocalRepository

INDEX = "groups.jsonl"
_LAYER = re.compile(r"^(.*\.layers?\.\d+)\.")


def group_of(name: str) -> str:
    """The layer group of a tensor name: `...layer.N` for encoder layers, else the module two levels up
    (`bert.embeddings.word_embeddings.weight` -> `bert.embeddings`; `classifier.weight` -> `classifier`)."""
    match = _LAYER.match(name)
    if match:
        return match.group(1)
    parts = name.split(".")
    return ".".join(parts[:-2]) if len(parts) > 2 else parts[0]


def group_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of a group: each tensor's name and content digest."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(f"{name}={tensor_digest(tensors[name])}\n".encode())
    return h.hexdigest()[:32]


@dataclass
class Split:
    """Where an import's tensors go: its own file, shared files (existing or new), digests to note."""

    own: dict[str, torch.Tensor]
    shared: list[Path] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)  # shared files this import wrote (undo on failure)
    first_seen: list[str] = field(default_factory=list)  # digests to note once the version is in place
    shared_bytes: int = 0


class GroupStore:
    """The repository's shared layer groups and the index of digests seen (read once per store)."""

    def __init__(self, repo: LocalRepository) -> None:
        self.repo = repo
        self.folder = repo.root / "_shared" / "weights"
        self._seen: set[str] | None = None

    def _index(self) -> set[str]:
        if self._seen is None:
            self._seen = set()
            path = self.folder / INDEX
            if path.is_file():
                for line in path.read_text().splitlines():
                    try:
                        self._seen.add(str(json.loads(line)["digest"]))
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line from an interrupted write: that digest is re-noted
        return self._seen

    def split(self, tensors: dict[str, torch.Tensor]) -> Split:
        """Decide, group by group, what is shared; writes the shared files that become needed."""
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors.items():
            groups.setdefault(group_of(name), {})[name] = tensor
        seen = self._index()
        result = Split(own={})
        for members in groups.values():
            digest = group_digest(members)
            path = self.folder / f"g-{digest}.safetensors"
            if path.is_file():
                os.utime(path)  # reused: fresh again for `models gc`'s grace period
                result.shared.append(path)
            elif digest in seen:
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp = self.folder / f".g-{digest}.{os.getpid()}.tmp"
                save_tensors({k: v.contiguous() for k, v in members.items()}, tmp)
                tmp.replace(path)
                result.shared.append(path)
                result.created.append(path)
            else:
                result.own.update(members)
                result.first_seen.append(digest)
                continue
            result.shared_bytes += sum(t.numel() * t.element_size() for t in members.values())
        return result

    def note(self, digests: list[str]) -> None:
        """Record first sightings (after the version that holds them is in place)."""
        if not digests:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / INDEX
        start = ""
        if path.is_file() and path.stat().st_size:
            with path.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                start = "" if fh.read(1) == b"\n" else "\n"  # end a torn last line first
        with path.open("a") as fh:
            fh.write(start + "".join(json.dumps({"digest": d}) + "\n" for d in digests))
        self._index().update(digests)


def store_shared_tokenizer(repo: LocalRepository, source: Path) -> Path:
    """Store a tokenizer file once per repository, named by its content hash; returns its path."""
    data = source.read_bytes()
    target = repo.shared_dir() / "tokenizers" / f"{hashlib.sha256(data).hexdigest()[:16]}.json"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    else:
        os.utime(target)  # reused: fresh again for `models gc`'s grace period (see store_shared_tensors)
    return target
