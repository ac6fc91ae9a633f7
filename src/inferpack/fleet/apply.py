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

import contextlib
import logging
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from inferpack.endpoints import ServerEndpoints, endpoints_json
from inferpack.errors import ConfigError, InferpackError
from inferpack.fleet import processes as P
from inferpack.fleet.change import (
    ActionRecord,
    ChangeReport,
    ChangeRequest,
    load_request,
    report_file,
    request_file,
    write_atomic,
)
from inferpack.fleet.placementfiles import placement_digest
from inferpack.fleet.reconcile import (
    Action,
    Holdings,
    LoadModel,
    Phase,
    Route,
    StartServer,
    StopServer,
    UnloadModel,
    dark_models,
    diff,
    plan_for,
    rolling_restart,
    undo,
)
from inferpack.fleet.supervisor import TICK_S, LaunchSpec, ServerLaunch, Supervisor, _Child, launch_file
from inferpack.plan import Plan, load_plan
from inferpack.settings import load_settings

log = logging.getLogger("inferpack.fleet.apply")


class ChangeFailed(InferpackError):
    """A change could not be applied (the report says which action and why)."""


def attach(supervisor: Supervisor) -> None:
    """Let `supervisor` apply the changes commands hand it (`supervise(run_dir, attach)`)."""
    applier = ChangeApplier(supervisor)
    supervisor.on_tick = applier.poll


def _auth_headers(spec: LaunchSpec) -> dict[str, str]:
    """The bearer token the servers' repository API wants: the admin token, else an inference token."""
    from inferpack.server.auth import read_tokens

    auth = load_settings(Path(spec.config) if spec.config else None).server.auth
    token = auth.admin_token or next(iter(read_tokens(auth)), None)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _describe(action: Action) -> str:
    if isinstance(action, StartServer):
        return f"{len(action.models)} models"
    if isinstance(action, Route):
        held = action.as_dict()
        return f"{action.why}: {sum(map(len, held.values()))} copies on {len(held)} servers"
    return ""


