"""Exporting an eager model to an ONNX graph for ONNX Runtime (`inferpack compile --format onnx`).

The graph is exported with batch and token dimensions left dynamic (one graph serves every batch the
server forms), then optimised once for any CPU by ONNX Runtime itself (`runtime.onnxrt.optimize_graph`),
so a server's session loads it without optimising again. The exporter is torch's TorchScript-based one
(`dynamo=False`): it needs no further dependency (the dynamo exporter needs onnxscript) and exports the
encoders we serve to opset 17 in ~2 s. Like a trace, an export records one run: the compile step checks
the stored graph on other lengths and batch sizes before it is kept (`compile.agreement`).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from inferpack.compile.examples import model_args
from inferpack.compile.options import CompileOptions
from inferpack.errors import CompileError
from inferpack.runtime.onnxrt import (
    INPUT_NAMES,
    INSTALL_HINT,
    OUTPUT_NAME,
    OrtModule,
    load_onnx,
    optimize_graph,
)
from inferpack.runtime.tasks import Encoded

OPSET = 17  # the oldest opset with LayerNormalization as one op: every ONNX Runtime since 1.14 runs it
WEIGHTS_FILE = "model.onnx"


def export_onnx(module: nn.Module, example: Encoded, target: Path) -> None:
    """Export `module` (eager, CPU) to an optimised ONNX graph at `target`, dynamic in batch and tokens."""
    dynamic = {name: {0: "batch", 1: "tokens"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with tempfile.TemporaryDirectory(prefix="inferpack-onnx-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            # the TorchScript-based exporter announces its deprecation and repeats tracing's shape warnings
            # (see compile.trace); the exported graph is checked on other shapes before it is stored
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(
                    module.eval(),
                    model_args(example, torch.device("cpu")),
                    str(raw),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=list(INPUT_NAMES),
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=dynamic,
                )
        optimize_graph(raw, target)


def check_onnx_options(options: CompileOptions) -> None:
    """Refuse what the ONNX format does not offer here, before any work (CompileError says what does)."""
    if options.target != "cpu" or options.dtype != "fp32" or options.quantize != "none":
        raise CompileError(
            f"--format onnx makes fp32 graphs for ONNX Runtime on CPUs, not {options.target} "
            f"{options.dtype}{' int8' if options.quantize == 'int8' else ''}",
            hint="use --format onnx with --target cpu --dtype fp32 (the defaults), or --format torchscript",
        )
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        raise CompileError(
            "--format onnx needs onnxruntime and onnx, which are not installed", hint=INSTALL_HINT
        )


def export_checked_graph(
    module: nn.Module, example: Encoded, folder: Path
) -> tuple[OrtModule, Callable[[Path], None]]:
    """Export to `folder`, then load the stored graph as a server does: the agreement check runs on the
    session it returns, and the writer copies exactly that file into the new version."""
    path = folder / WEIGHTS_FILE
    export_onnx(module, example, path)

    def write(target: Path) -> None:
        shutil.copyfile(path, target)

    return load_onnx(path), write
