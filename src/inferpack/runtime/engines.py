"""Which runtime computes on this server: `server.engine` resolved against the processor (pure).

Measured side by side (bench/bench_runtimes.py, bench/bench_server.py, docs/benchmarks.md), MiniLM QA,
~25-token requests, one worker thread per core: no runtime wins everywhere. ONNX Runtime fp32 was the
fastest batch-1 loop on an AMD EPYC with avx512_bf16 (1.4x eager bf16) and about even with eager bf16
on an Intel Xeon with AMX, while eager bf16 wins large batches on both and alone mixes tenants of a
base in one batch (runtime/crossbatch.py); on CPUs without native bf16 eager computes fp32, which ONNX
Runtime beats at both batch sizes. So `auto` (the default) resolves, on a CPU with onnxruntime installed where
eager computes fp32 (dtype fp32, or auto on a CPU without native bf16), to `mixed`: eager plus an ONNX
Runtime session beside every model that has an ONNX version (`inferpack compile --format onnx`), each
single-model batch running on whichever of the two measured faster at its size inside this server
(runtime/runtimechoice.py); models without an ONNX version are plain eager. Where eager computes bf16,
`auto` is `eager`: a session computes fp32, so mixing would let the same request's answer depend on which
runtime the load gave it (bf16 and fp32 answers differ slightly), and eager bf16 was as fast as ONNX
Runtime at batch 1 on the AMX machine measured (`mixed` stays an explicit choice there). Without
onnxruntime, or off the CPU, `auto` is `eager`: every machine can execute the default. `onnxruntime`
(sessions only, fp32, the eager model only a stand-in while a session loads) stays an explicit choice;
ONNX Runtime computes fp32 (its CPU provider has no general bf16 kernels), so that engine resolves dtype
`auto` to fp32.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from inferpack.errors import ConfigError
from inferpack.runtime.hardware import cpu_has_native_bf16
from inferpack.settings import EngineChoice, ServerSettings

Engine = Literal["eager", "onnxruntime", "mixed"]


def resolve_engine(
    choice: EngineChoice, device_kind: str, *, ort_installed: bool, eager_fp32: bool = True
) -> Engine:
    """The engine a choice means on this processor (see the module docstring); `eager_fp32`: the eager
    models compute fp32 here. ConfigError for onnxruntime or mixed off the CPU or without onnxruntime."""
    if choice == "auto":
        # not by CPU kind: the mixed engine measures which runtime wins on this very CPU and load; but
        # only where both runtimes compute fp32, so an answer never depends on which one the load chose
        return "mixed" if device_kind == "cpu" and ort_installed and eager_fp32 else "eager"
    if choice in ("onnxruntime", "mixed"):
        if device_kind != "cpu":
            raise ConfigError(
                f"server.engine {choice} runs ONNX graphs on the CPU; this server computes on {device_kind}",
                hint="use engine eager (or auto) on GPU and Neuron servers",
            )
        if not ort_installed:
            raise ConfigError(
                f"server.engine {choice} needs onnxruntime, which is not installed",
                hint="pip install 'inferpack[onnx]', or use engine eager",
            )
    return choice


def ort_installed() -> bool:
    """True when onnxruntime can be imported (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def with_engine(
    settings: ServerSettings, device_kind: str, *, ort: bool, native_bf16: bool | None = None
) -> ServerSettings:
    """The settings with `engine` resolved and, on onnxruntime, dtype `auto` made fp32 (an explicit
    bf16 or fp16 is refused: no ONNX version would suit, every model would silently run eagerly).
    `native_bf16` overrides the CPU probe (dtype auto is bf16 where the CPU computes it natively)."""
    if native_bf16 is None:
        native_bf16 = cpu_has_native_bf16()
    eager_fp32 = settings.dtype == "fp32" or (settings.dtype == "auto" and not native_bf16)
    engine = resolve_engine(settings.engine, device_kind, ort_installed=ort, eager_fp32=eager_fp32)
    if engine != "onnxruntime":  # mixed: eager in the server's dtype, sessions beside it
        return settings.model_copy(update={"engine": engine})
    if settings.dtype not in ("auto", "fp32"):
        raise ConfigError(
            f"server.engine onnxruntime computes fp32, and dtype is {settings.dtype}",
            hint="use dtype auto or fp32 with engine onnxruntime, or engine eager for bf16",
        )
    return settings.model_copy(update={"engine": engine, "dtype": "fp32"})
