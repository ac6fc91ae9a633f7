"""Hung and failing servers, seen from the router: per-request deadlines from observed latency, and outlier
ejection. Pure logic: no I/O; the ejection clock is injected, so tests need no sleeps.

- `Deadlines`: how long a forwarded call may take before the router gives up on that copy and retries on
  another. `clamp(factor x P99 of the model's recent successful latencies, floor, ceiling)`; a model with
  too few samples of its own borrows the P99 of every model's samples, and with too few of those the
  ceiling (the configured upstream timeout) applies. A hung server then costs a request one deadline, not
  the 60 s ceiling.
- `OutlierDetector`: a server whose calls fail `failures` times in a row (deadline missed, connection
  refused or broken) is ejected for a period that doubles on each repeat (capped). When the period is over
  the server is half-open: readiness probes decide, and the first one answered brings it back (a server
  being restarted answers as soon as it is ready; the period does not grow while it is not). Failing its
  calls again soon after is a repeat; a server that stayed in for `max_s` starts again from the first
  period.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

REFRESH_EVERY = 16  # samples between P99 recomputations of one window (sorting on every call costs CPU)


class _Window:
    """The last `size` latencies (seconds) in a ring, with a cached P99."""

    __slots__ = ("_fresh", "_next", "_p99", "size", "values")

    def __init__(self, size: int) -> None:
        self.size = size
        self.values = array("d")  # 8 bytes a sample: thousands of models stay cheap
        self._next = 0
        self._p99: float | None = None
        self._fresh = 0

    def add(self, value: float) -> None:
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            self.values[self._next] = value
            self._next = (self._next + 1) % self.size
        self._fresh += 1

    def __len__(self) -> int:
        return len(self.values)

    def p99(self) -> float:
        """Nearest-rank 99th percentile of the window (recomputed every REFRESH_EVERY samples)."""
        if self._p99 is None or self._fresh >= REFRESH_EVERY:
            ordered = sorted(self.values)
            self._p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
            self._fresh = 0
        return self._p99


class Deadlines:
    """Per-model deadline of one upstream call, from the model's recent successful latencies."""

    def __init__(
        self, *, floor_s: float, factor: float, ceiling_s: float, min_samples: int, window: int
    ) -> None:
        if floor_s > ceiling_s:
            raise ValueError(f"deadline floor {floor_s:g} s is above the ceiling {ceiling_s:g} s")
        self.floor_s = floor_s
        self.factor = factor
        self.ceiling_s = ceiling_s
        self.min_samples = min_samples
        self.window = window
        self._models: dict[str, _Window] = {}
        self._all = _Window(window)

    def observe(self, model: str, seconds: float) -> None:
        """A successful call for `model` took `seconds`."""
        w = self._models.get(model)
        if w is None:
            w = self._models[model] = _Window(self.window)
        w.add(seconds)
        self._all.add(seconds)

    def deadline(self, model: str) -> float:
        """Seconds the next call for `model` may take."""
        w = self._models.get(model)
        if w is not None and len(w) >= self.min_samples:
            p99 = w.p99()
        elif len(self._all) >= self.min_samples:
            p99 = self._all.p99()
        else:
            return self.ceiling_s
        return min(self.ceiling_s, max(self.floor_s, self.factor * p99))


Event = Literal["readmitted"]


@dataclass
class _Track:
    consecutive: int = 0
    ejected_until: float | None = None  # None: in service
    ejections: int = 0  # in a row: sets the next period
    back_since: float | None = None  # when it last came back (the repeat count resets after max_s)


class OutlierDetector:
    """Consecutive failures per server, ejection periods that grow on repeat, half-open return by probe."""

    def __init__(
        self,
        servers: list[str],
        *,
        failures: int,
        base_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or base_s <= 0 or max_s < base_s:
            raise ValueError("ejection needs failures >= 1 and 0 < base_s <= max_s")
        self.failures = failures
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self._tracks: dict[str, _Track] = {s: _Track() for s in servers}

    def _track(self, server: str) -> _Track:
        # servers may join with a new placement (the router reloads it): they start in service
        track = self._tracks.get(server)
        if track is None:
            track = self._tracks[server] = _Track()
        return track

    def period_s(self, ejections: int) -> float:
        """Length of the `ejections`-th ejection in a row (1: the first)."""
        return min(self.max_s, self.base_s * 2.0 ** (ejections - 1))

    def ejected(self, server: str) -> bool:
        """True while `server` is out of service (its period running, or over but not yet probed)."""
        return self._track(server).ejected_until is not None

    def half_open(self, server: str) -> bool:
        """`server` is ejected and its period is over: a probe may bring it back."""
        until = self._track(server).ejected_until
        return until is not None and self.clock() >= until

    def success(self, server: str) -> None:
        """A call to `server` got an HTTP answer (any status: the server is responsive)."""
        track = self._track(server)
        if track.ejected_until is None:
            track.consecutive = 0

    def failure(self, server: str) -> float | None:
        """A call to `server` failed; returns the ejection period when this failure ejects it. Failures of
        calls that were in flight when it was ejected do not count again."""
        track = self._track(server)
        if track.ejected_until is not None:
            return None
        track.consecutive += 1
        if track.consecutive < self.failures:
            return None
        return self._eject(track)

    def probe(self, server: str, ok: bool) -> Event | None:
        """The result of a readiness probe: "readmitted" when `server` is half-open and answered; ignored
        at any other time (a failed half-open probe leaves it half-open, to be probed again)."""
        track = self._track(server)
        if not ok or not self.half_open(server):
            return None
        track.ejected_until, track.consecutive, track.back_since = None, 0, self.clock()
        return "readmitted"

    def _eject(self, track: _Track) -> float:
        now = self.clock()
        if track.back_since is not None and now - track.back_since >= self.max_s:
            track.ejections = 0  # it behaved for a long while: this is a new incident
        track.ejections += 1
        period = self.period_s(track.ejections)
        track.ejected_until, track.consecutive = now + period, 0
        return period
