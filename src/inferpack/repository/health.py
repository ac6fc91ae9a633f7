"""Whether a model repository is healthy or degraded, and the background retry that brings it back.

A repository is *degraded* when its source cannot be listed (an S3 endpoint that refuses connections or
answers errors, a folder that became unreadable) while the server keeps serving from what it knows: the
last listing, and for S3 the versions in the local cache. The server reports it (repository index,
readiness body, the `inferpack_repository_degraded` metric, one log line per change) and `RecoveryLoop`
probes the source again with capped exponential backoff until a listing succeeds (and, for S3, refreshes a
stale listing), so that a request never waits on the source.

`RepositoryHealth` is plain state (a lock: the repository marks it from load threads); `Backoff` is pure;
`RecoveryLoop` takes its probe and its sleeper, so tests drive it without clocks or sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("inferpack.repository")


@dataclass(frozen=True)
class HealthView:
    """A consistent snapshot of a repository's health."""

    degraded: bool
    reason: str
    failures: int  # consecutive failed listings


class RepositoryHealth:
    """Degraded or not, why, and how many listings in a row failed. Thread-safe."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._degraded = False
        self._reason = ""
        self._failures = 0

    def view(self) -> HealthView:
        """The current state."""
        with self._lock:
            return HealthView(self._degraded, self._reason, self._failures)

    @property
    def degraded(self) -> bool:
        """True while the source cannot be listed."""
        return self.view().degraded

    def failed(self, reason: str) -> None:
        """A listing failed: degraded (logged once, when it starts)."""
        with self._lock:
            started = not self._degraded
            self._degraded, self._reason = True, reason
            self._failures += 1
        if started:
            log.warning(
                "repository %s degraded, serving what is known (last listing, local cache): %s",
                self.source,
                reason,
            )

    def recovered(self) -> None:
        """A listing succeeded: healthy again (logged once, when it ends)."""
        with self._lock:
            ended = self._degraded
            self._degraded, self._reason, self._failures = False, "", 0
        if ended:
            log.warning("repository %s recovered: listing refreshed", self.source)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: `initial_s`, doubling per consecutive failure, at most `max_s`."""

    initial_s: float = 1.0
    max_s: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next attempt after `failures` failed ones in a row."""
        if failures <= 1:
            return self.initial_s
        return float(min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 62)))


class RecoveryLoop:
    """Lists the repository's source off the request path. While degraded: again after each backoff
    delay; while healthy: when `due` says the listing is stale (S3's listing TTL), else it only checks every
    `backoff.initial_s` (no I/O). The probe refreshes the listing and sets the health itself; after a
    successful one `on_listed` runs (the registry re-reads the model list)."""

    def __init__(
        self,
        health: RepositoryHealth,
        probe: Callable[[], Awaitable[bool]],
        backoff: Backoff,
        *,
        due: Callable[[], bool] = lambda: False,
        on_listed: Callable[[], object] = lambda: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.health = health
        self.probe = probe
        self.backoff = backoff
        self.due = due
        self.on_listed = on_listed
        self.sleep = sleep

    async def step(self) -> bool | None:
        """One round: wait, then probe when degraded or due. The probe's outcome, or None without one."""
        state = self.health.view()
        if state.degraded:
            await self.sleep(self.backoff.delay(state.failures))
        elif not self.due():
            await self.sleep(self.backoff.initial_s)
            return None
        try:
            ok = await self.probe()
        except Exception as exc:  # a probe that crashes counts as a failed one; the loop must not die
            log.exception("repository probe of %s failed", self.health.source)
            self.health.failed(f"probe failed: {type(exc).__name__}: {exc}")
            ok = False
        if ok:
            self.on_listed()
        return ok

    async def run(self) -> None:
        """Step forever (cancel the task to stop)."""
        while True:
            await self.step()
