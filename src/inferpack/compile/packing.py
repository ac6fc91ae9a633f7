"""Linear layers with their weights prepacked for oneDNN, for the traced graphs of hot bf16 models.

A bf16 `nn.Linear` on the CPU hands oneDNN a plain row-major weight, which oneDNN reorders into its
blocked layout (the AMX tiles' on a CPU with AMX) on every call. For the small batches a server runs,
that reorder is much of the call: measured on an Intel Xeon with AMX, one intra-op thread, a MiniLM
layer's 384x1536 weight at 25 rows (one request) takes 93-97 us plain against 42-46 us prepacked, at 200
rows 248-259 against 172-187 us; a whole MiniLM QA graph 4.27 -> 3.30 ms at batch 1 and 13.4 -> 11.7 ms at
batch 8, with **bit-identical** outputs (the same kernels run; only the layout they read changes). This is
what `torch.compile`'s CPU freezing does, done here for the TorchScript graphs the server traces.

`packed_copy(module, pack)` is a copy of a module tree whose `nn.Linear`s are `PackedLinear`s: the model's
own module is not changed (its eager forward still reads the plain weights). A packed weight is a second
copy of the weight in oneDNN's layout (an opaque tensor, no storage of its own), made once per weight tensor
(`_PACKED`: the tenants of one base share their base's layers, and so their packed copies too) and freed
with the last graph holding it. The memory ledger charges each once (runtime/memory.py `tensor_storages`).
Where `pack` is a `PackedFiles` (the server's default, `server.share_packed_weights`), the copy is a file
mapped by every server process of the host that packs the same weight, so it is held once per host, not
once per process (compile/packedfiles.py); with `pack=True` each process packs in its own memory.

Only where measured: bf16 weights on a CPU with native bf16 (AVX512-BF16 or AMX; elsewhere the server
computes fp32, whose MKL path this does not change).
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref
from typing import List, Optional, Union  # noqa: UP035  (TorchScript reads these annotations)

import torch
from torch import nn

from inferpack.compile.packedfiles import PackedFiles
from inferpack.runtime.hardware import cpu_has_native_bf16

Pack = bool | PackedFiles  # False: plain weights; True: packed in this process; PackedFiles: shared files

# (storage address, offset, shape, strides, dtype) of a plain weight -> its packed copy, while a graph
# holds it (the PackedLinear holding the packed copy also holds the plain weight, so the address is not
# reused while an entry lives), and the mapped file behind a shared one (compile/packedfiles.py; the packed
# tensor does not own its memory: the PackedLinears holding it hold this too)
_PACKED: weakref.WeakValueDictionary[tuple[object, ...], torch.Tensor] = weakref.WeakValueDictionary()
_BACKING: weakref.WeakValueDictionary[tuple[object, ...], torch.Tensor] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def packs(module: nn.Module) -> bool:
    """True where `packed_copy` changes `module`: it has a bf16 linear layer on the CPU, this torch build
    has oneDNN's packed linear, and the CPU has native bf16."""
    return (
        any(_packable(m) for m in module.modules())
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and cpu_has_native_bf16()
    )


def _packable(module: nn.Module) -> bool:
    """A plain `nn.Linear` (not a subclass: its forward may differ) with a bf16 weight on the CPU (a layer
    kept in another dtype stays as it is)."""
    return (
        type(module) is nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
    )


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward on a weight prepacked for oneDNN (same outputs, bit for bit)."""

    def __init__(self, linear: nn.Linear, files: PackedFiles | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach()
        packed, backing = _packed(weight, files)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("weight", weight, persistent=False)  # keeps `_PACKED`'s key valid; not copied
        # the mapped file a shared packed weight lives in: a plain attribute, not a buffer (the ledger
        # counts the packed weight, once), which every graph made from this module holds as long as it lives
        self.backing = backing
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T + bias through oneDNN's packed linear."""
        scalars: List[Optional[Union[int, float, complex]]] = []  # noqa: UP006, UP007, UP045  (TorchScript)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", scalars, "")
        return out


def _packed(weight: torch.Tensor, files: PackedFiles | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed copy of a plain weight, made once while any graph holds it (mapped from `files` where
    given and usable), and what must live as long as it (the mapped file, or an empty tensor)."""
    key = (
        weight.untyped_storage().data_ptr(),
        weight.storage_offset(),
        tuple(weight.shape),
        weight.stride(),
        weight.dtype,
    )
    with _LOCK:
        found, backing = _PACKED.get(key), _BACKING.get(key)
        if found is None or backing is None:
            shared = files.packed(weight) if files is not None else None
            # in memory: an empty backing, held (and freed) like a file's, so both entries go together
            found, backing = shared or (
                torch.ops.mkldnn._reorder_linear_weight(weight),
                torch.empty(0, dtype=torch.uint8),
            )
            _PACKED[key], _BACKING[key] = found, backing
        return found, backing


def packed_copy(module: nn.Module, pack: Pack = True) -> nn.Module:
    """A copy of `module`'s tree (shallow: the same tensors) with each bf16 `nn.Linear` a scripted
    `PackedLinear` (scripted: a trace cannot record the packed call's empty scalar list), for tracing,
    its packed weights shared through files where `pack` is a `PackedFiles`. `module` itself is
    unchanged; where `pack` is False or `packs(module)` is False, `module` is returned as it is."""
    if not pack or not packs(module):
        return module
    return _copy(module, pack if isinstance(pack, PackedFiles) else None)


def _copy(module: nn.Module, files: PackedFiles | None) -> nn.Module:
    if _packable(module):
        assert isinstance(module, nn.Linear)
        with warnings.catch_warnings():  # torch.jit's deprecation notice: see compile/trace.py
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted: nn.Module = torch.jit.script(PackedLinear(module, files))
            return scripted
    if not any(_packable(m) for m in module.modules()):
        return module  # nothing to pack below: the subtree itself
    twin = copy.copy(module)  # a new object sharing every attribute but the children's dict
    twin._modules = {
        name: None if child is None else _copy(child, files) for name, child in module._modules.items()
    }
    return twin
