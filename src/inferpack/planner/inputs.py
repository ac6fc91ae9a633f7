"""Where the planner's models come from: a CSV file or a model repository folder (I/O lives here)."""

from __future__ import annotations

import csv
from pathlib import Path

from inferpack.errors import ConfigError
from inferpack.planner.problem import ModelDemand
from inferpack.repository.footprint import MB, estimate_resident_bytes
from inferpack.repository.ids import is_valid_model_id
from inferpack.repository.local import LocalRepository, ModelRepository


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
        if not is_valid_model_id(models[-1].id):
            raise ConfigError(f"{path}:{line}: invalid model id {models[-1].id!r}")
    return models


def model_memory_mb(repository: ModelRepository, model_id: str) -> float:
    """The resident memory of a model's newest version, as the server estimates a load
    (`repository.footprint`): measured when its manifest says, else from its weight files."""
    version = repository.versions(model_id)[-1]
    return estimate_resident_bytes(repository, model_id, version) / MB


def read_repository(root: Path, default_class: str, rate_rps: float) -> list[ModelDemand]:
    """Every model of a repository (what `ModelRepository.model_ids` lists), at `rate_rps` each."""
    repository = LocalRepository(root)
    if not repository.exists():
        raise ConfigError(f"repository {root} is not a folder")
    models = [
        ModelDemand(model_id, model_memory_mb(repository, model_id), rate_rps, default_class)
        for model_id in repository.model_ids()
    ]
    if not models:
        raise ConfigError(f"repository {root} holds no model", hint="make one with `inferpack models demo`")
    return models
