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
alone (runtime/crossbatch.py `group_key`) unless it also has its pieces for mixed batches.

Pieces (`traced_pieces`): a tenant sharing its base's layers gets graphs of its own submodules (its top
layer), and its base gets graphs of the shared subtrees between them (the embeddings, the shared layers:
`crossbatch.trunk_paths`): the base's *trunk* (`base_trunk`), made once per base, by the registry when
the base's tenants have proven busy (`trunk_job`, even with none of them traced: the cold tenants of a
density server) or by its first traced tenant, and reused by every other. The registry holds it while a
tenant of the base is loaded and charges it once, to the base (runtime/registry.py); traced tenants hold
it too (`crossbatch.TRUNKS` is a weak cache: it goes with the last holder). Each piece is traced once per
call signature the
compile step's example and check batches make (an attention mask or None, ...), warmed up, and the model
run through a composite of its pieces is checked against the eager module like the whole graph. A mixed
batch of such tenants then runs its shared layers once, as graphs, and each tenant's layer as a graph on
its rows: the GIL released for most of the forward, and the batch still mixing tenants.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from inferpack.compile.agreement import TRACE_FIDELITY, compare, output_rows
from inferpack.compile.examples import ExampleSet, build_examples, model_args
from inferpack.compile.packing import Pack, packed_copy
from inferpack.compile.trace import jit_trace
from inferpack.errors import ModelLoadFailed
from inferpack.runtime.crossbatch import (
    TRUNKS,
    Graphs,
    Signature,
    TracedPieces,
    Trunk,
    composite,
    mix_key,
    signature,
    tensor_args,
    trunk_paths,
)
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.modeling import LoadedModel
from inferpack.runtime.versions import manifest_dtype

# A graph's own memory besides the weights it shares (its IR, the profiling executor's plans): measured as
# RSS growth per traced model, warm-up and check batches included, over ~500 inlined nodes for a 6-layer
# MiniLM (12.6 MiB) and ~230 for a 2-layer test model (5.8 MiB): ~26 KiB a node.
GRAPH_BYTES_PER_NODE = 26 * 1024
WARM_UP_CALLS = 3  # the profiling executor optimises after its first runs (measured: ~80 and ~47 ms, then ~5)
MAX_SIGNATURES = 4  # graphs per piece at most (the examples make two: a mask, and None for no padding)

log = logging.getLogger("inferpack.tracing")


def trace_job(model: LoadedModel, pack: Pack = True) -> Callable[[], LoadedModel] | None:
    """The work that makes `model`'s traced graph (`traced`, run on the upgrade lane), or None when it
    cannot be traced (`traceable`). The registry's `tracer` (runtime/registry.py): it lives here, with
    the compile step whose tracing and checks it reuses, and is handed to the registry by the server."""
    return functools.partial(traced, model, pack) if traceable(model) else None


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


def traced(model: LoadedModel, pack: Pack = True) -> LoadedModel:
    """`model` with a traced graph of its module for single-model batches (see the module's doc). Runs on
    the upgrade thread. ModelLoadFailed when tracing fails or the graph disagrees with the eager module."""
    started = time.perf_counter()
    examples = build_examples(model.tokenizer, model.handler.pair_input)
    module = model.module
    if not isinstance(module, TaskWrapper):
        raise ModelLoadFailed(f"model {model.model_id!r} v{model.version} has no eager module to trace")
    try:
        traceable_module = packed_copy(module, pack)
        graph = jit_trace(traceable_module, model_args(examples.trace, model.device), freeze=False)
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
    try:
        pieces = traced_pieces(model, examples, pack)
    except Exception as exc:  # the whole graph still serves its own batches: it then batches alone
        log.warning("model %s v%s: no pieces for mixed batches: %s", model.model_id, model.version, exc)
        pieces = None
    fast = dataclasses.replace(model, graph=graph, pieces=pieces, extra=extra)
    fast.load_seconds = time.perf_counter() - started
    return fast


def graph_bytes(graph: torch.jit.ScriptModule) -> int:
    """Estimated memory of a traced graph beyond the tensors it shares with its eager module (see
    GRAPH_BYTES_PER_NODE): what the memory ledger charges for it."""
    return sum(1 for _ in graph.inlined_graph.nodes()) * GRAPH_BYTES_PER_NODE


