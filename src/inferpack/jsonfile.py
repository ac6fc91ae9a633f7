"""Reading the project's JSON files (plans, endpoints, manifests, run configs) into pydantic models, with
one wording for the errors: the file, what it should have been, and what to do next; and `StrictModel`,
the base of every model those files (and the typed options around them) are made of."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from inferpack.errors import ConfigError, InferpackError

M = TypeVar("M", bound=BaseModel)
GZIP_MAGIC = b"\x1f\x8b"


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields: a misspelt key in a file is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


def read_json_model(
    path: Path,
    model: type[M],
    what: str,
    *,
    error: type[InferpackError] = ConfigError,
    missing_hint: str | None = None,
) -> M:
    """Parse `path` (JSON, or gzip-compressed JSON) as `model`; a missing or invalid file raises `error`
    naming the file and the problem."""
    try:
        raw = path.read_bytes()
        # gzip-compressed files are read the same way (the Kubernetes placement ConfigMap's plan.json.gz)
        text = (gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw).decode()
    except FileNotFoundError as exc:
        raise error(f"{what} {path} not found", hint=missing_hint) from exc
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise error(f"{what} {path} is not valid: {exc}") from exc
    except OSError as exc:  # e.g. PermissionError: say which file, never an anonymous internal error
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    return parse_json_model(text, model, f"{what} {path}", error=error)


def parse_json_model(text: str, model: type[M], what: str, *, error: type[InferpackError] = ConfigError) -> M:
    """Parse JSON `text` as `model`; invalid JSON or content raises `error` saying `what` is not valid."""
    try:
        return model.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise error(f"{what} is not valid: {exc}") from exc


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
