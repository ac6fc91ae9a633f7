"""Task handlers: text in, tensors to the model, tensors out, answers back. One interface, four tasks.

Every model, eager or TorchScript, is called as `module(input_ids, attention_mask, token_type_ids)` and
returns one tensor whose meaning the task fixes (see `inferpack.runtime.modeling`):
- question-answering: [batch, tokens, 2] start/end logits
- text-classification: [batch, labels] logits
- token-classification: [batch, tokens, labels] logits (one tag per token: B-PER, I-PER, O, ...)
- feature-extraction: [batch, hidden] mean-pooled, L2-normalised embeddings

Handlers describe their inputs and outputs in neutral terms (names, kinds, per-item shapes); transports turn
those into their own wire types (the V2 datatypes live in `inferpack.server.v2_api`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer

from inferpack.errors import InvalidInput
from inferpack.repository.manifest import ClassScores, Task

MAX_ANSWER_TOKENS = 30
# "json": one JSON document per item (a list or an object) whose size varies from item to item, such as
# token-classification's entities; a transport sends it as a structure (seed API) or as JSON text (V2).
OutputKind = Literal["text", "float", "int", "json"]
Result = dict[str, Any]  # one item's outputs by name
IGNORED_TAGS = ("O",)  # the "outside any entity" tag: its groups are not entities (as transformers' pipeline)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One named text input of a task."""

    name: str
    optional: bool = False


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One named output of a task, per item: its kind and shape (empty for a scalar; -1 where unknown)."""

    name: str
    kind: OutputKind
    shape: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TextInput:
    """One request item: a text, and for pair tasks (QA: question + context) a second text."""

    text: str
    text_pair: str | None = None


@dataclass(slots=True)
class Encoded:
    """A dynamically padded batch, plus the encodings kept for post-processing (offsets)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    encodings: list[Encoding]

    def select(self, rows: list[int]) -> Encoded:
        """The same batch restricted to some rows (padding width unchanged)."""
        index = torch.tensor(rows, dtype=torch.long)
        return Encoded(
            self.input_ids[index],
            self.attention_mask[index],
            self.token_type_ids[index],
            [self.encodings[r] for r in rows],
        )


class TextTokenizer:
    """A fast tokenizer set up for dynamic padding and truncation to `max_length` tokens.

    Truncation cuts the second text (QA context) first; a first text longer than the limit falls back to
    cutting both, so an overlong question still gets an answer instead of an error.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.max_length = max_length
        # Two private copies: the shared original is never mutated, and each copy's settings stay fixed.
        self._pair_first = self._configure(tokenizer, "only_second")
        self._longest = self._configure(tokenizer, "longest_first")

    def _configure(self, original: Tokenizer, strategy: str) -> Tokenizer:
        tok = Tokenizer.from_str(original.to_str())
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length, strategy=strategy)
        return tok

    def encode(self, items: list[TextInput]) -> Encoded:
        """Tokenise a batch and pad it to its longest member (not to max_length)."""
        encodings = [self._encode_one(item) for item in items]
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(items), width), dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        types = np.zeros((len(items), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        return Encoded(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types), encodings)

    def _encode_one(self, item: TextInput) -> Encoding:
        if item.text_pair is None:
            return self._longest.encode(item.text)
        try:
            return self._pair_first.encode(item.text, item.text_pair)
        except Exception:  # the first text alone exceeds the limit: cut both instead
            return self._longest.encode(item.text, item.text_pair)


class TaskHandler(ABC):
    """Pre- and post-processing for one task, and the neutral description of its inputs and outputs."""

    task: Task
    pair_input: bool

    @abstractmethod
    def decode(self, output: torch.Tensor, batch: Encoded, items: list[TextInput]) -> list[Result]:
        """Turn the model's output tensor into one result dict per item."""

    @abstractmethod
    def raw(self, output: torch.Tensor, batch: Encoded) -> list[Result]:
        """The model's own output per item, in fp32 numpy, trimmed to the item's real tokens (no padding)."""

    @abstractmethod
    def outputs(self, hidden_size: int, labels: list[str] | None) -> list[OutputSpec]:
        """The decoded outputs: name, kind, per-item shape (-1 where unknown)."""

    def inputs(self) -> list[InputSpec]:
        """The text inputs, in order."""
        names = ["question", "context"] if self.pair_input else ["text"]
        return [InputSpec(n) for n in names]

    def finish(
        self, output: torch.Tensor, batch: Encoded, items: list[TextInput], raw: Sequence[bool] | None = None
    ) -> list[Result]:
        """Per item, the decoded result, or the model's own output where `raw` says so: raw and decoded
        requests share one forward, each item is post-processed its own way after it."""
        if raw is None or not any(raw):
            return self.decode(output, batch, items)
        if all(raw):
            return self.raw(output, batch)
        results: list[Result] = [{} for _ in items]
        as_raw = [i for i, flag in enumerate(raw) if flag]
        decoded = [i for i, flag in enumerate(raw) if not flag]
        for i, result in zip(as_raw, self.raw(output[as_raw], batch.select(as_raw)), strict=True):
            results[i] = result
        if decoded:
            subset = self.decode(output[decoded], batch.select(decoded), [items[i] for i in decoded])
            for i, result in zip(decoded, subset, strict=True):
                results[i] = result
        return results


