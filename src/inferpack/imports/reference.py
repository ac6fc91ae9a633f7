"""transformers' own view of a source folder: its fast tokenizer (converting a slow one) and its model,
the reference an import is checked against.

Everything here imports transformers lazily (only an import pays for it) and turns transformers' errors
into `ImportFailed` naming the file and what to do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from inferpack.errors import ImportFailed
from inferpack.imports.folder import FolderModel
from inferpack.repository.manifest import Pooling, Task
from inferpack.runtime.skeletons import transformers_class
from inferpack.runtime.tasks import TextInput

SENTENCEPIECE_FILES = ("spm.model", "sentencepiece.bpe.model", "tokenizer.model")
# Short inputs (never truncated) of different lengths: a batch of them is padded, so the check covers the
# attention mask too. Pairs for QA (question, context).
CHECK_TEXTS = (
    TextInput("Who won the race?", "Ann won the race in Paris after a long day on the road."),
    TextInput("Where?", "The museum is in Rome."),
    TextInput("What colour is the sky on a clear day?", "On a clear day the sky is blue; at dusk it is red."),
)


def check_items(task: Task) -> list[TextInput]:
    """The inputs an import is checked on (pairs for question answering, single texts otherwise)."""
    if task == "question-answering":
        return list(CHECK_TEXTS)
    return [TextInput(item.text_pair or item.text) for item in CHECK_TEXTS]


def load_tokenizer(model: FolderModel) -> Any:
    """transformers' tokenizer of the folder (fast; a slow tokenizer's files are converted)."""
    from transformers import AutoTokenizer

    sentencepiece = [name for name in SENTENCEPIECE_FILES if (model.root / name).is_file()]
    if model.tokenizer_json is None and sentencepiece:
        missing = [m for m in ("sentencepiece", "google.protobuf") if not _installed(m)]
        if missing:
            raise ImportFailed(
                f"{model.root / sentencepiece[0]} is a sentencepiece model, and converting it to "
                f"tokenizer.json needs the Python package(s) {', '.join(missing)}",
                hint="pip install sentencepiece protobuf, or save tokenizer.json next to it with "
                "transformers' fast tokenizer (tokenizer.save_pretrained(DIR)) on a machine that has them",
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model.root), local_files_only=True)
        tokenizer.backend_tokenizer.to_str()  # a tokenizer without a fast backend fails here
    except ImportFailed:
        raise
    except Exception as exc:
        files = sorted(p.name for p in model.root.iterdir() if "token" in p.name or "vocab" in p.name or
                       p.suffix in (".model", ".txt"))  # fmt: skip
        raise ImportFailed(
            f"the tokenizer in {model.root} ({', '.join(files)}) cannot be converted to tokenizer.json: "
            f"{type(exc).__name__}: {_short(exc)}",
            hint="save a fast tokenizer (tokenizer.json) next to the model: "
            "AutoTokenizer.from_pretrained(...).save_pretrained(DIR)",
        ) from exc
    return tokenizer


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def tokenizer_json(model: FolderModel, tokenizer: Any) -> str:
    """The fast tokenizer as tokenizer.json text: the folder's own file, else the conversion's."""
    if model.tokenizer_json is not None:
        return model.tokenizer_json.read_text(encoding="utf-8")
    text: str = tokenizer.backend_tokenizer.to_str()
    return text


def load_reference(model: FolderModel) -> torch.nn.Module:
    """transformers' own model of the task from the folder, in fp32; refuses weights that do not match
    the config (missing tensors would otherwise be randomly initialised)."""
    weights = ", ".join(p.name for p in model.weight_files)
    from transformers.utils import logging as transformers_logging

    # The import's own progress and its own error (below) replace transformers' bars and load report.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    cls = transformers_class(model.task)
    try:
        try:
            loaded, info = cls.from_pretrained(
                str(model.root), dtype=torch.float32, output_loading_info=True, local_files_only=True
            )
        except RuntimeError as exc:
            if "ignore_mismatched_sizes" not in str(exc):
                raise
            # Load again only to learn which tensors have other shapes; refused below all the same.
            loaded, info = cls.from_pretrained(
                str(model.root),
                dtype=torch.float32,
                output_loading_info=True,
                local_files_only=True,
                ignore_mismatched_sizes=True,
            )
    except Exception as exc:
        raise ImportFailed(
            f"transformers cannot build the model in {model.root} from config.json and {weights}: "
            f"{type(exc).__name__}: {_short(exc)}",
            hint="the weights must be the ones saved with this config.json (same architecture and sizes)",
        ) from exc
    missing = sorted(info.get("missing_keys") or [])  # sets in transformers: sorted for one message
    if model.task == "feature-extraction":  # the encoder's pooler (absent in task checkpoints) goes unused
        missing = [k for k in missing if "pooler." not in k]
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if missing or mismatched:
        shown = ", ".join(_describe(k) for k in (missing or mismatched)[:3])
        raise ImportFailed(
            f"{weights} in {model.root} do not match config.json for {model.task}: "
            f"{len(missing)} tensor(s) missing, {len(mismatched)} of another shape (e.g. {shown})",
            hint="import the weights saved with this config.json"
            + (
                "; a checkpoint without this task's head (a bare encoder) imports as feature-extraction"
                if missing
                else ""
            ),
        )
    loaded.eval()
    module: torch.nn.Module = loaded
    return module


def _describe(key: object) -> str:
    """A missing key, or a mismatched one as `name (file shape -> config shape)`."""
    if isinstance(key, tuple) and len(key) == 3:
        return f"{key[0]} ({'x'.join(map(str, key[1]))} in the file, {'x'.join(map(str, key[2]))} by config)"
    return str(key)


def _short(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ReferenceOutput:
    """transformers' answer for one item: its token ids and the task's output row (float32)."""

    ids: list[int]
    row: torch.Tensor


def reference_outputs(
    model: torch.nn.Module,
    tokenizer: Any,
    items: list[TextInput],
    task: Task,
    pooling: Pooling,
    normalize: bool,
) -> list[ReferenceOutput]:
    """Run transformers' tokenizer and model on each item alone, as transformers' pipelines do, and turn
    the output into what the server's task head returns (computed here independently of the heads)."""
    results = []
    types = int(getattr(getattr(model, "config", None), "type_vocab_size", 2) or 0)
    with torch.inference_mode():
        for item in items:
            enc = tokenizer(item.text, item.text_pair, return_tensors="pt")
            if types < 2:  # one token type: a tokenizer made for another model may still send type 1
                enc.pop("token_type_ids", None)
            out = model(**enc, return_dict=True)
            if task == "question-answering":
                row = torch.stack([out.start_logits[0], out.end_logits[0]], dim=-1)
            elif task in ("text-classification", "token-classification"):
                row = out.logits[0]  # [labels], or [tokens, labels] for a tagger
            else:
                hidden = out.last_hidden_state[0].float()
                row = {"cls": hidden[0], "max": hidden.max(dim=0).values, "mean": hidden.mean(dim=0)}[pooling]
                if normalize:
                    row = row / row.norm().clamp(min=1e-12)
            results.append(ReferenceOutput([int(i) for i in enc["input_ids"][0]], row.float().reshape(-1)))
    return results
