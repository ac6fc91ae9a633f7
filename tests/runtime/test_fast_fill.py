"""The cold path's shortcuts give what the long way gives: `assign_weights` against
`load_state_dict(assign=True)`, a refilled shell against a fresh one, the cached own paths against a walk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferpack.errors import ModelLoadFailed
from inferpack.repository import LocalRepository
from inferpack.runtime.crossbatch import own_paths
from inferpack.runtime.modeling import load_model
from inferpack.runtime.skeletons import assign_weights, build_skeleton, fill_weights

CONFIG = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 50,
}


def _state(seed: int) -> dict[str, torch.Tensor]:
    real = build_skeleton(CONFIG, "question-answering").model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in real.state_dict().items()}


def test_assign_weights_matches_load_state_dict() -> None:
    state = _state(0)
    state["unexpected.weight"] = torch.zeros(1)  # keys the module lacks are ignored, as strict=False does
    fast = build_skeleton(CONFIG, "question-answering").model
    slow = build_skeleton(CONFIG, "question-answering").model
    assign_weights(fast, state)
    slow.load_state_dict(state, strict=False, assign=True)
    fast_state, slow_state = fast.state_dict(keep_vars=True), slow.state_dict(keep_vars=True)
    assert fast_state.keys() == slow_state.keys()
    for key, value in fast_state.items():
        assert value.data_ptr() == state[key].data_ptr() == slow_state[key].data_ptr()  # no copies
        assert type(value) is type(slow_state[key])
        assert value.requires_grad == slow_state[key].requires_grad


def test_assign_weights_names_missing_and_misshapen_tensors() -> None:
    state = _state(0)
    key = next(iter(state))
    with pytest.raises(ModelLoadFailed, match="lacks 1 tensors"):
        assign_weights(build_skeleton(CONFIG, "question-answering").model, {**state, key: None})  # type: ignore[dict-item]
    bad = {**state, key: torch.zeros(3, 3)}
    with pytest.raises(ModelLoadFailed, match="shape"):
        assign_weights(build_skeleton(CONFIG, "question-answering").model, bad)


def test_a_refilled_shell_computes_what_a_fresh_one_does() -> None:
    ids = torch.tensor([[1, 5, 7, 2]])
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    fresh = fill_weights(build_skeleton(CONFIG, "question-answering"), _state(1))
    shell = fill_weights(build_skeleton(CONFIG, "question-answering"), _state(0))
    shell.to_empty(device="meta")  # what the skeleton pool does at an unload
    refilled = fill_weights(shell, _state(1))
    assert not refilled.training
    with torch.inference_mode():
        assert torch.equal(fresh.run(ids, mask, types)[0], refilled.run(ids, mask, types)[0])


def test_cached_own_paths_match_a_walk_of_each_model(demo_repo: Path) -> None:
    repo = LocalRepository(demo_repo)
    models = [load_model(repo, m, dtype="fp32", warmup=False) for m in ("qa-0000", "qa-0001")]
    for model in models:  # the second came from the cache: it must still be what a walk finds
        shared = [t for g in model.extra["shared"] for t in g.tensors.values()]
        assert isinstance(model.module, torch.nn.Module)
        assert model.extra["own_paths"] == own_paths(model.module, shared)
        assert model.extra["own_paths"]  # tenants of one base: some layers are their own