def traced_pieces(model: LoadedModel, examples: ExampleSet, pack: Pack = True) -> TracedPieces | None:
    """Graphs of `model`'s own submodules and of its base's shared subtrees for mixed batches (see the
    module's doc); None for a model that shares no layers. The base's trunk is the one already held
    (`base_trunk`: made by the registry for a busy base, or by an earlier traced tenant), else made here.
    ModelLoadFailed when the model run through its pieces disagrees with the eager module."""
    paths, module = model.extra.get("own_paths"), model.module
    if not paths or mix_key(model) is None or not isinstance(module, TaskWrapper):
        return None
    batches = _batches(model, examples)
    trunk = base_trunk(model, examples, pack)
    at_own = [p for p in paths if next(module.get_submodule(p).children(), None) is not None]
    calls = _capture(module, at_own, batches)
    own: dict[str, Graphs] = {p: _trace_calls(module.get_submodule(p), calls[p], pack) for p in at_own}
    pieces = TracedPieces(own, trunk, _graphs_bytes(own))
    _check_pieces(model, examples, batches, pieces, "its pieces disagree")
    return pieces


def trunk_job(model: LoadedModel, pack: Pack = True) -> Callable[[], Trunk] | None:
    """The work that makes the trunk of `model`'s base (`base_trunk`, run on the upgrade lane), or None
    for a model with no base to share one with (`trunkable`). The registry's `trunker`: a busy base gets
    its trunk even when none of its tenants is traced (runtime/registry.py)."""
    return functools.partial(base_trunk, model, None, pack) if trunkable(model) else None


def trunkable(model: LoadedModel) -> bool:
    """True for a tenant whose base may have a trunk: an eager module of a safetensors version on the CPU
    that shares layers with its base's other tenants (`own_paths`, `mix_key`)."""
    return (
        isinstance(model.module, TaskWrapper)
        and model.manifest.format == "safetensors"
        and model.device.type == "cpu"
        and bool(model.extra.get("own_paths"))
        and mix_key(model) is not None
    )


