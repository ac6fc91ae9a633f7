"""The per-version manifest (`manifest.json`): everything a server needs to load and run a model version."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from inferpack.errors import RepositoryError
from inferpack.jsonfile import StrictModel, read_json_model
from inferpack.plan import TargetName as TargetName  # one name for the processor kind, shared with plans
from inferpack.repository.files import umask_mode

Task = Literal["question-answering", "text-classification", "token-classification", "feature-extraction"]
Format = Literal["safetensors", "torchscript", "onnx"]
DType = Literal["fp32", "bf16", "fp16"]
Quantization = Literal["none", "int8-dynamic"]
Pooling = Literal["mean", "cls", "max"]
ClassScores = Literal["softmax", "sigmoid"]
TASKS: tuple[Task, ...] = (
    "question-answering",
    "text-classification",
    "token-classification",
    "feature-extraction",
)
# Tasks whose model output has a tokens dimension ([batch, tokens, ...]): padding columns are cut from it.
PER_TOKEN_TASKS: tuple[Task, ...] = ("question-answering", "token-classification")
MANIFEST_FILE = "manifest.json"


class Footprint(StrictModel):
    """Measured (never guessed) cost of holding the model loaded, filled in after a real load."""

    resident_mb: float = Field(ge=0, description="Resident memory added by loading it (RSS delta).")
    load_seconds: float = Field(ge=0, description="Wall time of a cold load, warm-up included.")
    measured_on: str = Field(description="Hardware tag of the machine that measured it.")


class Agreement(StrictModel):
    """How closely a version's outputs match a reference: eager fp32 for a compiled version (written by
    `inferpack compile`), transformers' own model for an imported one (written by `inferpack models
    import`)."""

    max_abs_diff: float
    cosine: float = Field(description="Mean cosine similarity of output rows to eager fp32.")
    tolerance: float
    passed: bool


class Manifest(StrictModel):
    """What is in one version folder and how to run it."""

    format: Format
    task: Task
    weights: str = Field(
        description="Weights file in the version folder: model.safetensors, model.pt or model.onnx."
    )
    config: str | None = Field(
        default="config.json", description="transformers architecture config (safetensors format)."
    )
    tokenizer: str = Field(
        default="tokenizer.json",
        description="Fast-tokenizer file, relative to the version folder; may point into <repo>/_shared/.",
    )
    shared_weights: list[str] = Field(
        default_factory=list,
        description="safetensors files of tensors shared with other models (e.g. a common base), relative "
        "to the version folder, usually in <repo>/_shared/weights/; the model's own file overrides them.",
    )
    max_sequence_length: int = Field(default=128, ge=8, le=4096)
    dtype: DType = "fp32"
    quantization: Quantization = "none"
    target: TargetName = "cpu"
    static_shape: tuple[int, int] | None = Field(
        default=None,
        description="[batch, tokens] a static-shape graph (target neuron) was traced with; the server pads "
        "every batch to it.",
    )
    labels: list[str] | None = Field(
        default=None,
        description="Class names (text-classification) or token tags such as B-PER, I-PER, O "
        "(token-classification), in the head's output order.",
    )
    class_scores: ClassScores = Field(
        default="softmax",
        description="text-classification: how logits become scores, by transformers' rule for the "
        "checkpoint: softmax over the labels (single-label), or a sigmoid per label (problem_type "
        "multi_label_classification, or a one-label head).",
    )
    hidden_size: int | None = Field(default=None, ge=1, description="Width of embeddings (metadata).")
    parameters: int | None = Field(default=None, ge=0, description="Parameter count.")
    compiled_from: int | None = Field(default=None, description="Version this one was compiled from.")
    agreement: Agreement | None = None
    pooling: Pooling = Field(
        default="mean",
        description="feature-extraction: how token states become one embedding (sentence-transformers' "
        "Pooling module): mean over real tokens, the first (CLS) token, or the max over real tokens.",
    )
    normalize: bool = Field(default=True, description="feature-extraction: L2-normalise the embedding.")
    source: str | None = Field(
        default=None, description="Where an imported version came from (a folder, hub id or file)."
    )
    source_fingerprint: str | None = Field(
        default=None, description="Hash of the imported source's file names, sizes and config."
    )
    footprint: Footprint | None = None
    description: str = ""


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest file; errors name the file."""
    return read_json_model(path, Manifest, "manifest", error=RepositoryError)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write a manifest atomically (a reader never sees half a file)."""
    text = manifest.model_dump_json(indent=2, exclude_none=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-")
    os.fchmod(fd, umask_mode())  # mkstemp's 0600 would hide the manifest from a server of another user
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
