"""Which runtime computes on this server: `server.engine` resolved against the processor (pure).

Measured side by side in one run (bench/bench_runtimes.py, docs/benchmarks.md), MiniLM QA, ~25-token
requests, one worker thread per core:
- on a CPU with native bf16 (AVX512-BF16/AMX) torch eager bf16 is the fastest loop at batch 8 and close
  to ONNX Runtime fp32 at batch 1; eager also batches across tenants through shared layers
  (runtime/crossbatch.py), which ONNX Runtime sessions cannot, and it shares a base's weights between
  tenants in memory, which separate sessions do not. `auto` keeps eager (bf16) there;
- on a CPU without it (AVX2 only: bf16 runs ~4x slower, so the server computes fp32) ONNX Runtime fp32
  beats eager fp32 at both batch sizes (~1.9x at batch 1 on the bf16 machine's fp32 figures); `auto`
  takes onnxruntime there when onnxruntime is installed.
The default stays `eager` until the ONNX path has been measured on an AVX2-only machine (see
docs/runtimes.md). ONNX Runtime computes fp32 here (its CPU provider has no general bf16 kernels), so a
server on the onnxruntime engine resolves dtype `auto` to fp32: the eager stand-in a cold model answers
from, and models without an ONNX version, then compute what the ONNX graphs compute.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from inferpack.errors import ConfigError
from inferpack.settings import EngineChoice, ServerSettings

Engine = Literal["eager", "onnxruntime"]


def resolve_engine(
    choice: EngineChoice, device_kind: str, *, native_bf16: bool, ort_installed: bool
) -> Engine:
    """The engine a choice means on this processor (see the module docstring); ConfigError for
    onnxruntime off the CPU or without onnxruntime installed."""
    if choice == "auto":
        return "onnxruntime" if device_kind == "cpu" and not native_bf16 and ort_installed else "eager"
    if choice == "onnxruntime":
        if device_kind != "cpu":
            raise ConfigError(
                "server.engine onnxruntime runs ONNX graphs on the CPU; this server computes on "
                f"{device_kind}",
                hint="use engine eager (or auto) on GPU and Neuron servers",
            )
        if not ort_installed:
            raise ConfigError(
                "server.engine onnxruntime needs onnxruntime, which is not installed",
                hint="pip install 'inferpack[onnx]', or use engine eager",
            )
    return "eager" if choice == "eager" else "onnxruntime"


def ort_installed() -> bool:
    """True when onnxruntime can be imported (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def with_engine(
    settings: ServerSettings, device_kind: str, *, native_bf16: bool, ort: bool
) -> ServerSettings:
    """The settings with `engine` resolved and, on onnxruntime, dtype `auto` made fp32 (an explicit
    bf16 or fp16 is refused: no ONNX version would suit, every model would silently run eagerly)."""
    engine = resolve_engine(settings.engine, device_kind, native_bf16=native_bf16, ort_installed=ort)
    if engine == "eager":
        return settings.model_copy(update={"engine": engine})
    if settings.dtype not in ("auto", "fp32"):
        raise ConfigError(
            f"server.engine onnxruntime computes fp32, and dtype is {settings.dtype}",
            hint="use dtype auto or fp32 with engine onnxruntime, or engine eager for bf16",
        )
    return settings.model_copy(update={"engine": engine, "dtype": "fp32"})
