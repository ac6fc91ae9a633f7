"""Tracing a converted model to TorchScript for a target: cpu and cuda with `torch.jit.trace`, neuron with
`torch_neuronx.trace`. Each target function takes the model and example arguments and returns a module
ready to save; none of them judges the result (see `inferpack.compile.agreement`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.jit._trace import TracerWarning  # torch.jit re-exports it without __all__

from inferpack.errors import CompileError

Args = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def device_for(target: str) -> torch.device:
    """The torch device a target's traced model runs on (neuron models are called with CPU tensors)."""
    if target == "cuda":
        require_cuda()
        return torch.device("cuda")
    return torch.device("cpu")


def require_cuda() -> None:
    """Fail clearly when this machine cannot trace for CUDA."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise CompileError(
            f"--target cuda needs a visible NVIDIA GPU, and this machine has none "
            f"(torch {torch.__version__}, {build})",
            hint="run `inferpack compile --target cuda` on the GPU machine that will serve the model, "
            "with a CUDA build of PyTorch",
        )


def jit_trace(model: nn.Module, args: tuple[torch.Tensor, ...], *, freeze: bool) -> torch.jit.ScriptModule:
    """`torch.jit.trace` on the model's own device, then (optionally) `torch.jit.freeze`.

    Freezing inlines the weights as constants and folds what depends only on them (e.g. the QA head's
    small matmuls, dropout removal), so the saved graph has no attribute lookups left; it is measured in
    docs/compile.md.
    """
    model.eval()
    with warnings.catch_warnings():
        # TracerWarnings here come from transformers reading shapes as Python values (sdpa's is_causal, a
        # no-op mask pad); they are shape checks, not data-dependent branches, and every trace is checked
        # on other lengths and batch sizes before it is stored. The deprecation notice for torch.jit is
        # known: TorchScript is still the one format that reloads without the model's Python code.
        warnings.simplefilter("ignore", TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad(), _no_loss_type_notice():
            traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
                model, args, check_trace=False
            )
            if freeze:
                traced = torch.jit.freeze(traced.eval())
    return traced


class _LossTypeNotice(logging.Filter):
    """Drops transformers' "`loss_type=None` was set in the config but it is unrecognized" record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("`loss_type=")


@contextmanager
def _no_loss_type_notice() -> Iterator[None]:
    """Silence one transformers notice while tracing. `torch.jit.trace` looks for exported methods by
    reading every attribute of every submodule, which evaluates transformers' `loss_function` property;
    on a model class without a loss (a bare encoder such as `BertModel`) that property logs the notice,
    so every compile and every server tracing a hot model printed it. Tracing computes no loss, so the
    notice says nothing about the graph; other transformers messages still pass."""
    logger = logging.getLogger("transformers.modeling_utils")
    notice = _LossTypeNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def neuron_trace(model: nn.Module, args: Args) -> torch.jit.ScriptModule:
    """Compile for AWS Inferentia2/Trainium with `torch_neuronx.trace` (untested here: no Neuron hardware).

    Neuron graphs have static shapes: `args` must already be padded to the width and batch size the model
    will be served with. By default neuronx-cc casts fp32 matmuls to bf16; `--auto-cast none` keeps the
    graph in the dtype the conversion step gave it, so the dtype in the manifest is the dtype that runs.
    """
    try:
        import torch_neuronx  # type: ignore[import-not-found]
    except ImportError as exc:
        raise CompileError(
            "--target neuron needs the AWS Neuron SDK (the torch-neuronx package and the neuronx-cc "
            "compiler), which is not installed here",
            hint="run it on an Inferentia2/Trainium instance (e.g. a Neuron DLAMI) with torch-neuronx "
            "installed; see docs/compile.md",
        ) from exc
    traced: Any = torch_neuronx.trace(model.eval(), args, compiler_args=["--auto-cast", "none"])
    if not isinstance(traced, torch.jit.ScriptModule):
        raise CompileError(f"torch_neuronx.trace returned {type(traced).__name__}, not a TorchScript module")
    return traced
