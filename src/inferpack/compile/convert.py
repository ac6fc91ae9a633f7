"""Turning the eager fp32 model into the variant to compile: a bf16 cast or int8 dynamic quantisation."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from inferpack.compile.options import QuantizeChoice
from inferpack.errors import CompileError
from inferpack.repository.manifest import DType, Quantization, TargetName


@dataclass(frozen=True)
class Variant:
    """What to compile: the dtype the weights run in and the quantisation applied (manifest spelling)."""

    dtype: DType
    quantization: Quantization

    @property
    def label(self) -> str:
        """Short name for tables and messages: fp32, bf16 or int8."""
        return "int8" if self.quantization == "int8-dynamic" else self.dtype


def choose_variant(dtype: DType, quantize: QuantizeChoice, target: TargetName) -> Variant:
    """Validate a dtype/quantisation/target combination; CompileError names the conflict."""
    if quantize == "int8":
        if dtype != "fp32":
            raise CompileError(
                "--quantize int8 quantises the fp32 model's Linear layers; "
                "it cannot be combined with --dtype bf16"
            )
        if target != "cpu":
            raise CompileError(
                f"--quantize int8 uses PyTorch dynamic quantisation, which runs on CPUs only, "
                f"not on {target}",
                hint="use --target cpu, or --dtype bf16 for a compact accelerator variant",
            )
        return Variant("fp32", "int8-dynamic")
    if dtype == "fp16" and target != "cuda":
        raise CompileError(
            f"--dtype fp16 is for GPUs without bf16 (e.g. the T4 of g4dn), not for {target}",
            hint="use --target cuda, or --dtype bf16 on CPUs with AVX512-BF16/AMX and on Neuron",
        )
    return Variant(dtype, "none")


def convert(eager: nn.Module, variant: Variant, device: torch.device) -> nn.Module:
    """The variant of an eager fp32 CPU module on `device`; the original stays as the agreement reference.

    fp32 on the CPU is the original itself (tracing and freezing never modify it), saving a copy of the
    weights; every other variant works on a copy.
    """
    if variant == Variant("fp32", "none") and device.type == "cpu":
        return eager.eval()
    model = copy.deepcopy(eager).eval().to(device)
    if variant.quantization == "int8-dynamic":
        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency here; the
            # API still works in torch 2.13 and its result is checked against eager fp32 like any other.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            quantized: nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                model, {nn.Linear}, dtype=torch.qint8
            )
        return quantized
    if variant.dtype == "bf16":
        return model.to(torch.bfloat16)
    if variant.dtype == "fp16":
        return model.to(torch.float16)
    return model
