"""What a Hugging Face model folder holds: its task, labels, pooling, weights and tokenizer files.

Pure inspection of files (no torch, no transformers): every problem becomes one `ImportFailed` naming the
file and what to do, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferpack.errors import ImportFailed
from inferpack.repository.manifest import TASKS, ClassScores, Pooling, Task

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS, f"{SAFETENSORS}.index.json", PYTORCH_BIN, f"{PYTORCH_BIN}.index.json")
SLOW_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model", "tokenizer.model")
SUPPORTED = (
    "...ForQuestionAnswering (question-answering), ...ForSequenceClassification (text-classification, "
    "labels from id2label), ...ForTokenClassification (token-classification, tags such as B-PER from "
    "id2label), a bare encoder ...Model or a sentence-transformers folder (feature-extraction)"
)
MAX_SEQUENCE_LENGTH = 512  # the longest input a server pads to; longer encoders are cut here
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")  # position ids start after the padding index


@dataclass(frozen=True)
class FolderModel:
    """A checked Hugging Face folder: where its files are and how to serve it."""

    root: Path  # the transformers model's files (a sentence-transformers folder's Transformer module)
    config: dict[str, Any]
    task: Task
    labels: list[str] | None
    class_scores: ClassScores
    pooling: Pooling
    normalize: bool
    weight_files: list[Path]
    tokenizer_json: Path | None  # None: a slow tokenizer, converted at import
    max_sequence_length: int


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; ImportFailed naming the file when it is missing, truncated or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportFailed(f"{path} is missing ({what})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImportFailed(
            f"{path} is not valid JSON ({what}): {exc}",
            hint="the file is truncated or damaged: copy it again from where the model was saved",
        ) from None


def inspect_folder(folder: Path, task: Task | None = None) -> FolderModel:
    """Check a `save_pretrained` folder (or a sentence-transformers folder) and decide its task."""
    if not folder.is_dir():
        raise ImportFailed(f"{folder} is not a folder")
    root, pooling, normalize, sbert_length = _sentence_transformers(folder)
    config_path = root / CONFIG
    if not config_path.is_file():
        raise ImportFailed(
            f"{config_path} is missing: a Hugging Face model folder has config.json next to its weights",
            hint="save the model with transformers' save_pretrained(DIR), which writes config.json",
        )
    config = read_json(config_path, "the model's architecture config")
    if not isinstance(config, dict) or "model_type" not in config:
        raise ImportFailed(
            f"{config_path} has no model_type: it is not a transformers config",
            hint="save the model with transformers' save_pretrained(DIR)",
        )
    chosen = task or _task_from(config, sentence_transformers=pooling is not None, path=config_path)
    labels = _labels(config) if chosen in ("text-classification", "token-classification") else None
    return FolderModel(
        root=root,
        config=config,
        task=chosen,
        labels=labels,
        # a tagger's scores are a softmax over the tags whatever the config says (the pipeline's rule)
        class_scores="softmax" if chosen == "token-classification" else _class_scores(config),
        pooling=pooling or "mean",
        normalize=normalize,
        weight_files=weight_files(root),
        tokenizer_json=_tokenizer(root, folder),
        max_sequence_length=_max_length(config, root, sbert_length),
    )


def _task_from(config: dict[str, Any], *, sentence_transformers: bool, path: Path) -> Task:
    if sentence_transformers:
        return "feature-extraction"
    architectures = config.get("architectures") or []
    name = str(architectures[0]) if architectures else ""
    if name.endswith("ForQuestionAnswering"):
        return "question-answering"
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    if name.endswith("ForTokenClassification"):
        return "token-classification"
    if name.endswith("Model") and "For" not in name:
        return "feature-extraction"
    if not name:
        # config.save_pretrained (or a hand-written config) leaves it out; model.save_pretrained writes it.
        raise ImportFailed(
            f"{path} has no architectures entry, so the task of the checkpoint is unknown",
            hint=f"name the task with --task ({', '.join(TASKS)}), or save the model with "
            "model.save_pretrained(DIR), which records its architecture",
        )
    raise ImportFailed(
        f"{path}: cannot serve {name}; supported: {SUPPORTED}",
        hint=f"name the task with --task ({', '.join(TASKS)}) to use this checkpoint's encoder for it",
    )


def _class_scores(config: dict[str, Any]) -> ClassScores:
    """transformers' text-classification pipeline rule: a sigmoid per label for a multi-label checkpoint
    or a one-label head (num_labels defaults to id2label's size), else a softmax over the labels."""
    id2label = config.get("id2label")
    num_labels = len(id2label) if isinstance(id2label, dict) and id2label else config.get("num_labels", 2)
    if config.get("problem_type") == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def _labels(config: dict[str, Any]) -> list[str] | None:
    raw = config.get("id2label")
    if not isinstance(raw, dict) or not raw:
        return None
    return [str(raw[k]) for k in sorted(raw, key=int)]


def _sentence_transformers(folder: Path) -> tuple[Path, Pooling | None, bool, int | None]:
    """For a sentence-transformers folder: the Transformer module's folder, the pooling, whether a
    Normalize module follows, and max_seq_length; else (folder, None, True, None)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return folder, None, True, None
    modules = read_json(modules_path, "sentence-transformers modules")
    root, pooling, normalize = folder, None, False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = folder / str(module.get("path", ""))
        if kind == "Transformer":
            root = path
        elif kind == "Pooling":
            pooling = _pooling(path / CONFIG)
        elif kind == "Normalize":
            normalize = True
        else:
            raise ImportFailed(
                f"{modules_path}: the sentence-transformers module {kind!r} is not supported "
                "(supported: Transformer, Pooling, Normalize)",
                hint="import the encoder alone with --task feature-extraction (mean pooling), or drop "
                "the module",
            )
    if pooling is None:
        raise ImportFailed(f"{modules_path} names no Pooling module", hint="add one (mean, cls or max)")
    length = None
    sbert_config = root / "sentence_bert_config.json"
    if sbert_config.is_file():
        length = read_json(sbert_config, "sentence-transformers settings").get("max_seq_length")
    return root, pooling, normalize, int(length) if length else None


def _pooling(path: Path) -> Pooling:
    settings = read_json(path, "sentence-transformers pooling")
    modes = [k for k, v in settings.items() if k.startswith("pooling_mode") and v is True]
    names: dict[str, Pooling] = {
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_cls_token": "cls",
        "pooling_mode_max_tokens": "max",
    }
    if len(modes) != 1 or modes[0] not in names:
        raise ImportFailed(
            f"{path}: pooling {', '.join(modes) or 'none'} is not supported (supported: exactly one of "
            "mean, cls, max)",
            hint="re-save the model with one of those pooling modes",
        )
    return names[modes[0]]


def weight_files(root: Path) -> list[Path]:
    """The weights files transformers will read, checked for presence and (cheaply) for truncation."""
    for name in WEIGHT_FILES:
        path = root / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            index = read_json(path, "the sharded weights' index")
            shards = sorted(set(index.get("weight_map", {}).values()))
            missing = [s for s in shards if not (root / s).is_file()]
            if not shards or missing:
                raise ImportFailed(
                    f"{path} names shard(s) {', '.join(missing) or '(none)'} that are not in {root}",
                    hint="copy every shard the index lists into the folder",
                )
            files = [root / s for s in shards]
        else:
            files = [path]
        for file in files:
            _check_weights_file(file)
        return files
    raise ImportFailed(
        f"{root} holds no weights: expected {' or '.join(WEIGHT_FILES)}",
        hint="save the model with save_pretrained(DIR) (safetensors) or torch.save(state_dict, "
        f"DIR/{PYTORCH_BIN})",
    )


def _check_weights_file(path: Path) -> None:
    """Refuse a truncated file before transformers reads it (its own errors do not name the file)."""
    problem = ""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        except Exception as exc:
            problem = str(exc)
    elif not zipfile.is_zipfile(path):
        problem = "not a complete torch.save archive"
    if problem:
        raise ImportFailed(
            f"{path} is truncated or damaged: {problem}",
            hint="copy the file again from where the model was saved",
        )


def _tokenizer(root: Path, folder: Path) -> Path | None:
    """tokenizer.json when present (in the model or the sentence-transformers folder); None when only a
    slow tokenizer's files are there (converted at import); ImportFailed when there is none."""
    for base in (root, folder):
        if (base / "tokenizer.json").is_file():
            read_json(base / "tokenizer.json", "the fast tokenizer")  # a truncated copy is named here
            return base / "tokenizer.json"
    if any((root / name).is_file() for name in SLOW_TOKENIZER_FILES) or (root / "merges.txt").is_file():
        return None
    raise ImportFailed(
        f"{root} holds no tokenizer: expected tokenizer.json or a slow tokenizer's files "
        f"({', '.join(SLOW_TOKENIZER_FILES)}, merges.txt) with tokenizer_config.json",
        hint="save the tokenizer next to the model with tokenizer.save_pretrained(DIR)",
    )


def _max_length(config: dict[str, Any], root: Path, sbert_length: int | None) -> int:
    """The longest input to serve: sentence-transformers' max_seq_length, else the tokenizer's
    model_max_length and the encoder's position embeddings (RoBERTa-like models lose two to padding),
    capped at 512."""
    limit = MAX_SEQUENCE_LENGTH
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        limit = min(limit, positions - (2 if config.get("model_type") in ROBERTA_LIKE else 0))
    tokenizer_config = root / "tokenizer_config.json"
    if tokenizer_config.is_file():
        declared = read_json(tokenizer_config, "tokenizer settings").get("model_max_length")
        if isinstance(declared, int) and 8 <= declared < limit:
            limit = declared
    if sbert_length:
        limit = min(limit, sbert_length)
    return max(8, limit)


def fingerprint(paths: list[Path], root: Path) -> str:
    """A cheap identity of a source: its files' relative names and sizes, and config.json's bytes."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(f"{path.relative_to(root)}|{path.stat().st_size}\n".encode())
        if path.name == CONFIG:
            h.update(path.read_bytes())
    return h.hexdigest()[:32]


def source_files(root: Path) -> list[Path]:
    """Every file under a source folder (hidden ones excepted), for its fingerprint."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
