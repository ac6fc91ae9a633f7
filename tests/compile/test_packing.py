"""Prepacked linear weights for traced bf16 graphs (compile/packing.py): same outputs bit for bit, the
model's own module untouched, one packed copy per weight however many graphs hold it, freed with them."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from inferpack.compile.packing import _PACKED, PackedLinear, packed_copy, packs
from inferpack.runtime.hardware import cpu_has_native_bf16
from inferpack.runtime.memory import module_storages

native_bf16 = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="packing applies only on a CPU with native bf16 (AVX512-BF16, AMX)"
)


def _mlp(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Sequential(nn.Linear(64, 8))).to(dtype).eval()


def test_fp32_modules_are_not_packed() -> None:
    module = _mlp(torch.float32)
    assert not packs(module)
    assert packed_copy(module) is module  # nothing to change: the module itself is traced


def test_a_module_without_linear_layers_is_not_packed() -> None:
    module = nn.Sequential(nn.GELU()).to(torch.bfloat16)
    assert not packs(module)
    assert packed_copy(module) is module


@native_bf16
def test_a_packed_copy_answers_bit_for_bit_and_leaves_the_module_alone() -> None:
    module = _mlp(torch.bfloat16)
    assert packs(module)
    copy = packed_copy(module)
    assert type(module[0]) is nn.Linear and type(module[2][0]) is nn.Linear  # the model is unchanged
    assert copy[0].original_name == PackedLinear.__name__  # type: ignore[operator,index]
    assert copy[2][0].original_name == PackedLinear.__name__  # type: ignore[operator,index]
    with torch.inference_mode():
        for rows in (1, 3, 25):
            x = torch.randn(rows, 32, dtype=torch.bfloat16)
            assert torch.equal(copy(x), module(x))
            graph = torch.jit.trace(copy, (x,), check_trace=False)
            assert torch.equal(graph(torch.flip(x, [0])), module(torch.flip(x, [0])))


@native_bf16
def test_a_shared_weight_is_packed_once_and_freed_with_its_last_graph() -> None:
    shared = _mlp(torch.bfloat16)
    other = _mlp(torch.bfloat16)
    other[0] = shared[0]  # two tenants sharing their base's first layer, each with its own second one
    gc.collect()
    before = len(_PACKED)
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        graphs = [torch.jit.trace(packed_copy(m), (x,), check_trace=False) for m in (shared, other)]
    assert len(_PACKED) == before + 3  # the shared layer once, each tenant's own layer
    # the ledger: each packed weight under one key of its own, the shared one common to both graphs
    first, second = ({k: v for k, v in module_storages(g).items() if k < 0} for g in graphs)
    assert len(first) == len(second) == 2 and len(set(first) & set(second)) == 1
    weight = shared[0].weight
    assert first[next(iter(set(first) & set(second)))] == weight.numel() * weight.element_size()
    # plain weights are the modules' own storages: no copy of them
    assert {k for k in module_storages(graphs[0]) if k >= 0} == set(module_storages(shared))
    del graphs
    gc.collect()
    assert len(_PACKED) == before


@native_bf16
def test_only_bf16_linear_layers_are_packed() -> None:
    module = _mlp(torch.bfloat16)
    module[2][0] = module[2][0].float()  # a head kept in fp32 (its input cast by whoever calls it)
    copy = packed_copy(module)
    assert copy[0].original_name == PackedLinear.__name__  # type: ignore[operator,index]
    assert copy[2][0] is module[2][0]  # left as it is
