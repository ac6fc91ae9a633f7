"""Serving versions compiled by `inferpack compile --target neuron` (AWS Inferentia2/Trainium, torch-neuronx).

A Neuron graph takes exactly the shape it was traced with (`[batch, width]`, recorded in the manifest's
`static_shape`), while the server pads each batch only to its longest item. `StaticShapeModule` bridges
the two: it cuts a batch into chunks of the traced batch size, pads each chunk to the traced width (pad
token 0, attention mask 0) and to the traced batch size (repeating the last real row, so no row is
degenerate), runs the graph and cuts the output back to the real rows and, for per-token outputs (QA and
token-classification logits), to the real width. The answers are those of the unpadded batch: padding
positions are masked.

Models load with torch-neuronx's default placement: each `torch.jit.load` puts the model on the next
NeuronCore the process owns, so a server's models are spread over its cores (one inference thread each).
torch-neuronx must be imported before `torch.jit.load`: it registers the Neuron operators the graph uses.
The padding is tested here with a CPU graph traced at a fixed shape; real Neuron hardware is not.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from inferpack.errors import DeviceUnavailable
from inferpack.repository.manifest import PER_TOKEN_TASKS, Manifest
from inferpack.runtime.devices import NEURON_INSTALL_HINT
from inferpack.runtime.memory import Storages

_LOCK = threading.Lock()


def require_torch_neuronx() -> ModuleType:
    """torch_neuronx, imported (which registers its operators with torch), or DeviceUnavailable."""
    with _LOCK:
        try:
            return importlib.import_module("torch_neuronx")
        except ImportError as exc:
            raise DeviceUnavailable(
                f"serving a Neuron version needs torch-neuronx, which is not importable here ({exc})",
                hint=NEURON_INSTALL_HINT,
            ) from exc


def static_shape(manifest: Manifest) -> tuple[int, int]:
    """(batch, width) a Neuron version was traced with; versions compiled before the manifest recorded it
    were traced at [1, max_sequence_length]."""
    if manifest.static_shape is not None:
        batch, width = manifest.static_shape
        return batch, width
    return 1, manifest.max_sequence_length


class StaticShapeModule:
    """Runs a fixed-shape graph on batches of any size and width up to the traced one."""

    def __init__(self, module: Any, batch: int, width: int, *, per_token: bool, file_bytes: int = 0) -> None:
        self.module = module
        self.batch = batch
        self.width = width
        self.per_token = per_token
        self.file_bytes = file_bytes

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        rows, width = int(input_ids.shape[0]), int(input_ids.shape[1])
        if width > self.width:
            raise ValueError(f"a batch {width} tokens wide exceeds the traced width {self.width}")
        outputs = []
        for start in range(0, rows, self.batch):
            real = min(self.batch, rows - start)
            args = [self._pad(t[start : start + real]) for t in (input_ids, attention_mask, token_type_ids)]
            out = self.module(*args)[:real]
            outputs.append(out[:, :width] if self.per_token else out)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _pad(self, chunk: torch.Tensor) -> torch.Tensor:
        missing = self.batch - int(chunk.shape[0])
        if missing:
            chunk = torch.cat([chunk, chunk[-1:].expand(missing, -1)])
        extra = self.width - int(chunk.shape[1])
        return torch.nn.functional.pad(chunk, (0, extra), value=0) if extra else chunk.contiguous()

    def device_storages(self) -> Storages:
        """What the model holds on the Neuron device: its weights are inlined in the compiled graph (the
        file), which host-side tensor accounting cannot see."""
        return {id(self): self.file_bytes} if self.file_bytes else {}


def load_neuron(path: Path, manifest: Manifest) -> StaticShapeModule:
    """Load a Neuron version through torch-neuronx, wrapped to accept the server's dynamic batches."""
    require_torch_neuronx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice
        scripted = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    batch, width = static_shape(manifest)
    return StaticShapeModule(
        scripted,
        batch,
        width,
        per_token=manifest.task in PER_TOKEN_TASKS,
        file_bytes=path.stat().st_size,
    )
