"""The evidence a compiled version is stored on: the source it is compiled from, the checks against eager
fp32 and against its own variant, and the refusal of a result that fails them (compile and cast share it)."""

from __future__ import annotations

import math
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
from inferpack.compile.convert import Variant
from inferpack.compile.examples import ExampleSet, model_args
from inferpack.errors import CompileError
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import Agreement, TargetName, Task
from inferpack.runtime.tasks import Encoded, TaskHandler


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


def compile_result(
    model_id: str,
    src: int,
    version: int,
    path: Path,
    variant: Variant,
    target: TargetName,
    checks: Checks,
    seconds: float,
) -> CompileResult:
    """The result of a stored version and the checks it passed."""
    return CompileResult(
        model_id=model_id,
        source_version=src,
        version=version,
        path=path,
        variant=variant.label,
        target=target,
        agreement=checks.agreement,
        trace_fidelity=checks.fidelity,
        worst_cosine=checks.raw.min_cosine,
        same_answers=checks.same_answers,
        seconds=seconds,
    )


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


@dataclass(frozen=True)
class Checks:
    """The evidence for one compiled module: fidelity to its own variant, agreement with eager fp32."""

    fidelity: Agreement
    agreement: Agreement
    raw: Comparison
    same_answers: float | None


def check(
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


def enforce(model_id: str, variant: Variant, checks: Checks, force: bool) -> None:
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
