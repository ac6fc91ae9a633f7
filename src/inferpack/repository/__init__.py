"""The model repository: layout, manifests, model ids, and the local-disk (and S3) backends."""

from __future__ import annotations

from inferpack.repository.ids import validate_model_id
from inferpack.repository.local import LocalRepository, ModelRepository, open_repository
from inferpack.repository.manifest import Footprint, Manifest

__all__ = [
    "Footprint",
    "LocalRepository",
    "Manifest",
    "ModelRepository",
    "open_repository",
    "validate_model_id",
]
