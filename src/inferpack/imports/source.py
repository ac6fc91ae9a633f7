"""What SOURCE names: a Hugging Face folder, a TorchScript file, or a hub model id in the local cache."""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inferpack.errors import ImportFailed

SourceKind = Literal["folder", "torchscript"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class Source:
    """A resolved source: a local folder or file, what it is, how to name it in a manifest, its id."""

    kind: SourceKind
    path: Path
    label: str  # recorded in the manifest: the absolute path, or hf://org/name for a hub id
    default_id: str


def resolve_source(text: str, base: Path | None = None) -> Source:
    """A folder or file path (relative to `base`, default the working folder), else a hub model id."""
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.is_dir():
        return Source("folder", path.resolve(), str(path.resolve()), path.resolve().name)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ImportFailed(
                f"{path} is not a TorchScript file (a torch.jit.save archive) or is truncated",
                hint="SOURCE is a Hugging Face model folder, a TorchScript file or a hub model id",
            )
        return Source("torchscript", path.resolve(), str(path.resolve()), path.stem)
    if _HUB_ID.fullmatch(text) and not text.startswith((".", "/")):
        try:
            folder = hub_snapshot(text)
        except ImportFailed as exc:  # perhaps a mistyped folder: say both
            message = f"there is no folder or file {path}, and {exc.message}"
            raise ImportFailed(message, hint=exc.hint) from exc
        return Source("folder", folder, f"hf://{text}", text.rsplit("/", 1)[-1])
    raise ImportFailed(
        f"{text!r} is neither a folder, a file nor a Hugging Face model id",
        hint="SOURCE is a model folder (config.json + weights + tokenizer), a TorchScript file with "
        "--tokenizer and --task, or a hub id such as org/name",
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (read
    now, not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks huggingface_hub never to reach the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of a hub model: from the cache, else downloaded when the hub may be reached."""
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache), local_files_only=True))
    except Exception as cached_exc:  # not in the cache (LocalEntryNotFoundError and friends)
        if hub_offline():
            raise ImportFailed(
                f"{repo_id!r} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set",
                hint="download it where the hub is reachable (huggingface-cli download "
                f"{repo_id}) into that cache, or import its folder",
            ) from cached_exc
    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache)))
    except Exception as exc:
        raise ImportFailed(
            f"{repo_id!r} is not in the Hugging Face cache {cache} and could not be downloaded: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="check the id and the network (or set HF_HUB_CACHE / HF_HOME to the cache that holds it)",
        ) from exc
