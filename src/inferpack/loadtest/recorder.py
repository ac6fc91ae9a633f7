"""Records the outcome of every request of one worker into HDR histograms and counters.

All times are `time.perf_counter()` seconds. A request belongs to the warm-up (and is not recorded) when
its intended send time is before measurement start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hdrh.histogram import HdrHistogram

from inferpack.loadtest import histograms as H
from inferpack.loadtest.result import Histograms, Interval, ModelStats


@dataclass(frozen=True)
class Snapshot:
    """Progress since the previous snapshot, for the live display (mergeable across workers)."""

    elapsed_s: float
    done: int
    errors: int
    new_done: int
    new_errors: int
    period_s: float
    recent_hist: str


class _ModelCounters:
    __slots__ = ("cold", "count", "errors", "max_us", "total_us")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.cold = 0
        self.total_us = 0
        self.max_us = 0


class Recorder:
    """One worker's measurements."""

    def __init__(self, models: list[str], measure_start: float, interval_s: float) -> None:
        self.models = models
        self.measure_start = measure_start
        self.interval_s = interval_s
        self.latency = H.new_histogram()
        self.service = H.new_histogram()
        self.send_lag = H.new_histogram()
        self.schedule_lag = H.new_histogram()
        self.cold = H.new_histogram()
        self.warm = H.new_histogram()
        self.failed = H.new_histogram()
        self.errors: dict[str, int] = {}
        self.per_model: dict[int, _ModelCounters] = {}
        self._series: dict[int, tuple[list[int], HdrHistogram]] = {}
        self._sealed: dict[int, Interval] = {}
        self.done = 0
        self.error_count = 0
        self.warmup_requests = 0
        self.early_sends = 0  # sent before the intended time (timer rounding), measured from the send
        self.last_done = measure_start
        self._recent = H.new_histogram(H.INTERVAL_SIG_FIGS)
        self._snap_done = 0
        self._snap_errors = 0
        self._snap_time = measure_start

    def record_schedule_lag(self, intended: float, woke: float) -> None:
        """How late the open-loop scheduler woke for a measured request (generator health)."""
        if intended >= self.measure_start:
            H.record_us(self.schedule_lag, (woke - intended) * 1e6)

    def record(
        self,
        model_index: int,
        intended: float,
        sent: float,
        done: float,
        error: str | None,
        load: Literal["cold", "warm"] | None,
    ) -> None:
        """Record one finished request (success when `error` is None)."""
        if intended < self.measure_start:
            self.warmup_requests += 1
            return
        if sent < intended:
            # Sent early (timer rounding): measure from the send, the moment the user's wait began.
            self.early_sends += 1
            intended = sent
        latency_us = (done - intended) * 1e6
        self.done += 1
        self.last_done = max(self.last_done, done)
        H.record_us(self.send_lag, (sent - intended) * 1e6)
        slot = int((done - self.measure_start) / self.interval_s)
        entry = self._series.get(slot)
        if entry is None:
            entry = ([0, 0], H.new_histogram(H.INTERVAL_SIG_FIGS))
            self._series[slot] = entry
            self._seal_before(slot - 2)
        entry[0][0] += 1
        counters = self.per_model.get(model_index)
        if counters is None:
            counters = self.per_model[model_index] = _ModelCounters()
        counters.count += 1
        if error is not None:
            self.error_count += 1
            self.errors[error] = self.errors.get(error, 0) + 1
            entry[0][1] += 1
            counters.errors += 1
            H.record_us(self.failed, latency_us)
            return
        H.record_us(self.latency, latency_us)
        H.record_us(self.service, (done - sent) * 1e6)
        H.record_us(entry[1], latency_us)
        H.record_us(self._recent, latency_us)
        counters.total_us += int(latency_us)
        counters.max_us = max(counters.max_us, int(latency_us))
        if load == "cold":
            counters.cold += 1
            H.record_us(self.cold, latency_us)
        elif load == "warm":
            H.record_us(self.warm, latency_us)

    def _seal_before(self, slot: int) -> None:
        """Encode intervals older than `slot`: an open 2-figure histogram holds ~26 KB of counters, its
        encoding ~100 bytes, so an hour of 1 s intervals stays small. Completion times are read from one
        monotonic clock on one thread, so no completion ever lands in a slot older than the last one."""
        for old in [k for k in self._series if k < slot]:
            counts, hist = self._series.pop(old)
            self._sealed[old] = Interval(
                t_s=old * self.interval_s, count=counts[0], errors=counts[1], hist=H.encode(hist)
            )

    def snapshot(self, now: float) -> Snapshot:
        """Progress since the previous call; resets the recent-latency histogram."""
        snap = Snapshot(
            elapsed_s=now - self.measure_start,
            done=self.done,
            errors=self.error_count,
            new_done=self.done - self._snap_done,
            new_errors=self.error_count - self._snap_errors,
            period_s=max(now - self._snap_time, 1e-9),
            recent_hist=H.encode(self._recent),
        )
        self._snap_done, self._snap_errors, self._snap_time = self.done, self.error_count, now
        self._recent = H.new_histogram(H.INTERVAL_SIG_FIGS)
        return snap

    def histograms(self) -> Histograms:
        """All histograms, encoded."""
        return Histograms(
            latency=H.encode(self.latency),
            service=H.encode(self.service),
            send_lag=H.encode(self.send_lag),
            schedule_lag=H.encode(self.schedule_lag),
            cold=H.encode(self.cold),
            warm=H.encode(self.warm),
            errors=H.encode(self.failed),
        )

    def series(self) -> list[Interval]:
        """The per-interval time series, in time order."""
        items = dict(self._sealed)
        for slot, (c, h) in self._series.items():
            items[slot] = Interval(t_s=slot * self.interval_s, count=c[0], errors=c[1], hist=H.encode(h))
        return [items[k] for k in sorted(items)]

    def model_stats(self) -> dict[str, ModelStats]:
        """Per-model counters keyed by model id (only models that were asked)."""
        return {
            self.models[i]: ModelStats(
                count=c.count, errors=c.errors, cold=c.cold, total_us=c.total_us, max_us=c.max_us
            )
            for i, c in sorted(self.per_model.items())
        }
