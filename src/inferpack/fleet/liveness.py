"""The supervisor's liveness probes: a process that is alive but hung (deadlocked, stuck, SIGSTOPped) never
exits, so only a probe that goes unanswered tells. Pure counting (`LivenessTracker`, clock injected) apart
from the probe itself, which runs on a small thread pool so that a hung process's timeouts never hold up
the supervisor's loop (it must keep noticing deaths of the others at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx


class LivenessTracker:
    """Consecutive failed probes of one process, and when the next probe is due."""

    def __init__(
        self, *, interval_s: float, failures: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.failures = failures
        self.clock = clock
        self.consecutive = 0
        self._next_at = 0.0
        self._in_flight = False

    def reset(self) -> None:
        """The process (re)started: no failures, first probe one interval from now."""
        self.consecutive = 0
        self._in_flight = False
        self._next_at = self.clock() + self.interval_s

    def due(self) -> bool:
        """Time to send the next probe (none in flight and the interval since the last one's end passed)."""
        return not self._in_flight and self.clock() >= self._next_at

    def sent(self) -> None:
        """A probe is in flight."""
        self._in_flight = True

    def result(self, ok: bool) -> bool:
        """Record a probe's outcome; True when this failure is the `failures`-th in a row (kill it)."""
        self._in_flight = False
        self._next_at = self.clock() + self.interval_s
        self.consecutive = 0 if ok else self.consecutive + 1
        return self.consecutive >= self.failures


def probe_live(client: httpx.Client, url: str, timeout_s: float) -> bool:
    """True when `url`/v2/health/live answers 200 within `timeout_s`."""
    try:
        return client.get(f"{url}/v2/health/live", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


class LivenessProber:
    """Runs `probe_live` calls off the supervisor's thread, over one pooled client (a client per probe
    would build a TLS context every time: CPU and memory the supervisor should not spend every second)."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="liveness")
        self._client = httpx.Client(trust_env=False)

    def submit(self, url: str) -> Future[bool]:
        """Start probing `url`; the future holds whether it answered."""
        return self._pool.submit(probe_live, self._client, url, self.timeout_s)

    def close(self) -> None:
        """Stop probing: pending probes are dropped, those in flight end within their timeout."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()
