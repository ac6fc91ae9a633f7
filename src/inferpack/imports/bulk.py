"""Bulk import: `inferpack models import --from-list CSV` (columns `id,source[,task]`).

Rows are imported one after another; a row whose model's latest version already came from the same
source (same fingerprint) is skipped, so a run interrupted at any point resumes where it stopped when
started again. A failing row is reported and the others still import.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from inferpack.errors import ImportFailed, InferpackError
from inferpack.imports.importer import Importer, ImportResult
from inferpack.repository.ids import validate_model_id
from inferpack.repository.manifest import TASKS, Task


@dataclass(frozen=True)
class ListRow:
    """One line of an import list; `source` relative paths are relative to the list's folder."""

    model_id: str
    source: str
    task: Task | None = None


@dataclass
class BulkReport:
    """What a bulk import did."""

    imported: list[ImportResult] = field(default_factory=list)
    skipped: list[ImportResult] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (model id, message)
    seconds: float = 0.0


def read_list(path: Path) -> list[ListRow]:
    """Parse an import list: `id,source[,task]` per line, an optional header line, `#` comments."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ImportFailed(f"cannot read the import list {path}: {exc}") from None
    rows: list[ListRow] = []
    seen: set[str] = set()
    for number, cells in enumerate(csv.reader(lines), start=1):
        cells = [c.strip() for c in cells]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() == "id":
            continue  # header
        if len(cells) not in (2, 3) or not cells[1]:
            raise ImportFailed(
                f"{path}, line {number}: expected `id,source[,task]`, got {len(cells)} column(s)",
                hint="one model per line: its id, a folder / hub id / file, and optionally its task",
            )
        task = cells[2] if len(cells) == 3 and cells[2] else None
        if task is not None and task not in TASKS:
            raise ImportFailed(
                f"{path}, line {number}: unknown task {task!r}", hint=f"tasks: {', '.join(TASKS)}"
            )
        try:
            model_id = validate_model_id(cells[0])
        except InferpackError as exc:
            raise ImportFailed(f"{path}, line {number}: {exc.message}", hint=exc.hint) from None
        if model_id in seen:
            raise ImportFailed(f"{path}, line {number}: id {model_id!r} appears twice")
        seen.add(model_id)
        rows.append(ListRow(model_id, cells[1], task))
    return rows


def import_list(
    importer: Importer,
    rows: list[ListRow],
    *,
    base: Path,
    progress: Callable[[ListRow], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> BulkReport:
    """Import every row (skipping those already imported from the same source); failures are collected."""
    started = clock()
    report = BulkReport()
    for row in rows:
        try:
            result = importer.import_source(
                row.source, model_id=row.model_id, task=row.task, skip_if_imported=True, base=base
            )
        except InferpackError as exc:
            report.failed.append((row.model_id, str(exc)))
        else:
            (report.skipped if result.skipped else report.imported).append(result)
        if progress is not None:
            progress(row)
    report.seconds = clock() - started
    return report