class ChangeApplier:
    """Applies change requests to the fleet of one supervisor, one at a time."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.run = supervisor.run
        # A fresh supervisor starts from launch.json: a request left by an earlier fleet is void.
        request_file(self.run).unlink(missing_ok=True)
        report_file(self.run).unlink(missing_ok=True)
        self.handled: str | None = None
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="change")
        self.headers = _auth_headers(supervisor.spec)
        self.plans: list[Plan] = []  # the plans a route may take servers' groups from, newest first
        self.report = ChangeReport(id="", kind="plan")
        self.started = 0.0
        self.restarting = False  # a stopped server stays in supervision, to be started again

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
        self.apply(request)

    def apply(self, request: ChangeRequest) -> ChangeReport:
        """Apply one request and report on it (in change-report.json, and returned)."""
        self.report = ChangeReport(id=request.id, kind=request.kind)
        self.started = time.monotonic()
        self._save_report()
        log.info("change %s (%s) from %s", request.id, request.kind, request.requested_by)
        try:
            self.plans = [load_plan(self.run.plan_file)]
            self.restarting = request.kind == "restart"
            if request.kind == "plan":
                self._apply_plan(request)
            else:
                self._apply_restart(request)
        except InferpackError as exc:
            self.report.status, self.report.message = "failed", str(exc)
            log.error("change %s failed: %s", request.id, exc)
        else:
            self.report.status = "done"
            log.info("change %s done in %.1f s", request.id, time.monotonic() - self.started)
        self.report.duration_s = round(time.monotonic() - self.started, 3)
        self._save_report()
        self.sup._save()
        return self.report

    # --- the two kinds ----------------------------------------------------------------------------------
    def holdings(self) -> dict[str, list[str]]:
        """What each running server holds now."""
        return {c.record.name: list(c.record.models) for c in self.sup.servers}

    def _apply_plan(self, request: ChangeRequest) -> None:
        new_spec, new_plan = request.launch, request.plan
        if new_spec is None or new_plan is None:
            raise ChangeFailed("a plan change needs the new launch spec and plan")
        old_spec = self.sup.spec
        if new_spec.repository != old_spec.repository:
            raise ChangeFailed(
                f"the repository differs ({old_spec.repository} -> {new_spec.repository}): "
                "a running fleet keeps its repository; `inferpack down` then `up` to change it"
            )
        old = self.holdings()
        new = {s.name: list(s.models) for s in new_spec.servers}
        self.plans = [new_plan, *self.plans]
        self.report.notes = _restart_notes(old_spec, new_spec)
        phases = diff(old, new)
        self.sup.spec = new_spec  # new servers start from the new spec
        try:
            self._run(phases[:1], undoable=True)
        except ChangeFailed:
            self.sup.spec = old_spec
            raise
        self._run(phases[1:], undoable=False)
        # Servers that stayed restart (when they die, or `inferpack restart`) with their new models.
        launches = {s.name: s for s in new_spec.servers}
        for child in self.sup.servers:
            fresh = self.sup.server_child(launches[child.record.name])
            child.record.models, child.cmd, child.env = fresh.record.models, fresh.cmd, fresh.env
        write_atomic(launch_file(self.run), new_spec.model_dump_json(indent=1) + "\n")
        self._route_now(new, "the new plan")  # plan.json holds the new plan itself (its metadata too)

    def _apply_restart(self, request: ChangeRequest) -> None:
        holdings = self.holdings()
        names = request.servers or list(holdings)
        if unknown := [n for n in names if n not in holdings]:
            raise ChangeFailed(f"no server named {', '.join(unknown)}; servers: {', '.join(holdings)}")
        for name in names:
            ready = {
                c.record.name: c.record.models
                for c in self.sup.servers
                if c.record.status == "ready" or c.record.name == name
            }
            dark = dark_models(ready, name)
            if dark and not request.force:
                raise ChangeFailed(
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
            raise ChangeFailed(failure)

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
                future = self._begin(action)
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

    def _begin(self, action: Action) -> Future[None]:
        """Start one action: what touches the supervisor's processes here, the waiting in the pool."""
        if self.sup.stop_requested.is_set():
            raise ChangeFailed("the fleet is stopping (`inferpack down`)")
        if isinstance(action, StartServer):
            return self.pool.submit(self._await_started, self._start(action), action.models)
        if isinstance(action, StopServer):
            return self.pool.submit(self._stop, self._unsupervise(action.server))
        if isinstance(action, Route):
            return self.pool.submit(self._await_router, self._write_route(action.as_dict()))
        url = self._url(action.server)
        verb = "load" if isinstance(action, LoadModel) else "unload"
        return self.pool.submit(self._repository_call, url, action.model, verb)

    # --- actions ----------------------------------------------------------------------------------------
    def _find(self, name: str) -> _Child | None:
        return next((c for c in self.sup.servers if c.record.name == name), None)

    def _child(self, name: str) -> _Child:
        child = self._find(name)
        if child is None:
            raise ChangeFailed(f"no running server named {name}")
        return child

    def _url(self, name: str) -> str:
        url = self._child(name).record.url
        assert url is not None
        return url

    def _launch(self, name: str) -> ServerLaunch:
        for launch in self.sup.spec.servers:
            if launch.name == name:
                return launch
        raise ChangeFailed(f"server {name} is not in the launch spec")

    def _start(self, action: StartServer) -> _Child:
        fresh = self.sup.server_child(self._launch(action.server))
        child = self._find(action.server)
        if child is not None:  # a restart: the same record, counting restarts
            child.cmd, child.env = fresh.cmd, fresh.env
            child.record.restarts += 1
        else:
            child = fresh
            self.sup.servers.append(child)
            self.sup.state.servers.append(child.record)
        self.sup._start(child)
        self.sup._save()
        return child

    def _await_started(self, child: _Child, models: tuple[str, ...]) -> None:
        url = child.record.url
        assert url is not None
        deadline = time.monotonic() + self.sup.spec.ready_timeout_s
        while True:
            if child.record.status in ("restarting", "failed"):
                raise ChangeFailed(f"{child.record.name} exited during start-up ({child.record.message})")
            ok, failed = P.probe_readiness(url, self.sup.spec.supervisor_ready_probe_s)
            if failed:
                raise ChangeFailed(P.failed_models_message(child.record.name, failed))
            if ok and all(self._model_ready(url, m) for m in models):
                return
            if time.monotonic() > deadline:
                raise ChangeFailed(
                    f"{child.record.name} was not ready within {self.sup.spec.ready_timeout_s:g} s "
                    f"(log: {self.run.log_path(child.record.name)})"
                )
            time.sleep(TICK_S)

    def _model_ready(self, url: str, model: str) -> bool:
        try:
            r = httpx.get(f"{url}/v2/models/{model}/ready", headers=self.headers, timeout=5, trust_env=False)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def _repository_call(self, url: str, model: str, verb: str) -> None:
        try:
            r = httpx.post(
                f"{url}/v2/repository/models/{model}/{verb}",
                headers=self.headers,
                timeout=self.sup.spec.ready_timeout_s,
                trust_env=False,
            )
        except httpx.HTTPError as exc:
            raise ChangeFailed(f"{verb} of {model} at {url} failed: {exc}") from exc
        if r.status_code != 200:
            raise ChangeFailed(f"{verb} of {model} at {url} answered {r.status_code}: {r.text[:300]}")
        if verb == "load" and not self._model_ready(url, model):
            raise ChangeFailed(f"{model} at {url} is not ready after its load")

    def _unsupervise(self, name: str) -> _Child:
        """Take a server out of supervision before it is stopped (a stop is not a crash to restart); a
        server that restarts keeps its place and record."""
        child = self._child(name)
        child.record.status = "stopped"
        if not self.restarting:
            self.sup.servers.remove(child)
            self.sup.state.servers.remove(child.record)
        self.sup._save()
        return child

    def _stop(self, child: _Child) -> None:
        """SIGTERM (the server drains), SIGKILL after the stop timeout."""
        if child.proc is not None and child.proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                P.terminate([psutil.Process(child.proc.pid)], self.sup.spec.stop_timeout_s)
            child.proc.wait()
            child.record.last_exit = child.proc.returncode
        child.record.pid = child.record.create_time = None

    def _write_route(self, holdings: Holdings) -> str:
        """Write the router's plan and endpoints files for `holdings`, tell the router; the digest it
        will report once it routes by them."""
        plan = plan_for(holdings, self.plans)
        held = {s.name for s in plan.servers()}
        urls = {c.record.name: c.record.url for c in self.sup.servers if c.record.name in held}
        plan_text = (plan.model_dump_json(indent=2, exclude_none=True) + "\n").encode()
        endpoints_text = endpoints_json(
            ServerEndpoints(servers={k: v for k, v in urls.items() if v})
        ).encode()
        write_atomic(self.run.endpoints_file, endpoints_text.decode())
        write_atomic(self.run.plan_file, plan_text.decode())
        router = self.sup.router.proc
        if router is not None and router.poll() is None:
            router.send_signal(signal.SIGHUP)
        # A router restarting meanwhile reads the files when it starts: the digest matches as well.
        return placement_digest(plan_text, endpoints_text)

    def _await_router(self, digest: str) -> None:
        deadline = time.monotonic() + self.sup.spec.ready_timeout_s
        url = self.sup.router.record.url
        while True:
            try:
                r = httpx.get(f"{url}/v2/health/ready", timeout=2, trust_env=False)
                if r.status_code == 200 and r.json().get("placement") == digest:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ChangeFailed(
                    f"the router did not apply the new placement within {self.sup.spec.ready_timeout_s:g} s "
                    f"(log: {self.run.log_path('router')})"
                )
            time.sleep(TICK_S)

    def _route_now(self, holdings: Holdings, why: str) -> None:
        """Rewrite the router's files for `holdings` when their text changes, and wait until it applied."""
        before = (self.run.plan_file.read_bytes(), self.run.endpoints_file.read_bytes())
        digest = self._write_route(holdings)
        if placement_digest(*before) != digest:
            log.info("router files rewritten for %s", why)
            self._await_router(digest)

    def _save_report(self) -> None:
        write_atomic(report_file(self.run), self.report.model_dump_json(indent=1) + "\n")


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
