"""Traced graphs for hot eager models: the same weights, without Python between the operators.

An eager forward of a BERT-class model is a few hundred operator calls from Python, and each of them takes
the GIL back: measured on the MiniLM demo models (bf16, an Intel Xeon with AMX, one intra-op thread), a
batch of one costs 7.4 ms eager against 4.7 ms as a `torch.jit.trace` graph of the same module, a batch of
eight 17.2 against 14.6 ms, and a Python thread spinning beside the forward slows eager by ~20% and the
graph not at all: the TorchScript interpreter runs the whole forward with the GIL released. So under
load the event loop's work (parsing, answering, refusing) no longer stalls the forwards (docs/runtimes.md,
docs/benchmarks.md).

`traced` makes such a graph from a loaded eager model: traced (not frozen: the graph's parameters stay the
eager module's own tensors, so it costs no second copy of the weights and tenants keep sharing their
base's layers), warmed up (its first two calls run the profiling executor), and checked against the eager
module on the compile step's held-out batches of other lengths and sizes (`compile.agreement`'s trace
fidelity bounds), so a model whose forward branches on its data (a trace records one path) keeps eager.
Tracing costs ~150 ms of Python per model, so the registry traces only models that have proven hot
(`server.trace_after_batches` batches since their load), on the niced upgrade lane (runtime/tier.py),
and only into free memory budget: a graph costs no copy of the weights but its own IR and executor plans
(~12 MiB for a MiniLM, `graph_bytes`), which the ledger charges to the model;
until then, and whenever tracing fails or disagrees, the eager module serves. A traced model batches
alone (runtime/crossbatch.py `group_key`): its own batches on the graph beat mixing it eagerly with its
base's other tenants (measured: docs/runtimes.md).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import torch

from inferpack.compile.agreement import TRACE_FIDELITY, compare, output_rows
from inferpack.compile.examples import build_examples, model_args
from inferpack.compile.trace import jit_trace
from inferpack.errors import ModelLoadFailed
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.modeling import LoadedModel
from inferpack.runtime.versions import manifest_dtype

# A graph's own memory besides the weights it shares (its IR, the profiling executor's plans): measured as
# RSS growth per traced model, warm-up and check batches included, over ~500 inlined nodes for a 6-layer
# MiniLM (12.6 MiB) and ~230 for a 2-layer test model (5.8 MiB): ~26 KiB a node.
GRAPH_BYTES_PER_NODE = 26 * 1024
WARM_UP_CALLS = 3  # the profiling executor optimises after its first runs (measured: ~80 and ~47 ms, then ~5)


def trace_job(model: LoadedModel) -> Callable[[], LoadedModel] | None:
    """The work that makes `model`'s traced graph (`traced`, run on the upgrade lane), or None when it
    cannot be traced (`traceable`). The registry's `tracer` (runtime/registry.py): it lives here, with
    the compile step whose tracing and checks it reuses, and is handed to the registry by the server."""
    return functools.partial(traced, model) if traceable(model) else None


def traceable(model: LoadedModel) -> bool:
    """True for a model `traced` may take: an eager module of a safetensors version on the CPU, not yet
    traced, with no other runtime beside it (engine mixed) or waiting to replace it (a stand-in)."""
    return (
        isinstance(model.module, TaskWrapper)
        and model.manifest.format == "safetensors"
        and model.device.type == "cpu"
        and model.graph is None
        and model.alternate is None
        and "stand_in_for" not in model.extra
    )


def traced(model: LoadedModel) -> LoadedModel:
    """`model` with a traced graph of its module for single-model batches (see the module's doc). Runs on
    the upgrade thread. ModelLoadFailed when tracing fails or the graph disagrees with the eager module."""
    started = time.perf_counter()
    examples = build_examples(model.tokenizer, model.handler.pair_input)
    module = model.module
    if not isinstance(module, TaskWrapper):
        raise ModelLoadFailed(f"model {model.model_id!r} v{model.version} has no eager module to trace")
    try:
        graph = jit_trace(module, model_args(examples.trace, model.device), freeze=False)
        with torch.inference_mode():
            for _ in range(WARM_UP_CALLS):
                graph(*model_args(examples.trace, model.device))
            reference, candidate = [], []
            for batch in examples.checks:
                args = model_args(batch, model.device)
                reference += output_rows(module(*args), batch, model.manifest.task)
                candidate += output_rows(graph(*args), batch, model.manifest.task)
    except Exception as exc:
        raise ModelLoadFailed(
            f"model {model.model_id!r} v{model.version} could not be traced: {type(exc).__name__}: {exc}"
        ) from exc
    verdict = compare(reference, candidate).judge(TRACE_FIDELITY[manifest_dtype(model.dtype)])
    if not verdict.passed:
        raise ModelLoadFailed(
            f"model {model.model_id!r} v{model.version}: its traced graph disagrees with the eager module "
            f"(max abs diff {verdict.max_abs_diff:.3g} > {verdict.tolerance:.3g}, or cosine "
            f"{verdict.cosine:.5f}); the forward likely branches on its inputs",
            hint="the eager module keeps serving it; set server.trace_after_batches = 0 to stop tracing",
        )
    extra = {**model.extra, "graph_bytes": graph_bytes(graph)}
    fast = dataclasses.replace(model, graph=graph, extra=extra)
    fast.load_seconds = time.perf_counter() - started
    return fast


def graph_bytes(graph: torch.jit.ScriptModule) -> int:
    """Estimated memory of a traced graph beyond the tensors it shares with its eager module (see
    GRAPH_BYTES_PER_NODE): what the memory ledger charges for it."""
    return sum(1 for _ in graph.inlined_graph.nodes()) * GRAPH_BYTES_PER_NODE
