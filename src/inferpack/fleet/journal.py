"""The durable record of a re-plan in progress, so a supervisor crash mid-change is not forgotten.

Before a re-plan (`inferpack up --plan NEW` on a running fleet) acts, the supervisor writes its target
plan to `RUN_DIR/reconcile-target.json` and the journal `RUN_DIR/reconcile.json`: the placement it moves
from and to, one line per phase, and how many phases are done, rewritten (atomically) after each phase
and when the change ends. A journal still `running` while its supervisor is gone is a change cut short:
`inferpack status` says which phases were applied and which were not, and `inferpack up` without
`--plan` starts the fleet on the interrupted change's target (with `--plan X`, on X). A re-plan computes
its diff from what the servers actually hold (their repository index), not from the supervisor's
records, so running `inferpack up --plan X` again after any interruption converges.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from inferpack.errors import ConfigError, InferpackError
from inferpack.fleet.reconcile import Holdings, LoadModel, Phase, Route, StartServer, StopServer, UnloadModel
from inferpack.fleet.state import RunDir
from inferpack.jsonfile import StrictModel, write_atomic
from inferpack.plan import Plan, load_plan

JournalStatus = Literal["running", "done", "failed"]


class ReconcileJournal(StrictModel):
    """One re-plan as far as it went."""

    format_version: Literal[1] = 1
    id: str
    status: JournalStatus = "running"
    started_at: float  # wall clock (time.time), for people reading it
    old: dict[str, list[str]]
    target: dict[str, list[str]]
    phases: list[str]
    phases_done: int = 0
    message: str | None = None

    @property
    def half_done(self) -> bool:
        """True when some phases were applied and not all: the fleet is between the two placements."""
        if self.status == "done":
            return False
        return self.status == "running" or 0 < self.phases_done < len(self.phases)


def journal_file(run: RunDir) -> Path:
    """Where the supervisor journals the re-plan in progress."""
    return run.root / "reconcile.json"


def target_file(run: RunDir) -> Path:
    """The target plan of the latest re-plan (a plan file `inferpack up --plan` takes)."""
    return run.root / "reconcile-target.json"


def previous_file(run: RunDir) -> Path:
    """Where a journal goes once a fresh start or `down` has superseded it (kept for the record)."""
    return run.root / "reconcile-previous.json"


def describe_phase(phase: Phase) -> str:
    """One line for a phase: what kinds of action it holds, counted."""
    counts: dict[str, int] = {}
    for action in phase:
        if isinstance(action, Route):
            return f"route: {action.why}"
        name = {StartServer: "start server", LoadModel: "load copy", UnloadModel: "unload copy"}.get(
            type(action), "stop server"
        )
        assert isinstance(action, StartServer | LoadModel | UnloadModel | StopServer)
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x {what}" for what, n in counts.items())


def begin(
    run: RunDir, change_id: str, plan: Plan, old: Holdings, target: Holdings, phases: list[Phase]
) -> ReconcileJournal:
    """Record the target plan, then the journal (both atomically), before the first action."""
    write_atomic(target_file(run), plan.model_dump_json(indent=2, exclude_none=True) + "\n")
    journal = ReconcileJournal(
        id=change_id,
        started_at=time.time(),
        old={s: list(m) for s, m in old.items()},
        target={s: list(m) for s, m in target.items()},
        phases=[describe_phase(p) for p in phases],
    )
    save(run, journal)
    return journal


def earlier_target(run: RunDir) -> Plan | None:
    """The target plan of the latest re-plan, if one was recorded and is readable."""
    if not target_file(run).is_file():
        return None
    try:
        return load_plan(target_file(run))
    except InferpackError:
        return None


def save(run: RunDir, journal: ReconcileJournal) -> None:
    """Rewrite the journal atomically."""
    write_atomic(journal_file(run), journal.model_dump_json(indent=1) + "\n")


def load_journal(run: RunDir) -> ReconcileJournal | None:
    """The journal of the latest re-plan, if any."""
    try:
        return ReconcileJournal.model_validate(json.loads(journal_file(run).read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ConfigError(f"{journal_file(run)} is not a re-plan journal: {exc}") from exc


def retire(run: RunDir) -> None:
    """The fleet was started afresh or stopped: the journal no longer describes it."""
    path = journal_file(run)
    if path.is_file():
        path.replace(previous_file(run))


def explain(run: RunDir, journal: ReconcileJournal, *, supervisor_alive: bool) -> str:
    """What an operator needs to know about a half-done re-plan, and the command that finishes it."""
    done = journal.phases[: journal.phases_done]
    left = journal.phases[journal.phases_done :]
    where = f"after phase {journal.phases_done} of {len(journal.phases)}"
    if journal.status == "running" and supervisor_alive:
        return f"re-plan {journal.id[:8]} in progress ({where}): {run.root / 'change-report.json'}"
    why = "was cut short (its supervisor is gone)" if journal.status == "running" else "failed"
    lines = [f"re-plan {journal.id[:8]} {why} {where}; the fleet is between two placements."]
    if journal.message:
        lines.append(f"  why: {journal.message}")
    lines += [f"  applied: {p}" for p in done]
    lines += [f"  not applied: {p}" for p in left]
    if supervisor_alive:
        finish = f"`inferpack up --plan {target_file(run)} --run-dir {run.root}`"
        lines.append(f"  to finish: {finish} (the diff is taken from what the servers hold)")
    else:
        lines.append(
            f"  to finish: `inferpack up --run-dir {run.root}` starts the fleet on its target "
            f"({target_file(run)}); `inferpack up --plan X` on another plan"
        )
    return "\n".join(lines)
