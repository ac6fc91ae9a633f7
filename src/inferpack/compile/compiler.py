"""One compile run: eager fp32 model -> converted variant -> TorchScript for a target -> checked -> stored.

The steps live in their own modules (examples, convert, trace, agreement, store); this module only orders
them and decides, from the checks, whether the result may be stored.
"""

from __future__ import annotations

import io
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from inferpack.compile.cast import cast_model
from inferpack.compile.checks import Checks, CompileResult, check, compile_result, enforce, source_version
from inferpack.compile.convert import Variant, choose_variant, convert
from inferpack.compile.examples import ExampleSet, build_examples, model_args, one_by_one, pad_to
from inferpack.compile.onnxexport import OPSET, check_onnx_options, export_checked_graph
from inferpack.compile.onnxexport import WEIGHTS_FILE as ONNX_FILE
from inferpack.compile.options import CompileOptions
from inferpack.compile.store import WEIGHTS_FILE, store_version, torchscript_writer
from inferpack.compile.trace import device_for, jit_trace, neuron_trace
from inferpack.errors import CompileError, InferpackError
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import Manifest
from inferpack.runtime.modeling import TOKENIZERS
from inferpack.runtime.skeletons import build_eager
from inferpack.runtime.tasks import Encoded, handler_for


def compile_model(
    repo: LocalRepository,
    model_id: str,
    options: CompileOptions,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> CompileResult:
    """Compile one model and store it as a new version; CompileError (nothing stored) on a failed check."""
    if options.output_format == "safetensors":
        return cast_model(repo, model_id, options, clock=clock)
    started = clock()
    variant = choose_variant(options.dtype, options.quantize, options.target)
    if options.output_format == "onnx":
        check_onnx_options(options)
    device = device_for(options.target)  # fails before any work when the target is not available
    src = source_version(repo, model_id, options.source_version)
    manifest = repo.manifest(model_id, src)
    try:
        tokenizer = TOKENIZERS.get(
            repo.resolve_file(model_id, src, manifest.tokenizer), manifest.max_sequence_length
        )
        eager = build_eager(repo.version_dir(model_id, src), manifest)
    except InferpackError:
        raise
    except Exception as exc:  # a broken source is the model's problem; say which model
        raise CompileError(
            f"model {model_id!r} v{src} could not be built: {type(exc).__name__}: {exc}"
        ) from exc
    handler = handler_for(manifest.task, manifest.labels, manifest.class_scores)
    examples = build_examples(tokenizer, handler.pair_input)
    if options.target == "neuron":
        examples = _static_shapes(examples, manifest.max_sequence_length)
    converted = convert(eager, variant, device)
    with tempfile.TemporaryDirectory(prefix="inferpack-compile-") as tmp:
        compiled: Callable[..., torch.Tensor]
        try:
            if options.output_format == "onnx":
                compiled, write = export_checked_graph(converted, examples.trace, Path(tmp))
            else:
                traced = _round_trip(_trace(converted, examples.trace, options, device), device)
                compiled, write = traced, torchscript_writer(traced)
        except CompileError:
            raise
        except Exception as exc:
            raise CompileError(
                f"{'exporting' if options.output_format == 'onnx' else 'tracing'} {model_id!r} v{src} for "
                f"{options.target} ({variant.label}) failed: {type(exc).__name__}: {exc}"
            ) from exc
        checks = check(eager, converted, compiled, examples, handler, device, variant)
        enforce(model_id, variant, checks, options.force)
        return _store(repo, model_id, src, manifest, options, variant, eager, checks, write, started, clock)


def _store(
    repo: LocalRepository,
    model_id: str,
    src: int,
    manifest: Manifest,
    options: CompileOptions,
    variant: Variant,
    eager: nn.Module,
    checks: Checks,
    write: Callable[[Path], None],
    started: float,
    clock: Callable[[], float],
) -> CompileResult:
    """Store a checked compile result as a new version and describe it."""

    hidden = int(getattr(eager.model, "config").hidden_size)  # noqa: B009 - transformers config attribute
    static = "" if options.target != "neuron" else f"; static input shape [1, {manifest.max_sequence_length}]"
    onnx = options.output_format == "onnx"
    kind = f"ONNX opset {OPSET}" if onnx else "TorchScript"
    new_manifest = Manifest(
        format=options.output_format,
        task=manifest.task,
        weights=ONNX_FILE if onnx else WEIGHTS_FILE,
        config=manifest.config,
        tokenizer=manifest.tokenizer,
        max_sequence_length=manifest.max_sequence_length,
        dtype=variant.dtype,
        quantization=variant.quantization,
        target=options.target,
        # the server pads every batch to this shape (inferpack.runtime.neuron)
        static_shape=(1, manifest.max_sequence_length) if options.target == "neuron" else None,
        labels=manifest.labels,
        class_scores=manifest.class_scores,
        pooling=manifest.pooling,  # baked into the trace; kept as metadata
        normalize=manifest.normalize,
        hidden_size=hidden,
        parameters=manifest.parameters,
        compiled_from=src,
        agreement=checks.agreement,
        description=f"{kind} ({options.target}, {variant.label}) compiled by inferpack from v{src}"
        f"{static}" + (f"; {manifest.description}" if manifest.description else ""),
    )
    version, path = store_version(repo, model_id, src, write, new_manifest)
    return compile_result(model_id, src, version, path, variant, options.target, checks, clock() - started)


def _static_shapes(examples: ExampleSet, width: int) -> ExampleSet:
    """Batch-1 inputs padded to the maximum length: what a static-shape (Neuron) graph runs with."""
    first = one_by_one((examples.trace,), width)[0]
    return ExampleSet(
        trace=pad_to(first, width),
        checks=one_by_one(examples.checks, width),
        check_items=tuple([item] for batch in examples.check_items for item in batch),
    )


def _trace(
    model: nn.Module, example: Encoded, options: CompileOptions, device: torch.device
) -> torch.jit.ScriptModule:
    args = model_args(example, device)
    if options.target == "neuron":
        return neuron_trace(model, args)
    return jit_trace(model, args, freeze=options.freeze)


def _round_trip(module: torch.jit.ScriptModule, device: torch.device) -> torch.jit.ScriptModule:
    """Save and reload in memory, so the checks run on exactly what a server will load from `model.pt`."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice; see trace.jit_trace
        torch.jit.save(module, buffer)
        buffer.seek(0)
        loaded: torch.jit.ScriptModule = torch.jit.load(buffer, map_location=device)  # type: ignore[no-untyped-call]
    return loaded.eval()
