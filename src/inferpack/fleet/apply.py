"""The supervisor side of a change to a running fleet: apply a `ChangeRequest` phase by phase.

`attach` hooks a `ChangeApplier` into the supervisor's loop; between supervision ticks it looks for a new
request (`fleet.change`), turns it into phases (`fleet.reconcile`: `diff` for a new plan,
`rolling_restart` for a restart) and runs them. The actions of a phase run at once (start and stop in this
thread, HTTP calls and waits in a small pool) while this thread keeps supervising (a server that dies
meanwhile is restarted as always); the next phase starts when every action of this one is done.

Failures: a failed start or load (phase 1) is undone (the started servers stop, the loaded copies
unload) and the fleet stays on its old placement; a route the router did not apply stops the change
before anything is unloaded; a failed unload or stop is reported and the change goes on (the copy is no
longer routed to).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future

from inferpack.errors import ConfigError, FleetError, InferpackError
from inferpack.fleet import journal
from inferpack.fleet.actions import FleetActions
from inferpack.fleet.change import (
    ActionRecord,
    ChangeReport,
    ChangeRequest,
    load_request,
    report_file,
    request_file,
)
from inferpack.fleet.reconcile import (
    Action,
    Holdings,
    Phase,
    Route,
    StartServer,
    StopServer,
    UnloadModel,
    dark_models,
    diff,
    rolling_restart,
    undo,
)
from inferpack.fleet.supervisor import TICK_S, LaunchSpec, ServerLaunch, Supervisor, launch_file
from inferpack.jsonfile import write_atomic
from inferpack.plan import Plan, load_plan

log = logging.getLogger("inferpack.fleet.apply")


def attach(supervisor: Supervisor) -> None:
    """Let `supervisor` apply the changes commands hand it (`supervise(run_dir, attach)`)."""
    applier = ChangeApplier(supervisor)
    supervisor.on_tick = applier.poll


def _describe(action: Action) -> str:
    if isinstance(action, StartServer):
        return f"{len(action.models)} models"
    if isinstance(action, Route):
        held = action.as_dict()
        return f"{action.why}: {sum(map(len, held.values()))} copies on {len(held)} servers"
    return ""


class ChangeApplier:
    """Applies change requests to the fleet of one supervisor, one at a time."""

    def __init__(self, supervisor: Supervisor, actions: FleetActions | None = None) -> None:
        self.sup = supervisor
        self.run = supervisor.run
        # A fresh supervisor starts from launch.json: a request left by an earlier fleet is void.
        request_file(self.run).unlink(missing_ok=True)
        report_file(self.run).unlink(missing_ok=True)
        self.handled: str | None = None
        self.actions = actions if actions is not None else FleetActions(supervisor)
        self.report = ChangeReport(id="", kind="plan")
        self.started = 0.0

    # --- entry ------------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Apply a new request, if there is one and the fleet is running."""
        if self.sup.state.phase != "running":
            return
        try:
            request = load_request(self.run)
        except ConfigError as exc:
            log.error("ignoring a change request: %s", exc)
            request_file(self.run).unlink(missing_ok=True)
            return
        if request is None or request.id == self.handled:
            return
        self.handled = request.id
        # read once: a request written while this one runs (its command was interrupted) comes next
        request_file(self.run).unlink(missing_ok=True)
        self.apply(request)

    def apply(self, request: ChangeRequest) -> ChangeReport:
        """Apply one request and report on it (in change-report.json, and returned)."""
        self.report = ChangeReport(id=request.id, kind=request.kind)
        self.started = time.monotonic()
        self._save_report()
        self.sup.state.message = f"applying a change ({request.kind}): {report_file(self.run)}"
        log.info("change %s (%s) from %s", request.id, request.kind, request.requested_by)
        try:
            self.actions.plans = [load_plan(self.run.plan_file)]
            self.actions.restarting = request.kind == "restart"
            if request.kind == "plan":
                self._apply_plan(request)
            else:
                self._apply_restart(request)
        except InferpackError as exc:
            self.report.status, self.report.message = "failed", str(exc)
            log.error("change %s failed: %s", request.id, exc)
        except Exception as exc:  # a bug here must not take the supervisor, and the fleet, down with it
            log.exception("change %s failed", request.id)
            self.report.status, self.report.message = "failed", f"internal error: {exc!r} (supervisor log)"
        else:
            self.report.status = "done"
            log.info("change %s done in %.1f s", request.id, time.monotonic() - self.started)
        self.report.duration_s = round(time.monotonic() - self.started, 3)
        self._save_report()
        self.sup.state.message = None
        self.sup._save()
        return self.report

    # --- the two kinds ----------------------------------------------------------------------------------
    def holdings(self) -> dict[str, list[str]]:
        """What each running server holds now, by the supervisor's records."""
        return {c.record.name: list(c.record.models) for c in self.sup.servers}

    def actual_holdings(self, *targets: Holdings) -> dict[str, list[str]]:
        """What each running server holds: its recorded models plus the ready copies (asked over HTTP)
        that one of `targets` places there, i.e. the copies a change cut short already loaded, so a
        re-plan after it loads none twice and unloads the ones its target does not want. A recorded
        model that was evicted still counts (as before: a re-plan does not reload it)."""
        out = {}
        for child in self.sup.servers:
            name = child.record.name
            held = list(child.record.models)
            ready = self.actions.held_models(name) or []
            wanted = {m for t in targets for m in t.get(name, [])}
            held += [m for m in ready if m in wanted and m not in held]
            out[name] = held
        return out

    def _apply_plan(self, request: ChangeRequest) -> None:
        new_spec, new_plan = request.launch, request.plan
        if new_spec is None or new_plan is None:
            raise FleetError("a plan change needs the new launch spec and plan")
        old_spec = self.sup.spec
        if new_spec.repository != old_spec.repository:
            raise FleetError(
                f"the repository differs ({old_spec.repository} -> {new_spec.repository}): "
                "a running fleet keeps its repository; `inferpack down` then `up` to change it"
            )
        new = {s.name: list(s.models) for s in new_spec.servers}
        # a change cut short may have left servers of its own target running: their groups come from it
        earlier = journal.earlier_target(self.run)
        old = self.actual_holdings(new, _holdings_of(earlier))
        self.actions.plans = [new_plan, *self.actions.plans, *([earlier] if earlier else [])]
        self.report.notes = _restart_notes(old_spec, new_spec)
        phases = diff(old, new)
        record = journal.begin(self.run, request.id, new_plan, old, new, phases)
        self.sup.spec = new_spec  # new servers start from the new spec
        try:
            for number, phase in enumerate(phases):
                try:
                    self._run([phase], undoable=number == 0)
                except Exception:
                    if number == 0:
                        self.sup.spec = old_spec
                    raise
                record.phases_done = number + 1
                journal.save(self.run, record)
        except InferpackError as exc:
            # a failed phase 1 was undone (nothing half-done); a later failure leaves the fleet between
            # the two placements, which the journal says (and `up --plan` again finishes)
            record.status, record.message = "failed", str(exc)
            journal.save(self.run, record)
            raise
        # Servers that stayed restart (when they die, or `inferpack restart`) with their new models.
        launches = {s.name: s for s in new_spec.servers}
        for child in self.sup.servers:
            fresh = self.sup.server_child(launches[child.record.name])
            child.record.models, child.cmd, child.env = fresh.record.models, fresh.cmd, fresh.env
        write_atomic(launch_file(self.run), new_spec.model_dump_json(indent=1) + "\n")
        self.actions.route_now(new)  # plan.json holds the new plan itself (its metadata too)
        record.status = "done"
        journal.save(self.run, record)

    def _apply_restart(self, request: ChangeRequest) -> None:
        holdings = self.holdings()
        names = request.servers or list(holdings)
        if unknown := [n for n in names if n not in holdings]:
            raise FleetError(f"no server named {', '.join(unknown)}; servers: {', '.join(holdings)}")
        for name in names:
            ready = {
                c.record.name: c.record.models
                for c in self.sup.servers
                if c.record.status == "ready" or c.record.name == name
            }
            dark = dark_models(ready, name)
            if dark and not request.force:
                raise FleetError(
                    f"restarting {name} would leave {len(dark)} model(s) with no ready copy: "
                    f"{', '.join(dark[:10])}{' ...' if len(dark) > 10 else ''}; "
                    "add copies elsewhere first, or pass --force to accept the outage"
                )
            if dark:
                self.report.notes.append(
                    f"{name}: {len(dark)} model(s) unavailable during its restart (--force)"
                )
            self._run(rolling_restart(holdings, [name]), undoable=False)

    # --- phases -----------------------------------------------------------------------------------------
    def _run(self, phases: list[Phase], *, undoable: bool) -> None:
        for phase in phases:
            done, failure = self._run_phase(phase)
            if failure is None:
                continue
            if undoable and done:
                log.warning("undoing %d action(s) of the failed phase", len(done))
                _, undo_failure = self._run_phase(undo(a for a, _ in done))
                if undo_failure:
                    failure += f"; undoing it failed too: {undo_failure}"
                else:
                    for _, record in done:
                        record.status = "undone"
            raise FleetError(failure)

    def _run_phase(self, phase: Phase) -> tuple[list[tuple[Action, ActionRecord]], str | None]:
        """Run the actions of one phase at once, supervising meanwhile; (the actions that finished with
        their records, the first failure or None). A failed unload or stop is noted, not a failure: the
        copy it leaves is no longer routed to."""
        number = 1 + max((r.phase for r in self.report.actions), default=0)
        running: list[tuple[Action, ActionRecord, Future[None]]] = []
        for action in phase:
            record = ActionRecord(
                phase=number,
                kind=action.kind,
                server=getattr(action, "server", None),
                model=getattr(action, "model", None),
                detail=_describe(action),
                status="running",
                started_s=round(time.monotonic() - self.started, 3),
            )
            self.report.actions.append(record)
            try:
                future = self.actions.begin(action)
            except InferpackError as exc:
                future = Future()
                future.set_exception(exc)
            running.append((action, record, future))
        self._save_report()
        done: list[tuple[Action, ActionRecord]] = []
        failure: str | None = None
        while running:
            if self.sup.tick(time.monotonic()):
                self.sup._save()
            for item in [r for r in running if r[2].done()]:
                running.remove(item)
                action, record, future = item
                record.duration_s = round(time.monotonic() - self.started - (record.started_s or 0), 3)
                error = future.exception()
                if error is None:
                    record.status = "done"
                    done.append((action, record))
                elif isinstance(action, UnloadModel | StopServer):
                    record.status, record.message = "failed", str(error)
                    self.report.notes.append(f"not cleaned up: {action.kind} {action.server}: {error}")
                else:
                    record.status, record.message = "failed", str(error)
                    failure = failure or f"{action.kind} {record.server or ''} {record.model or ''}: {error}"
                self._save_report()
            if running:
                self.sup.stop_requested.wait(TICK_S)
        self.sup._save()
        return done, failure

    def _save_report(self) -> None:
        write_atomic(report_file(self.run), self.report.model_dump_json(indent=1) + "\n")


def _holdings_of(plan: Plan | None) -> dict[str, list[str]]:
    """Server -> models of a plan (none for no plan)."""
    return {} if plan is None else {s.name: list(s.models) for s in plan.servers()}


def _restart_notes(old: LaunchSpec, new: LaunchSpec) -> list[str]:
    """Launch settings of servers that stay which only a restart applies (threads, device)."""
    before = {s.name: s for s in old.servers}
    notes = []
    for s in new.servers:
        was = before.get(s.name)
        if was is None:
            continue
        changed = [
            f"{field} {getattr(was, field)} -> {getattr(s, field)}"
            for field in ServerLaunch.model_fields
            if field not in ("name", "port", "models") and getattr(was, field) != getattr(s, field)
        ]
        if changed:
            notes.append(
                f"{s.name}: {', '.join(changed)} takes effect at its next restart "
                f"(`inferpack restart {s.name}`)"
            )
    return notes
