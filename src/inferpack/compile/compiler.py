"""One compile run: eager fp32 model -> converted variant -> TorchScript for a target -> checked -> stored.

The steps live in their own modules (examples, convert, trace, agreement, store); this module only orders
them and decides, from the checks, whether the result may be stored.
"""

from __future__ import annotations

import io
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inferpack.compile.agreement import (
    TOLERANCES,
    TRACE_FIDELITY,
    Comparison,
    compare,
    output_rows,
    same_answers,
)
from inferpack.compile.convert import Variant, choose_variant, convert
from inferpack.compile.examples import ExampleSet, build_examples, model_args, one_by_one, pad_to
from inferpack.compile.onnxexport import OPSET, check_onnx_options, export_checked_graph
from inferpack.compile.onnxexport import WEIGHTS_FILE as ONNX_FILE
from inferpack.compile.options import CompileOptions
from inferpack.compile.store import WEIGHTS_FILE, store_version, torchscript_writer
from inferpack.compile.trace import device_for, jit_trace, neuron_trace
from inferpack.errors import CompileError, InferpackError
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import Agreement, Manifest, TargetName, Task
from inferpack.runtime.modeling import TOKENIZERS
from inferpack.runtime.skeletons import build_eager
from inferpack.runtime.tasks import Encoded, TaskHandler, handler_for


@dataclass(frozen=True)
class CompileResult:
    """A stored compiled version and the evidence it was checked."""

    model_id: str
    source_version: int
    version: int
    path: Path
    variant: str
    target: TargetName
    agreement: Agreement
    trace_fidelity: Agreement
    worst_cosine: float
    same_answers: float | None
    seconds: float


def source_version(repo: LocalRepository, model_id: str, requested: int | None) -> int:
    """The version to compile from: the one asked for, or the latest fp32 safetensors version (the
    reference every variant is checked against; a cast bf16 version is a variant, not a source)."""
    if requested is not None:
        manifest = repo.manifest(model_id, requested)
        if manifest.format != "safetensors" or manifest.dtype != "fp32":
            raise CompileError(
                f"model {model_id!r} v{requested} is already {manifest.format} ({manifest.dtype}); "
                "compile from an fp32 safetensors version",
                hint=f"versions: {repo.versions(model_id)}; omit --version to use the latest fp32 "
                "safetensors one",
            )
        return requested
    for version in reversed(repo.versions(model_id)):
        manifest = repo.manifest(model_id, version)
        if manifest.format == "safetensors" and manifest.dtype == "fp32":
            return version
    raise CompileError(f"model {model_id!r} has no fp32 safetensors version to compile from")


def compile_model(
    repo: LocalRepository,
    model_id: str,
    options: CompileOptions,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> CompileResult:
    """Compile one model and store it as a new version; CompileError (nothing stored) on a failed check."""
    if options.output_format == "safetensors":
        from inferpack.compile.cast import cast_model  # it builds on this module's checks

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
    handler = handler_for(manifest.task, manifest.labels)
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
        checks = _check(eager, converted, compiled, examples, handler, device, variant)
        _enforce(model_id, variant, checks, options.force)
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
    return CompileResult(
        model_id=model_id,
        source_version=src,
        version=version,
        path=path,
        variant=variant.label,
        target=options.target,
        agreement=checks.agreement,
        trace_fidelity=checks.fidelity,
        worst_cosine=checks.raw.min_cosine,
        same_answers=checks.same_answers,
        seconds=clock() - started,
    )


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


@dataclass(frozen=True)
class Checks:
    """The evidence for one compiled module: fidelity to its own variant, agreement with eager fp32."""

    fidelity: Agreement
    agreement: Agreement
    raw: Comparison
    same_answers: float | None


def _check(
    eager: nn.Module,
    converted: nn.Module,
    traced: Callable[..., torch.Tensor],
    examples: ExampleSet,
    handler: TaskHandler,
    device: torch.device,
    variant: Variant,
) -> Checks:
    """Run the three models on the held-out checks and compare (see inferpack.compile.agreement)."""
    task = handler.task
    reference = _outputs(eager, examples.checks, torch.device("cpu"))
    # fp32 on the CPU converts to the eager module itself: its outputs are the reference's; a cast
    # (compile --format safetensors) is its own candidate: nothing was traced.
    same_variant = reference if converted is eager else _outputs(converted, examples.checks, device)
    candidate = same_variant if traced is converted else _outputs(traced, examples.checks, device)
    candidate_rows = _rows(candidate, examples.checks, task)
    fidelity = compare(_rows(same_variant, examples.checks, task), candidate_rows)
    raw = compare(_rows(reference, examples.checks, task), candidate_rows)
    return Checks(
        fidelity=fidelity.judge(TRACE_FIDELITY[variant.label]),
        agreement=raw.judge(TOLERANCES[variant.label]),
        raw=raw,
        same_answers=same_answers(handler, reference, candidate, examples.checks, examples.check_items),
    )


def _outputs(
    model: Callable[..., torch.Tensor], batches: tuple[Encoded, ...], device: torch.device
) -> list[torch.Tensor]:
    """The model's output on each batch, as float32 on the CPU."""
    with torch.inference_mode():
        return [model(*model_args(batch, device)).float().cpu() for batch in batches]


def _rows(outputs: list[torch.Tensor], batches: tuple[Encoded, ...], task: Task) -> list[torch.Tensor]:
    return [row for out, batch in zip(outputs, batches, strict=True) for row in output_rows(out, batch, task)]


def _enforce(model_id: str, variant: Variant, checks: Checks, force: bool) -> None:
    """Refuse to store a result that fails its checks.

    `force` overrides only the agreement with eager fp32 (a quality trade-off a user may accept). NaN
    outputs and a trace that does not reproduce its own eager model (wrong answers on other request
    shapes) are never stored.
    """
    fidelity, agreement = checks.fidelity, checks.agreement
    if not (math.isfinite(agreement.max_abs_diff) and math.isfinite(agreement.cosine)):
        raise CompileError(f"{model_id!r} ({variant.label}) produced NaN or infinite outputs; nothing stored")
    if not fidelity.passed:
        policy = TRACE_FIDELITY[variant.label]
        raise CompileError(
            f"the traced {variant.label} model of {model_id!r} does not reproduce its eager {variant.label} "
            f"outputs on inputs of other lengths and batch sizes: max abs diff {fidelity.max_abs_diff:.3g} "
            f"(allowed {fidelity.tolerance:.3g}), mean cosine {fidelity.cosine:.6f} (required >= "
            f"{policy.min_cosine}). The trace baked in something shape- or value-dependent; nothing stored",
            hint="the model's forward must not turn tensors into Python values (int(), float(), .item(), "
            "if on a tensor); --force does not override this check",
        )
    if not agreement.passed and not force:
        policy = TOLERANCES[variant.label]
        raise CompileError(
            f"{model_id!r} compiled to {variant.label} disagrees with eager fp32 beyond its tolerance: "
            f"max abs diff {agreement.max_abs_diff:.3g} (allowed {agreement.tolerance:.3g}), mean cosine "
            f"{agreement.cosine:.5f} (worst item {checks.raw.min_cosine:.5f}; required >= "
            f"{policy.min_cosine}); nothing stored",
            hint="--force stores it anyway, with the measured agreement in its manifest",
        )