def base_trunk(model: LoadedModel, examples: ExampleSet | None = None, pack: Pack = True) -> Trunk:
    """The trunk of `model`'s base for its split paths: the one held already (`TRUNKS`), else graphs of
    the shared subtrees (`trunk_paths`) traced from `model`'s module over the shared tensors, warmed up
    and checked: `model` run through them (its own layers eager) must answer as its eager module does.
    Made once per base (under `TRUNKS.lock`; `pack`: over prepacked linear weights, as `traced`). Runs on
    the upgrade thread; ModelLoadFailed when it cannot be made or disagrees."""
    paths, key, module = model.extra.get("own_paths"), mix_key(model), model.module
    if not paths or key is None or not isinstance(module, TaskWrapper):
        raise ModelLoadFailed(f"model {model.model_id!r} v{model.version} shares no layers: no trunk")
    with TRUNKS.lock:  # one maker per base; the others reuse what it made
        trunk = TRUNKS.get(key, paths)
        if trunk is not None:
            return trunk
        started = time.perf_counter()
        examples = examples or build_examples(model.tokenizer, model.handler.pair_input)
        batches = _batches(model, examples)
        at_trunk = trunk_paths(module, paths)
        try:
            calls = _capture(module, at_trunk, batches)
            graphs: dict[str, Graphs] = {
                p: _trace_calls(module.get_submodule(p), calls[p], pack) for p in at_trunk
            }
        except Exception as exc:
            raise ModelLoadFailed(
                f"model {model.model_id!r} v{model.version}: its base's trunk could not be traced: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        trunk = Trunk(graphs, tuple(paths), _graphs_bytes(graphs))
        _check_pieces(model, examples, batches, TracedPieces(trunk=trunk), "its base's trunk disagrees")
        trunk.seconds = time.perf_counter() - started
        TRUNKS.add(key, trunk)
        return trunk


def _batches(model: LoadedModel, examples: ExampleSet) -> list[tuple[torch.Tensor, ...]]:
    """The model's arguments for the trace example and each check batch, in that order."""
    return [model_args(b, model.device) for b in (examples.trace, *examples.checks)]


def _check_pieces(
    model: LoadedModel,
    examples: ExampleSet,
    batches: Sequence[tuple[torch.Tensor, ...]],
    pieces: TracedPieces,
    what: str,
) -> None:
    """ModelLoadFailed unless `model` run alone through `pieces` (a composite of one model, all rows its
    own) answers the example and check batches as its eager module does (the trace fidelity bounds);
    `what` names the pieces in the message ("its pieces disagree")."""
    module, paths = model.module, list(model.extra.get("own_paths") or ())
    assert isinstance(module, TaskWrapper)
    reference, candidate = [], []
    with torch.inference_mode():
        for batch, args in zip((examples.trace, *examples.checks), batches, strict=True):
            whole = composite([module], paths, [(0, int(args[0].shape[0]))], [pieces])
            reference += output_rows(module(*args), batch, model.manifest.task)
            candidate += output_rows(whole(*args), batch, model.manifest.task)
    verdict = compare(reference, candidate).judge(TRACE_FIDELITY[manifest_dtype(model.dtype)])
    if not verdict.passed:
        raise ModelLoadFailed(
            f"model {model.model_id!r} v{model.version}: {what} with the eager module "
            f"(max abs diff {verdict.max_abs_diff:.3g} > {verdict.tolerance:.3g})"
        )


def _graphs_bytes(pieces: dict[str, Graphs]) -> int:
    """The estimated own memory of pieces' graphs (`graph_bytes` of each)."""
    graphs = [g for by_signature in pieces.values() for g in by_signature.values()]
    return sum(graph_bytes(g) for g in graphs if isinstance(g, torch.jit.ScriptModule))


class _Bound(nn.Module):
    """A submodule called as one recorded call was, its tensors taken from `forward`'s arguments in order
    and its other arguments fixed (what a trace of it records): the submodule stays a child, so the
    graph's parameters are its tensors, not constants."""

    def __init__(self, sub: nn.Module, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.sub = sub
        self.template = [(isinstance(a, torch.Tensor), a) for a in args]
        self.keywords = {k: (isinstance(v, torch.Tensor), v) for k, v in kwargs.items()}

    def forward(self, *tensors: torch.Tensor) -> Any:
        """The submodule's output for these tensors and the recorded constants."""
        given = iter(tensors)
        args = [next(given) if is_tensor else value for is_tensor, value in self.template]
        kwargs = {k: (next(given) if is_tensor else value) for k, (is_tensor, value) in self.keywords.items()}
        return self.sub(*args, **kwargs)


def _capture(
    module: nn.Module, paths: list[str], batches: Sequence[tuple[torch.Tensor, ...]]
) -> dict[str, dict[Signature, tuple[tuple[Any, ...], dict[str, Any]]]]:
    """The first call of each signature that each submodule at `paths` gets while the model runs `batches`."""
    calls: dict[str, dict[Signature, tuple[tuple[Any, ...], dict[str, Any]]]] = {p: {} for p in paths}

    def hook(path: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            key = signature(args, kwargs)
            if key is not None and len(calls[path]) < MAX_SIGNATURES:
                calls[path].setdefault(key, (args, dict(kwargs)))

        return record

    handles = [module.get_submodule(p).register_forward_pre_hook(hook(p), with_kwargs=True) for p in paths]
    try:
        with torch.inference_mode():
            for args in batches:
                module(*args)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _trace_calls(
    sub: nn.Module, calls: dict[Signature, tuple[tuple[Any, ...], dict[str, Any]]], pack: Pack
) -> dict[Signature, Callable[..., Any]]:
    """A warmed-up graph of `sub` (`pack`: of its copy with prepacked linear weights) per recorded call
    signature."""
    graphs: dict[Signature, Callable[..., Any]] = {}
    for key, (args, kwargs) in calls.items():
        inputs = tensor_args(args, kwargs)
        graph = jit_trace(_Bound(packed_copy(sub, pack), args, kwargs), inputs, freeze=False)
        with torch.inference_mode():
            for _ in range(WARM_UP_CALLS):
                graph(*inputs)
        graphs[key] = graph
    return graphs
