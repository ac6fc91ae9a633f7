"""Where the planner's models come from: a CSV file or a model repository folder (I/O lives here)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from inferpack.errors import ConfigError
from inferpack.planner.problem import ModelDemand

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Weights are file-backed once loaded, but activations, tokenizer and allocator slack add to them; this
# rough factor only applies when a manifest carries no measured footprint.
FILE_SIZE_FACTOR = 1.2
FILE_SIZE_BASE_MB = 30.0


def read_models_csv(path: Path, default_class: str) -> list[ModelDemand]:
    """Models from a CSV with columns id,memory_mb,rate_rps (and optionally model_class)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    need = {"id", "memory_mb", "rate_rps"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise ConfigError(f"{path}: the header must name the columns id,memory_mb,rate_rps")
    models: list[ModelDemand] = []
    for line, row in enumerate(reader, start=2):
        try:
            models.append(
                ModelDemand(
                    id=row["id"].strip(),
                    memory_mb=float(row["memory_mb"]),
                    rate_rps=float(row["rate_rps"]),
                    model_class=(row.get("model_class") or default_class).strip(),
                )
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}:{line}: {exc}") from exc
        if not MODEL_ID.match(models[-1].id):
            raise ConfigError(f"{path}:{line}: invalid model id {models[-1].id!r}")
    return models


def _latest_version(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def model_memory_mb(version_dir: Path) -> float:
    """A model version's resident memory: the manifest's measured `footprint.resident_mb` when present,
    else an estimate from the size of its files. Kept in one function so it can later ask the repository
    API instead of reading files."""
    manifest = version_dir / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{manifest} is not valid JSON: {exc}") from exc
        footprint = data.get("footprint") if isinstance(data, dict) else None
        resident = footprint.get("resident_mb") if isinstance(footprint, dict) else None
        if isinstance(resident, int | float) and resident > 0:
            return float(resident)
    size = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
    return FILE_SIZE_BASE_MB + FILE_SIZE_FACTOR * size / 2**20


def read_repository(root: Path, default_class: str, rate_rps: float) -> list[ModelDemand]:
    """Models of a repository folder: every sub-folder with a valid id and at least one version."""
    if not root.is_dir():
        raise ConfigError(f"repository {root} is not a folder")
    models: list[ModelDemand] = []
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or not MODEL_ID.match(model_dir.name):
            continue
        version = _latest_version(model_dir)
        if version is None:
            continue
        models.append(ModelDemand(model_dir.name, model_memory_mb(version), rate_rps, default_class))
    if not models:
        raise ConfigError(f"repository {root} holds no model", hint="make one with `inferpack models demo`")
    return models