class QuestionAnswering(TaskHandler):
    """Extractive QA: the most likely answer span inside the context, with its probability."""

    task: Task = "question-answering"
    pair_input = True

    def decode(self, output: torch.Tensor, batch: Encoded, items: list[TextInput]) -> list[Result]:
        logits = output.float().numpy()
        results = []
        for row, (enc, item) in enumerate(zip(batch.encodings, items, strict=True)):
            context = item.text_pair or ""
            positions = np.array([i for i, s in enumerate(enc.sequence_ids) if s == 1], dtype=np.int64)
            if positions.size == 0:  # context truncated away entirely
                results.append({"answer": "", "score": 0.0, "start": 0, "end": 0})
                continue
            start = logits[row, positions, 0]
            end = logits[row, positions, 1]
            scores = start[:, None] + end[None, :]
            span = np.subtract.outer(np.arange(positions.size), np.arange(positions.size))
            allowed = (span <= 0) & (span > -MAX_ANSWER_TOKENS)  # end >= start, bounded length
            scores = np.where(allowed, scores, -np.inf)
            best = int(np.argmax(scores))
            i, j = divmod(best, positions.size)
            log_norm = _logsumexp(start) + _logsumexp(end)
            char_start = enc.offsets[positions[i]][0]
            char_end = enc.offsets[positions[j]][1]
            results.append(
                {
                    "answer": context[char_start:char_end],
                    "score": float(math.exp(float(scores[i, j]) - log_norm)),
                    "start": int(char_start),
                    "end": int(char_end),
                }
            )
        return results

    def raw(self, output: torch.Tensor, batch: Encoded) -> list[Result]:
        """start_logits and end_logits over the item's tokens (question and context, special tokens too)."""
        logits = output.float().numpy()
        return [
            {
                "start_logits": logits[row, : len(enc.ids), 0].astype(np.float32),
                "end_logits": logits[row, : len(enc.ids), 1].astype(np.float32),
            }
            for row, enc in enumerate(batch.encodings)
        ]

    def outputs(self, hidden_size: int, labels: list[str] | None) -> list[OutputSpec]:
        """answer (text), score, start/end character offsets."""
        return [
            OutputSpec("answer", "text"),
            OutputSpec("score", "float"),
            OutputSpec("start", "int"),
            OutputSpec("end", "int"),
        ]


class TextClassification(TaskHandler):
    """Single text (or pair) -> label, score and the probability of every label."""

    task: Task = "text-classification"
    pair_input = False

    def __init__(self, labels: list[str] | None, class_scores: ClassScores = "softmax") -> None:
        self.labels = labels
        self.class_scores = class_scores

    def decode(self, output: torch.Tensor, batch: Encoded, items: list[TextInput]) -> list[Result]:
        logits = output.float()
        # as transformers' text-classification pipeline: independent labels (multi-label, or one label)
        # each get a sigmoid; a softmax would make one label always 1.0 and multi-label scores compete
        scores = torch.sigmoid(logits) if self.class_scores == "sigmoid" else torch.softmax(logits, dim=-1)
        probs = scores.numpy()
        labels = self.labels or [f"LABEL_{i}" for i in range(probs.shape[1])]
        best = probs.argmax(axis=1)
        return [
            {"label": labels[int(k)], "score": float(p[k]), "probabilities": p.astype(np.float32)}
            for p, k in zip(probs, best, strict=True)
        ]

    def raw(self, output: torch.Tensor, batch: Encoded) -> list[Result]:
        """logits over the labels."""
        return [{"logits": row.astype(np.float32)} for row in output.float().numpy()]

    def inputs(self) -> list[InputSpec]:
        """text, and an optional text_pair."""
        return [InputSpec("text"), InputSpec("text_pair", optional=True)]

    def outputs(self, hidden_size: int, labels: list[str] | None) -> list[OutputSpec]:
        """label (text), score, probabilities (one per label)."""
        return [
            OutputSpec("label", "text"),
            OutputSpec("score", "float"),
            OutputSpec("probabilities", "float", (len(labels) if labels else -1,)),
        ]


@dataclass(frozen=True, slots=True)
class TaggedToken:
    """One real token of a text with its most likely tag, that tag's probability and its characters."""

    tag: str
    score: float
    start: int
    end: int


def _split_tag(tag: str) -> tuple[str, str]:
    """(position, entity type) of an IOB tag: B-PER -> (B, PER), I-PER -> (I, PER); a tag without a B-/I-
    prefix (PER, O) continues a run of the same tag, as an I- tag would."""
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


