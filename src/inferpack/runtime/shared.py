"""Weights shared by many models, held once in memory.

Tenants' models are often fine-tunes of one base: the repository stores the common tensors once
(`<repo>/_shared/weights/<sha256>.safetensors`, listed in each manifest's `shared_weights`) and each model's
own file holds only what is unique. Here a process-wide cache hands every model the *same* tensor objects for
a shared file (already in the serving dtype), so N loaded tenants cost one base plus N small deltas. The
cache holds groups weakly: when the last model using a group is unloaded, the group and its tensors go.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import torch
from safetensors.torch import load_file


class SharedGroup:
    """The tensors of one shared file in one dtype; models keep a reference while they are loaded."""

    __slots__ = ("__weakref__", "path", "tensors")

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        self.path = path
        self.tensors = tensors


def cast_floating(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating-point tensors in `dtype` (others unchanged); no copy when already in it."""
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}


class SharedWeights:
    """Process-wide cache of shared weight groups, keyed by file and dtype."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: weakref.WeakValueDictionary[tuple[Path, torch.dtype, str], SharedGroup] = (
            weakref.WeakValueDictionary()
        )

    def get(self, path: Path, dtype: torch.dtype, device: torch.device | None = None) -> SharedGroup:
        """The group for a shared file, read (and cast) once while any model holds it."""
        target = device or torch.device("cpu")
        key = (path.resolve(), dtype, str(target))
        with self._lock:  # one reader per file; a second load of the same base waits and reuses it
            group = self._groups.get(key)
            if group is None:
                tensors = load_file(str(key[0]), device=str(target))
                group = SharedGroup(key[0], cast_floating(tensors, dtype))
                self._groups[key] = group
            return group

    def holds(self, path: Path) -> bool:
        """True when some loaded model holds this file's tensors (in any dtype)."""
        resolved = path.resolve()
        return any(key[0] == resolved for key in list(self._groups.keys()))

    def live_groups(self) -> int:
        """Groups currently held by at least one model."""
        return len(self._groups)


SHARED = SharedWeights()
