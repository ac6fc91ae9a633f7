"""Closed-loop load through a fleet's router for the end-to-end fleet tests, and their two-server plans."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import httpx

from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan
from tests.fleet.test_fleet_e2e import QUESTION, _wait


def two_servers(repo: Path, zero: list[str], one: list[str], memory_mb: int = 1000) -> Plan:
    """A plan of one group with server-0 holding `zero` and server-1 holding `one`."""
    return Plan(
        created_by="test",
        repository=str(repo),
        groups=[
            ServerGroup(
                name="local",
                resources=Resources(cpu=1, memory_mb=memory_mb),
                servers=[ServerPlan(name="server-0", models=zero), ServerPlan(name="server-1", models=one)],
            )
        ],
    )


class Failure(NamedTuple):
    """A request that did not get a 200: when it was sent (monotonic), for which model, its status or
    exception, the `inferpack-error-kind` header (a router's refusal and a server's shed read apart) and
    the body's start: the evidence a failed run needs."""

    at: float
    model: str
    outcome: str
    kind: str
    body: str


class RouterLoad:
    """`users` closed-loop users sending seed requests for `models` in turn through the router; every
    outcome is counted and every failure kept. A context manager: the users run inside the block."""

    def __init__(self, router: str, models: list[str], users: int = 2, timeout_s: float = 30.0) -> None:
        self.router, self.models, self.timeout_s = router, models, timeout_s
        self.outcomes: Counter[str] = Counter()
        self.failures: list[Failure] = []
        self.slowest_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(users)]

    def _user(self, index: int) -> None:
        with httpx.Client(base_url=self.router, timeout=self.timeout_s, trust_env=False) as client:
            i = index
            while not self._stop.is_set():
                model = self.models[i % len(self.models)]
                i += 1
                started = time.monotonic()
                failure = None
                try:
                    resp = client.get(f"/predictions/{model}", params=QUESTION)
                    outcome = str(resp.status_code)
                    if resp.status_code != 200:
                        kind = resp.headers.get("inferpack-error-kind", "")
                        failure = Failure(started, model, outcome, kind, resp.text[:300])
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                    failure = Failure(started, model, outcome, "", str(exc)[:300])
                with self._lock:
                    self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                    self.outcomes[outcome] += 1
                    if failure is not None:
                        self.failures.append(failure)

    def counted(self) -> tuple[int, int]:
        """(failed, total) requests so far."""
        with self._lock:
            return len(self.failures), sum(self.outcomes.values())

    def __enter__(self) -> RouterLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


def run_under_load(
    router: str,
    models: list[str],
    command: Callable[[], subprocess.CompletedProcess[str]],
    what: str,
    wait_s: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `command` (an `inferpack` CLI call) while requests flow through the router, from before it
    starts until some after it returned: it succeeds and no request fails (the counts are printed)."""
    with RouterLoad(router, models) as load:
        _wait(lambda: load.counted()[1] >= 4, wait_s, "requests through the router")
        done = command()
        flowing = load.counted()[1]
        _wait(lambda: load.counted()[1] >= flowing + 4, wait_s, f"requests after the {what}")
    failed, total = load.counted()
    print(f"\n{what} under load: {failed} failed / {total} requests through the router")
    assert done.returncode == 0, done.stdout + done.stderr
    assert failed == 0, load.failures[:5]
    return done