def group_entities(tokens: Sequence[TaggedToken], text: str) -> list[Result]:
    """Entities from tagged tokens, by the rule of transformers' "simple" aggregation: a token joins the
    run before it when its entity type is the run's last token's type and it is not a B- tag; each run
    becomes one entity of its first tag's type, scored by the mean of its tokens' scores, spanning the
    first token's start to the last token's end. Runs of an ignored tag (O) are dropped. `word` is the
    text's own characters over that span (case and spacing kept), not the tokens joined back."""
    runs: list[list[TaggedToken]] = []
    for token in tokens:
        if runs:
            position, kind = _split_tag(token.tag)
            if kind == _split_tag(runs[-1][-1].tag)[1] and position != "B":
                runs[-1].append(token)
                continue
        runs.append([token])
    entities: list[Result] = []
    for run in runs:
        kind = _split_tag(run[0].tag)[1]  # the same reading of a tag as the grouping above
        if kind in IGNORED_TAGS:
            continue
        start, end = run[0].start, run[-1].end
        entities.append(
            {
                "entity_group": kind,
                "score": float(np.mean([t.score for t in run])),
                "word": text[start:end],
                "start": start,
                "end": end,
            }
        )
    return entities


class TokenClassification(TaskHandler):
    """Text -> named entities (or any IOB tagging): one tag per token, runs of tokens grouped into entities
    with their character offsets in the text, as transformers' token-classification pipeline with
    `aggregation_strategy="simple"` answers."""

    task: Task = "token-classification"
    pair_input = False

    def __init__(self, labels: list[str] | None) -> None:
        self.labels = labels

    def decode(self, output: torch.Tensor, batch: Encoded, items: list[TextInput]) -> list[Result]:
        # one tag per token: a softmax over the tags (the pipeline's rule; no multi-label tagging)
        probs = torch.softmax(output.float(), dim=-1).numpy()
        labels = self.labels or [f"LABEL_{i}" for i in range(probs.shape[-1])]
        best = probs.argmax(axis=-1)
        results = []
        for row, (enc, item) in enumerate(zip(batch.encodings, items, strict=True)):
            tokens = [
                TaggedToken(labels[int(best[row, i])], float(probs[row, i, best[row, i]]), start, end)
                # the encoding has the item's own tokens only: padding columns are never read
                for i, (special, sequence, (start, end)) in enumerate(
                    zip(enc.special_tokens_mask, enc.sequence_ids, enc.offsets, strict=True)
                )
                if not special and sequence == 0  # [CLS], [SEP] carry no characters of the text
            ]
            results.append({"entities": group_entities(tokens, item.text)})
        return results

    def raw(self, output: torch.Tensor, batch: Encoded) -> list[Result]:
        """logits: [tokens, labels] over the item's tokens (special tokens too, padding cut)."""
        logits = output.float().numpy()
        return [
            {"logits": logits[row, : len(enc.ids)].astype(np.float32)}
            for row, enc in enumerate(batch.encodings)
        ]

    def inputs(self) -> list[InputSpec]:
        """text (offsets and words refer to it)."""
        return [InputSpec("text")]

    def outputs(self, hidden_size: int, labels: list[str] | None) -> list[OutputSpec]:
        """entities: per item a list of {entity_group, score, word, start, end}, as long as the text has
        entities (a JSON document: V2 sends it as one BYTES element per item)."""
        return [OutputSpec("entities", "json")]


class FeatureExtraction(TaskHandler):
    """Text -> a normalised sentence embedding (mean pooling over real tokens)."""

    task: Task = "feature-extraction"
    pair_input = False

    def decode(self, output: torch.Tensor, batch: Encoded, items: list[TextInput]) -> list[Result]:
        rows = output.float().numpy().astype(np.float32)
        return [{"embedding": row} for row in rows]

    def raw(self, output: torch.Tensor, batch: Encoded) -> list[Result]:
        """embedding: the model's own output is already the pooled sentence vector."""
        return [{"embedding": row.astype(np.float32)} for row in output.float().numpy()]

    def outputs(self, hidden_size: int, labels: list[str] | None) -> list[OutputSpec]:
        """embedding (hidden_size floats)."""
        return [OutputSpec("embedding", "float", (hidden_size,))]


def handler_for(
    task: Task, labels: list[str] | None = None, class_scores: ClassScores = "softmax"
) -> TaskHandler:
    """The handler of a task (a classifier's labels and scores, a tagger's tags: the manifest's `labels`,
    `class_scores`)."""
    if task == "question-answering":
        return QuestionAnswering()
    if task == "text-classification":
        return TextClassification(labels, class_scores)
    if task == "token-classification":
        return TokenClassification(labels)
    if task == "feature-extraction":
        return FeatureExtraction()
    raise InvalidInput(f"unknown task {task!r}")


def _logsumexp(values: np.ndarray[Any, Any]) -> float:
    top = float(values.max())
    return top + math.log(float(np.exp(values - top).sum()))
