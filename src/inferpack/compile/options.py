"""What a compile run is asked to do: plain data, importable without torch (the CLI imports it at start)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inferpack.repository.manifest import DType, TargetName

QuantizeChoice = Literal["none", "int8"]
OutputFormat = Literal["torchscript", "safetensors", "onnx"]


@dataclass(frozen=True)
class CompileOptions:
    """What to compile a model into. `force` stores a version whose agreement check failed.
    `output_format` safetensors stores the weights cast to `dtype` instead of a traced graph; onnx exports
    an ONNX graph (CPU, fp32) for the onnxruntime engine."""

    target: TargetName = "cpu"
    dtype: DType = "fp32"
    quantize: QuantizeChoice = "none"
    source_version: int | None = None
    force: bool = False
    freeze: bool = True
    output_format: OutputFormat = "torchscript"
