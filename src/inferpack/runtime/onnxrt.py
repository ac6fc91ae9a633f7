"""ONNX Runtime as a model runtime: a session over a version's ONNX graph, called like any other model.

`OrtModule` has the call signature every runtime shares (`module(input_ids, attention_mask,
token_type_ids) -> tensor`, see `runtime/heads.py`), so `LoadedModel`, the batcher and the task handlers
run it unchanged. Sessions are set up for serving: one intra-op thread (the server runs one inference
thread per core; with one intra-op thread ORT computes on the calling thread and releases the GIL, so N
inference threads share one session and keep N cores busy), sequential execution, and no graph
optimisation at load when the graph was optimised when it was compiled (`inferpack compile --format
onnx` stores it so): that takes a third off the session's creation, the slow part of ONNX Runtime's cold
path (docs/benchmarks.md).

onnxruntime is an optional dependency (`pip install 'inferpack[onnx]'`): nothing here imports it at
module import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from inferpack.errors import ModelLoadFailed
from inferpack.repository.footprint import estimate_session_bytes

if TYPE_CHECKING:
    import onnxruntime

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "output"
INSTALL_HINT = "install the ONNX extra: pip install 'inferpack[onnx]' (onnxruntime, onnx)"


def ort() -> Any:
    """The onnxruntime module, or ModelLoadFailed saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadFailed(
            "this server cannot run ONNX graphs: onnxruntime is not installed", hint=INSTALL_HINT
        ) from exc
    return onnxruntime


def session_options(*, intra_op_threads: int = 1, optimize: bool = False) -> onnxruntime.SessionOptions:
    """Options for a serving session: `intra_op_threads` per run, sequential, graph optimisation only
    when the graph was not optimised at compile time (`optimize`)."""
    rt = ort()
    options = rt.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = rt.ExecutionMode.ORT_SEQUENTIAL
    level = rt.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    return options


def optimize_graph(source: Path, target: Path) -> None:
    """Write `source`'s graph optimised for any CPU (ORT's basic and extended fusions: attention, GELU,
    layer norm; no hardware-specific layouts) to `target`, so serving sessions need not optimise it."""
    rt = ort()
    options = session_options()
    options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    rt.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


class OrtModule:
    """An ONNX Runtime session called with torch tensors; returns a float32 torch tensor."""

    def __init__(self, path: Path, *, intra_op_threads: int = 1, optimize: bool = False) -> None:
        rt = ort()
        self.path = path
        self.bytes = path.stat().st_size
        self.session = rt.InferenceSession(
            str(path),
            session_options(intra_op_threads=intra_op_threads, optimize=optimize),
            providers=["CPUExecutionProvider"],
        )
        # an exporter drops inputs the graph does not read (token types of DistilBERT): feed only the rest
        self.inputs = [name for name in INPUT_NAMES if name in {i.name for i in self.session.get_inputs()}]

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """One run on CPU tensors (ONNX Runtime releases the GIL while it computes)."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {name: np.ascontiguousarray(given[name].cpu().numpy()) for name in self.inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def device_storages(self) -> dict[int, int]:
        """The memory the session holds for the ledger: its own copy of the graph's weights and its
        buffers (ONNX Runtime copies initialisers out of the file; no torch storage holds them), as
        measured against the file's size (`estimate_session_bytes`)."""
        return {id(self): estimate_session_bytes(self.bytes)}


def load_onnx(path: Path, *, intra_op_threads: int = 1) -> OrtModule:
    """A serving session over a stored (compile-time optimised) ONNX graph."""
    return OrtModule(path, intra_op_threads=intra_op_threads, optimize=False)
