"""What holding a model version costs in memory, known before loading it: one estimate, used by the
server's memory budget (`runtime.registry`) and by the planner (`planner.inputs`).

A measured footprint (`footprint.resident_mb` in the manifest, written after a real load) always wins.
Without one, the estimate is the size of the weight files with a small margin: weights load file-backed
and dominate a loaded model, and the server's own overhead (interpreter, torch, tokenizers) is counted
once per server elsewhere (the registry's measurement after the load; the planner's profiles).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from inferpack.repository.folder import ModelRepository
from inferpack.repository.manifest import DType

MB = 2**20
FILE_MARGIN = 1.01  # buffers the weight files do not hold (position ids, token type ids)
FILE_EXTRA_BYTES = 2**16
# An ONNX Runtime session copies the graph's initialisers into buffers of its own (the file is read, not
# mapped; two sessions over one file hold two copies) and adds its working buffers: measured 1.03 x the
# ONNX file per MiniLM QA model, pre-packing on or off (bench/bench_ort_memory.py, docs/benchmarks.md).
ORT_SESSION_FACTOR = 1.03
_ITEM_BYTES: dict[DType, int] = {"fp32": 4, "bf16": 2, "fp16": 2}


def estimate_from_file_bytes(file_bytes: int) -> int:
    """Resident bytes of a model whose weight files (own and not yet shared) hold `file_bytes`."""
    return int(file_bytes * FILE_MARGIN) + FILE_EXTRA_BYTES


def estimate_session_bytes(onnx_file_bytes: int) -> int:
    """Host bytes an ONNX Runtime session over a graph file of `onnx_file_bytes` holds (weights inside)."""
    return int(onnx_file_bytes * ORT_SESSION_FACTOR) + FILE_EXTRA_BYTES


def _never_held(_path: Path) -> bool:
    return False


def estimate_resident_bytes(
    repository: ModelRepository,
    model_id: str,
    version: int,
    *,
    already_held: Callable[[Path], bool] = _never_held,
    measured: bool = True,
    serving_dtype: DType | None = None,
) -> int:
    """Bytes that loading `model_id` v`version` adds: the manifest's measured footprint when it has one,
    else `estimate_from_file_bytes` of its weights file plus the shared weight files `already_held` says
    are not in memory yet (a server passes what it holds; a planner counts them all). `measured=False`
    ignores the footprint: it is host memory, and a GPU server budgets device memory. `serving_dtype`: a
    server computing in another dtype than a safetensors version's holds its weights converted, at that
    dtype's size (a bf16 server holds fp32 files at half their size). An ONNX version: its session's
    bytes (`estimate_session_bytes`)."""
    manifest = repository.manifest(model_id, version)
    if manifest.footprint is not None and measured:
        return int(manifest.footprint.resident_mb * MB)
    # resolved, not joined: a weights file missing or unreadable is named by the repository's error
    size = repository.resolve_file(model_id, version, manifest.weights).stat().st_size
    for relative in manifest.shared_weights:
        path = repository.resolve_file(model_id, version, relative)
        if not already_held(path):
            size += path.stat().st_size
    if manifest.format == "onnx":
        return estimate_session_bytes(size)
    if serving_dtype is not None and manifest.format == "safetensors":
        size = size * _ITEM_BYTES[serving_dtype] // _ITEM_BYTES[manifest.dtype]
    return estimate_from_file_bytes(size)
