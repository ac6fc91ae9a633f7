"""Memory accounting for loaded models: bytes of distinct tensor storages, shared storages counted once.

A model's footprint is measured from what it actually holds after loading (its parameter and buffer
storages), not guessed from file sizes. Storages shared between models (a common base, see
`inferpack.runtime.shared`) are counted once for the server and only freed with their last user, which is
what `freeable_bytes` tells the eviction policy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterable

import psutil
import torch

Storages = dict[int, int]  # storage data pointer -> bytes (negative keys: memory that is no tensor storage)


def tensor_storages(tensors: Iterable[torch.Tensor]) -> Storages:
    """Distinct storages behind some tensors (meta tensors and empty storages skipped). An opaque oneDNN
    tensor (a prepacked weight: compile/packing.py) has no storage: it counts its elements' bytes under
    its tensor's own address, negated (a key of its own, as a graph's memory is: runtime/modeling.py)."""
    out: Storages = {}
    for tensor in tensors:
        if tensor.device.type == "meta":
            continue
        if tensor.is_mkldnn:
            out[-tensor._cdata] = tensor.numel() * tensor.element_size()
            continue
        storage = tensor.untyped_storage()
        if storage.nbytes():
            out[storage.data_ptr()] = storage.nbytes()
    return out


def module_storages(module: object) -> Storages:
    """Storages of a torch module's parameters and buffers (eager or TorchScript), wherever they live (CPU
    or GPU memory). A frozen TorchScript module has neither: its weights are constants of its graph, so
    those are counted. A wrapper that knows its device memory (a Neuron graph) reports it itself."""
    reported = getattr(module, "device_storages", None)
    if callable(reported):
        return dict(reported())
    if not isinstance(module, torch.nn.Module | torch.jit.ScriptModule):
        return {}
    tensors = [*module.parameters(), *module.buffers()]
    if isinstance(module, torch.jit.ScriptModule):
        tensors += _graph_constants(module)
    return tensor_storages(tensors)


def _graph_constants(module: torch.jit.ScriptModule) -> list[torch.Tensor]:
    """Tensor constants of a TorchScript module's forward graph (what freezing turns weights into)."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return []
    found: list[torch.Tensor] = []
    pending = [graph.block()]
    while pending:
        for node in pending.pop().nodes():
            pending.extend(node.blocks())
            if node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType":
                value = node.output().toIValue()
                if isinstance(value, torch.Tensor):
                    found.append(value)
    return found


class MemoryLedger:
    """Which storages each loaded model holds; totals count a shared storage once."""

    def __init__(self) -> None:
        self._by_model: dict[str, Storages] = {}
        self._users: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.total_bytes = 0

    def add(self, model_id: str, storages: Storages) -> None:
        """Record a loaded model's storages (replacing an earlier record of the same model)."""
        self.remove(model_id)
        self._by_model[model_id] = dict(storages)
        for ptr, size in storages.items():
            if self._users.get(ptr, 0) == 0:
                self.total_bytes += size
                self._sizes[ptr] = size
            self._users[ptr] = self._users.get(ptr, 0) + 1

    def remove(self, model_id: str) -> int:
        """Forget a model; returns the bytes that no other model holds (what unloading it frees)."""
        storages = self._by_model.pop(model_id, None)
        if storages is None:
            return 0
        freed = 0
        for ptr in storages:
            self._users[ptr] -= 1
            if self._users[ptr] == 0:
                del self._users[ptr]
                size = self._sizes.pop(ptr)
                freed += size
                self.total_bytes -= size
        return freed

    def added_bytes(self, storages: Storages) -> int:
        """Bytes of `storages` no record holds yet: what recording them would add to the total."""
        return sum(size for ptr, size in storages.items() if ptr not in self._users)

    def model_bytes(self, model_id: str) -> int:
        """All bytes a model holds, shared ones included."""
        return sum(self._by_model.get(model_id, {}).values())

    def freeable_bytes(self, model_id: str) -> int:
        """Bytes that unloading the model would free now (its storages no other model holds)."""
        return sum(
            size for ptr, size in self._by_model.get(model_id, {}).items() if self._users.get(ptr) == 1
        )

    def models(self) -> list[str]:
        """Models on the ledger."""
        return list(self._by_model)


def rss_bytes() -> int:
    """This process's resident set size."""
    return int(psutil.Process().memory_info().rss)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:  # pragma: no cover - exotic platforms
        return None


def release_free_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS (tensors freed by an unload), where it can, and
    CUDA's caching allocator its unused blocks back to the driver: the GPU a model loads onto is chosen by
    the driver's free memory (`torch.cuda.mem_get_info`), which cached blocks would hide."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()
