"""`inferpack models import`: flags -> Importer -> one import or a bulk list -> a result table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from inferpack.errors import ImportFailed
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import Task

if TYPE_CHECKING:  # the importer imports torch and transformers: only when an import actually runs
    from inferpack.imports.importer import Importer, ImportResult


def import_command(
    source: Annotated[
        str | None,
        typer.Argument(
            help="A Hugging Face model folder (config.json + weights + tokenizer), a hub model id in the "
            "local Hugging Face cache (org/name), or a TorchScript file (with --tokenizer and --task)."
        ),
    ] = None,
    repository: Annotated[Path, typer.Option(help="Repository folder (created when absent).")] = Path(
        "demo-repo"
    ),
    model_id: Annotated[
        str | None, typer.Option("--id", help="Model id (default: the folder's, hub id's or file's name).")
    ] = None,
    task: Annotated[
        Task | None,
        typer.Option(
            help="Override the task read from config.json's architectures (required for TorchScript)."
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="TorchScript only: a tokenizer.json, or a folder with a tokenizer's files."),
    ] = None,
    new_version: Annotated[
        bool,
        typer.Option(
            "--new-version/--no-new-version",
            help="Add a version to a model that exists (default); --no-new-version refuses instead.",
        ),
    ] = True,
    from_list: Annotated[
        Path | None,
        typer.Option(
            help="Bulk: a CSV of id,source[,task] (relative sources are relative to the CSV's folder); "
            "re-running resumes, skipping rows already imported from the same source."
        ),
    ] = None,
    share: Annotated[
        bool,
        typer.Option(
            "--share/--no-share",
            help="Store layers identical to another model's once, in <repo>/_shared/weights/ (default).",
        ),
    ] = True,
) -> None:
    """Import your own model: convert, check against transformers, store as a new version (see
    docs/models.md)."""
    if (source is None) == (from_list is None):
        raise typer.BadParameter("name one SOURCE or pass --from-list CSV")
    if from_list is not None and (model_id or task or tokenizer):
        raise typer.BadParameter("--id, --task and --tokenizer name one model; put them in the list")
    import torch

    from inferpack.imports.importer import Importer as Importer_

    # The check runs a few short inputs through two small forwards: a second intra-op thread only adds
    # synchronisation there (measured on 2 shared cores: 0.3 s vs 0.6-3 s per check).
    torch.set_num_threads(1)

    importer = Importer_(LocalRepository(repository), share=share)
    if source is not None:
        result = importer.import_source(
            source, model_id=model_id, task=task, tokenizer=tokenizer, new_version=new_version
        )
        Console().print(_summary(result))
        return
    assert from_list is not None
    _bulk(importer, from_list)


def _bulk(importer: Importer, csv_path: Path) -> None:
    from inferpack.imports.bulk import import_list, read_list

    rows = read_list(csv_path)
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    with progress:
        bar = progress.add_task(f"importing {len(rows)} models", total=len(rows))
        report = import_list(
            importer, rows, base=csv_path.resolve().parent, progress=lambda _row: progress.advance(bar)
        )
    Console().print(
        f"imported {len(report.imported)}, already imported {len(report.skipped)}, failed "
        f"{len(report.failed)} in {report.seconds:.1f} s; repository {_size_mb(importer.repo.root):.1f} MB"
    )
    for model_id, message in report.failed:
        err.print(f"[red]{model_id}[/]: {escape(message)}")
    if report.failed:
        raise ImportFailed(
            f"{len(report.failed)} of {len(rows)} models failed to import (listed above); the others are in",
            hint="fix those sources and run the same command again: imported rows are skipped",
        )


def _summary(result: ImportResult) -> Table:
    """The imported version, one field per line: a one-row table squeezed its task, source and cosine
    into `text-c…`, `/tmp/a…` and `1.0000…` on an 80-column terminal (and in a pipe, which rich treats as
    80 columns). Values fold rather than end in an ellipsis, so a long source path stays whole."""
    a = result.agreement
    check = "-" if a is None else f"max abs diff {a.max_abs_diff:.2g}, cosine {a.cosine:.6f}: "
    check += "" if a is None else ("passed" if a.passed else "FAILED")
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("imported", f"{result.model_id} version {result.version}")
    table.add_row("task", result.task)
    table.add_row("source", result.source)
    table.add_row("agreement", check)
    table.add_row("seconds", f"{result.seconds:.2f}")
    return table


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
