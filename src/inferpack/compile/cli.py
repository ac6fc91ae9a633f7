"""`inferpack compile`: flags -> CompileOptions -> compile_model per model -> a result table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from inferpack.compile.options import CompileOptions, OutputFormat, QuantizeChoice
from inferpack.errors import CompileError, InferpackError
from inferpack.progress import counting_progress
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import DType, TargetName

if TYPE_CHECKING:  # the compiler imports torch and transformers: only when a compile actually runs
    from inferpack.compile.checks import CompileResult


def compile_command(
    model: Annotated[str | None, typer.Argument(help="Model id to compile (or use --all).")] = None,
    repository: Annotated[Path, typer.Option(help="Repository folder.")] = Path("demo-repo"),
    target: Annotated[
        TargetName, typer.Option(help="cpu, cuda (needs a GPU here) or neuron (needs the Neuron SDK).")
    ] = "cpu",
    dtype: Annotated[DType, typer.Option(help="fp32, bf16, or fp16 (cuda: GPUs without bf16).")] = "fp32",
    quantize: Annotated[
        QuantizeChoice, typer.Option(help="int8: dynamic int8 quantisation of Linear layers (CPU only).")
    ] = "none",
    version: Annotated[
        int | None, typer.Option(help="Source version (default: the latest safetensors version).")
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Compile every model in the repository.")] = False,
    force: Annotated[
        bool, typer.Option(help="Store the result even when its agreement check fails.")
    ] = False,
    freeze: Annotated[
        bool, typer.Option("--freeze/--no-freeze", help="torch.jit.freeze the traced graph (cpu, cuda).")
    ] = True,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="torchscript: a traced graph; safetensors: the weights stored in --dtype, which a "
            "server computing in that dtype maps from the file without a copy (eager serving); onnx: an "
            "fp32 CPU graph for ONNX Runtime (server.engine onnxruntime).",
        ),
    ] = "torchscript",
) -> None:
    """Trace a model to TorchScript for a target (or store its weights in another dtype, --format
    safetensors, or export an ONNX graph, --format onnx), check it against eager fp32, store it as a new
    version."""
    if (model is None) == (not all_models):
        raise typer.BadParameter("name one MODEL or pass --all")
    if all_models and version is not None:
        raise typer.BadParameter("--version names one model's version; it cannot be combined with --all")
    repo = LocalRepository(repository)
    options = CompileOptions(
        target=target,
        dtype=dtype,
        quantize=quantize,
        source_version=version,
        force=force,
        freeze=freeze,
        output_format=output_format,
    )
    out, err = Console(), Console(stderr=True)
    from inferpack.compile.compiler import compile_model

    if model is not None:
        results: list[CompileResult | tuple[str, str]] = [compile_model(repo, model, options)]
    else:
        results = _compile_all(repo, options, err)
    out.print(result_table(results, options))
    failures = [r for r in results if isinstance(r, tuple)]
    for model_id, reason in failures:
        err.print(f"[red]{model_id}:[/] {escape(reason)}")  # reasons quote shapes: "[batch, tokens]"
    if failures:
        raise CompileError(f"{len(failures)} of {len(results)} models failed to compile (reasons above)")


def _compile_all(
    repo: LocalRepository, options: CompileOptions, console: Console
) -> list[CompileResult | tuple[str, str]]:
    """Compile every model, one after another, with a progress bar; a failure does not stop the rest."""
    from inferpack.compile.compiler import compile_model

    ids = repo.model_ids()
    results: list[CompileResult | tuple[str, str]] = []
    with counting_progress(console) as progress:
        bar = progress.add_task(f"compiling {len(ids)} models", total=len(ids))
        for model_id in ids:
            progress.update(bar, description=f"compiling {model_id}")
            try:
                results.append(compile_model(repo, model_id, options))
            except InferpackError as exc:
                results.append((model_id, exc.message))
            progress.advance(bar)
    return results


COLUMNS = ("model", "new", "from", "variant", "max diff", "cosine", "answers", "check", "secs")


def result_table(results: list[CompileResult | tuple[str, str]], options: CompileOptions) -> Table:
    """One row per model: new and source version, variant, agreement with eager fp32 (max abs diff, mean
    cosine, share of check items whose answer is unchanged) and compile time; failed models get a row
    marked failed (the reasons are printed under the table, where long messages do not squeeze columns)."""
    rows = [_row(r) for r in results]
    # No vertical rules and every column at least as wide as its widest cell: an 80-column terminal (or a
    # pipe, which rich treats as 80 columns) still shows every number and id in full.
    table = Table(
        title=f"compiled for {options.target} ({options.output_format})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for i, name in enumerate(COLUMNS):
        width = max([len(name)] + [len(Text.from_markup(row[i]).plain) for row in rows])
        table.add_column(name, justify="left" if i in (0, 3, 7) else "right", min_width=width, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _row(r: CompileResult | tuple[str, str]) -> list[str]:
    if isinstance(r, tuple):
        return [r[0], "-", "-", "-", "-", "-", "-", "[red]failed[/]", "-"]
    a = r.agreement
    return [
        r.model_id,
        f"v{r.version}",
        f"v{r.source_version}",
        r.variant,
        f"{a.max_abs_diff:.2e}",
        f"{a.cosine:.5f}",
        "-" if r.same_answers is None else f"{r.same_answers:.0%}",
        "passed" if a.passed else "[yellow]forced[/]",
        f"{r.seconds:.1f}",
    ]
