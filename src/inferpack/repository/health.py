"""Whether a model repository is healthy or degraded, and the background retry that brings it back.

A repository is *degraded* when its source cannot be listed (an S3 endpoint that refuses connections or
answers errors, a folder that became unreadable) while the server keeps serving from what it knows: the
last listing, and for S3 the versions in the local cache. The server reports it (repository index,
readiness body, the `inferpack_repository_degraded` metric, one log line per change) and `RecoveryLoop`
probes the source again with capped exponential backoff until a listing succeeds.

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
    """While the repository is degraded, probe its source again after each backoff delay; when a probe
    succeeds (the probe itself refreshes the listing and clears the health), call `on_recovered`.

    While healthy it only checks the flag every `backoff.initial_s` (no I/O)."""

    def __init__(
        self,
        health: RepositoryHealth,
        probe: Callable[[], Awaitable[bool]],
        backoff: Backoff,
        *,
        on_recovered: Callable[[], object] = lambda: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.health = health
        self.probe = probe
        self.backoff = backoff
        self.on_recovered = on_recovered
        self.sleep = sleep

    async def step(self) -> bool | None:
        """One round: wait, then probe when degraded. Returns the probe's outcome, None when healthy."""
        state = self.health.view()
        if not state.degraded:
            await self.sleep(self.backoff.initial_s)
            return None
        await self.sleep(self.backoff.delay(state.failures))
        try:
            ok = await self.probe()
        except Exception as exc:  # a probe that crashes counts as a failed one; the loop must not die
            log.exception("repository probe of %s failed", self.health.source)
            self.health.failed(f"probe failed: {type(exc).__name__}: {exc}")
            ok = False
        if ok:
            self.on_recovered()
        return ok

    async def run(self) -> None:
        """Step forever (cancel the task to stop)."""
        while True:
            await self.step()
