"""Layer groups stored once across imports (repository.sharing), without any model."""

from __future__ import annotations

from pathlib import Path

import torch

from inferpack.repository.local import LocalRepository
from inferpack.repository.sharing import INDEX, GroupStore, group_of


def test_group_of_names_layers_and_modules() -> None:
    assert group_of("bert.encoder.layer.11.attention.self.query.weight") == "bert.encoder.layer.11"
    assert group_of("distilbert.transformer.layer.0.ffn.lin1.bias") == "distilbert.transformer.layer.0"
    assert group_of("bert.embeddings.word_embeddings.weight") == "bert.embeddings"
    assert group_of("embeddings.LayerNorm.weight") == "embeddings"
    assert group_of("qa_outputs.weight") == "qa_outputs"
    assert group_of("classifier.dense.weight") == "classifier"


def _weights(top: float) -> dict[str, torch.Tensor]:
    return {
        "enc.layer.0.w": torch.ones(4, 4),
        "enc.layer.1.w": torch.full((4, 4), top),
        "head.weight": torch.full((2, 4), top),
    }


def test_a_group_is_shared_from_its_second_sighting(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path)
    first = GroupStore(repo).split(_weights(1.0))
    assert not first.shared and set(first.own) == {"enc.layer.0.w", "enc.layer.1.w", "head.weight"}
    GroupStore(repo).note(first.first_seen)
    (tmp_path / "_shared" / "weights" / INDEX).open("a").write('{"digest": "torn')  # an interrupted note
    second = GroupStore(repo).split(_weights(2.0))  # a new store reads the index from disk
    assert [p.name.startswith("g-") for p in second.shared] == [True]
    assert set(second.own) == {"enc.layer.1.w", "head.weight"} and second.created == second.shared
    GroupStore(repo).note(second.first_seen)  # after the torn line: still read back
    assert set(second.first_seen) <= GroupStore(repo)._index()
    third = GroupStore(repo).split(_weights(3.0))
    assert third.shared == second.shared and not third.created  # the shared file is reused
    assert third.shared_bytes == 4 * 4 * 4
