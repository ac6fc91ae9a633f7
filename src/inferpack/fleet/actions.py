"""The actions of a change, done to the supervisor's fleet: start, stop, load, unload, route.

`FleetActions.begin(action)` starts one action and returns a future that is done when the action is:
what touches the supervisor's processes (spawning, taking a server out of supervision, writing the
router's files) happens in the calling thread, the supervisor's own; the waiting (readiness, HTTP calls,
a draining server) in a small pool, so the supervisor keeps supervising meanwhile (`fleet.apply`).
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx

from inferpack import processes as P
from inferpack.endpoints import ServerEndpoints, endpoints_json
from inferpack.errors import FleetError
from inferpack.fleet.placementfiles import placement_digest
from inferpack.fleet.reconcile import Action, Holdings, LoadModel, Route, StartServer, StopServer, plan_for
from inferpack.fleet.supervisor import TICK_S, LaunchSpec, ServerLaunch, Supervisor, _Child
from inferpack.jsonfile import write_atomic
from inferpack.plan import Plan
from inferpack.settings import load_settings


def auth_headers(spec: LaunchSpec) -> dict[str, str]:
    """The bearer token the servers' repository API wants: the admin token, else an unscoped inference
    token written in plain (a scoped one could not load every model; a hashed one cannot be sent)."""
    from inferpack.server.auth import read_tokens

    auth = load_settings(Path(spec.config) if spec.config else None).server.auth
    unscoped = (e.plain for e in read_tokens(auth) if e.plain is not None and e.scope.unbounded)
    token = auth.admin_token or next(unscoped, None)
    return {"Authorization": f"Bearer {token}"} if token else {}


class FleetActions:
    """Does the actions of a change to one supervisor's fleet."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.run = supervisor.run
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="change")
        self._headers: dict[str, str] | None = None
        self.plans: list[Plan] = []  # the plans a route takes servers' groups from, first wins
        self.restarting = False  # a stopped server stays in supervision, to be started again

    @property
    def headers(self) -> dict[str, str]:
        """Auth for the servers' API, read at the first change (never at start-up: a config the
        supervisor cannot read must fail the servers' start with their own message, not the supervisor)."""
        if self._headers is None:
            self._headers = auth_headers(self.sup.spec)
        return self._headers

    def check_not_stopping(self) -> None:
        """FleetError when the fleet is being stopped: a change does not outlive `inferpack down`."""
        if self.sup.stop_requested.is_set():
            raise FleetError("the fleet is stopping (`inferpack down`)")

    def begin(self, action: Action) -> Future[None]:
        """Start one action: what touches the supervisor's processes here, the waiting in the pool."""
        self.check_not_stopping()
        if isinstance(action, StartServer):
            return self.pool.submit(self._await_started, self._start(action), action.models)
        if isinstance(action, StopServer):
            return self.pool.submit(self._stop, self._unsupervise(action.server))
        if isinstance(action, Route):
            return self.pool.submit(self._await_router, self._write_route(action.as_dict()))
        url = self._url(action.server)
        verb = "load" if isinstance(action, LoadModel) else "unload"
        return self.pool.submit(self._repository_call, url, action.model, verb)

    def _find(self, name: str) -> _Child | None:
        return next((c for c in self.sup.servers if c.record.name == name), None)

    def _child(self, name: str) -> _Child:
        child = self._find(name)
        if child is None:
            raise FleetError(f"no running server named {name}")
        return child

    def _url(self, name: str) -> str:
        url = self._child(name).record.url
        assert url is not None
        return url

    def _launch(self, name: str) -> ServerLaunch:
        for launch in self.sup.spec.servers:
            if launch.name == name:
                return launch
        raise FleetError(f"server {name} is not in the launch spec")

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
            self.check_not_stopping()
            if child.record.status in ("restarting", "failed"):
                raise FleetError(f"{child.record.name} exited during start-up ({child.record.message})")
            ok, failed = P.probe_readiness(url, self.sup.spec.supervisor_ready_probe_s)
            if failed:
                raise FleetError(P.failed_models_message(child.record.name, failed))
            if ok and all(self._model_ready(url, m) for m in models):
                return
            if time.monotonic() > deadline:
                raise FleetError(
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
            raise FleetError(f"{verb} of {model} at {url} failed: {exc}") from exc
        if r.status_code != 200:
            raise FleetError(f"{verb} of {model} at {url} answered {r.status_code}: {r.text[:300]}")
        if verb == "load" and not self._model_ready(url, model):
            raise FleetError(f"{model} at {url} is not ready after its load")

    def held_models(self, name: str) -> list[str] | None:
        """The models server `name` holds ready copies of, by its repository index; None when it is not
        ready or cannot be asked (the caller then goes by its records)."""
        child = self._find(name)
        if child is None or child.record.status != "ready" or child.record.url is None:
            return None
        try:
            r = httpx.post(
                f"{child.record.url}/v2/repository/index",
                json={"ready": True},
                headers=self.headers,
                timeout=5,
                trust_env=False,
            )
            entries = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(entries, list):
            return None
        return [str(e["name"]) for e in entries if isinstance(e, dict) and "name" in e]

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
            # through the runner: under podman/docker, signalling the `run` client alone leaves the container
            self.sup.runner.stop([(child.record.name, child.proc)], self.sup.spec.stop_timeout_s)
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
            self.check_not_stopping()
            try:
                r = httpx.get(f"{url}/v2/health/ready", timeout=2, trust_env=False)
                if r.status_code == 200 and r.json().get("placement") == digest:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise FleetError(
                    f"the router did not apply the new placement within {self.sup.spec.ready_timeout_s:g} s "
                    f"(log: {self.run.log_path('router')})"
                )
            time.sleep(TICK_S)

    def route_now(self, holdings: Holdings) -> None:
        """Rewrite the router's files for `holdings` when their text changes, and wait until it applied."""
        before = (self.run.plan_file.read_bytes(), self.run.endpoints_file.read_bytes())
        digest = self._write_route(holdings)
        if placement_digest(*before) != digest:
            self._await_router(digest)
