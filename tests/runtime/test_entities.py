"""token-classification's decoding: IOB tags grouped into entities by the rule of transformers' "simple"
aggregation, words cut from the text by offsets, special tokens and padding never read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from inferpack.repository.demo import minilm_path
from inferpack.runtime.tasks import TaggedToken, TextInput, TextTokenizer, group_entities, handler_for


def _tagged(words: list[str], tags: list[str], scores: list[float]) -> tuple[str, list[TaggedToken]]:
    """A text of the words joined by spaces, and one tagged token per word with its character span."""
    text, tokens = "", []
    for word, tag, score in zip(words, tags, scores, strict=True):
        start = len(text) + (1 if text else 0)
        text = f"{text} {word}" if text else word
        tokens.append(TaggedToken(tag, score, start, start + len(word)))
    return text, tokens


def test_runs_of_one_type_group_and_a_b_tag_starts_a_new_entity() -> None:
    text, tokens = _tagged(
        ["Ann", "Smith", "met", "Paris", "Berlin", "Ost", "Acme", "Corp", "Bo", "Li"],
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-ORG", "I-ORG", "PER", "I-PER"],
        [0.9, 0.8, 0.99, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.6],
    )
    got = group_entities(tokens, text)
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
        ("PER", "Ann Smith", 0, 9),  # B- then I- of the same type: one entity
        # "met" is O: dropped
        ("LOC", "Paris", 14, 19),  # the next B-LOC starts a new entity
        ("LOC", "Berlin Ost", 20, 30),
        ("ORG", "Acme Corp", 31, 40),  # an I- tag of another type starts one too
        ("PER", "Bo Li", 41, 46),  # a tag without prefix continues like an I- tag
    ]
    assert [e["score"] for e in got] == pytest.approx([0.85, 0.7, 0.55, 0.35, 0.4])


def test_words_keep_the_texts_own_characters() -> None:
    # the pipeline joins tokens back ("new york ,"); the text's own slice keeps case, spacing, punctuation
    text = "Flights to New  York, daily"
    tokens = [
        TaggedToken("B-LOC", 0.5, 11, 14),
        TaggedToken("I-LOC", 0.5, 16, 20),
        TaggedToken("I-LOC", 1, 20, 21),
    ]
    assert group_entities(tokens, text)[0]["word"] == "New  York,"
    assert group_entities([], text) == []
    assert group_entities([TaggedToken("O", 1.0, 0, 7)], text) == []


def test_special_tokens_and_padding_are_never_read() -> None:
    tokenizer = TextTokenizer(Tokenizer.from_file(str(minilm_path() / "tokenizer.json")), 32)
    items = [TextInput("Ann Smith lives in Paris"), TextInput("Hi")]
    batch = tokenizer.encode(items)
    long, short = (len(e.ids) for e in batch.encodings)
    assert long > short  # the short item is padded
    labels = ["O", "B-X", "I-X"]
    logits = torch.zeros(2, long, 3)
    logits[:, :, 1] = 5.0  # B-X everywhere: special tokens and padding too, unless they are skipped
    logits[0, 3:, :] = torch.tensor([5.0, 0.0, 0.0])  # item 0: O after "ann smith" ...
    logits[0, 2, :] = torch.tensor([0.0, 0.0, 5.0])  # ... whose second token continues the first (I-X)
    logits[0, long - 1, :] = torch.tensor([0.0, 5.0, 0.0])  # [SEP] tagged B-X
    logits[1, 1 : short - 1, :] = torch.tensor([5.0, 0.0, 0.0])  # item 1: its one real token is O
    handler = handler_for("token-classification", labels)
    first, second = handler.decode(logits, batch, items)
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in first["entities"]] == [
        ("X", "Ann Smith", 0, 9)
    ]
    expected = float(torch.softmax(torch.tensor([0.0, 5.0, 0.0]), 0)[1])
    assert first["entities"][0]["score"] == pytest.approx(expected)
    assert second["entities"] == []  # [CLS], [SEP] and the padding columns were all B-X
    raw = handler.raw(logits, batch)
    assert [r["logits"].shape for r in raw] == [(long, 3), (short, 3)]  # padding cut, special tokens kept
    np.testing.assert_array_equal(raw[1]["logits"], logits[1, :short].numpy())
    assert handler.outputs(32, labels)[0].kind == "json" and [i.name for i in handler.inputs()] == ["text"]


def test_without_labels_the_tags_are_named_by_index() -> None:
    tokenizer = TextTokenizer(Tokenizer.from_file(str(minilm_path() / "tokenizer.json")), 32)
    items = [TextInput("Paris")]
    batch = tokenizer.encode(items)
    logits = torch.zeros(1, len(batch.encodings[0].ids), 2)
    logits[0, :, 1] = 3.0
    (result,) = handler_for("token-classification").decode(logits, batch, items)
    assert [(e["entity_group"], e["word"]) for e in result["entities"]] == [("LABEL_1", "Paris")]
