"""The JSON result of a run (one worker, or the aggregate of many) and its exact aggregation.

Every latency figure is recomputed from the encoded HDR histograms; merging adds histogram counts (never
averages percentiles), sums counters, and aligns time series on each worker's wall-clock start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from inferpack.errors import ConfigError
from inferpack.jsonfile import StrictModel
from inferpack.loadtest import histograms as H

RESULT_FORMAT_VERSION: Literal[1] = 1


class ModelStats(StrictModel):
    """Per-model counters. Exact to merge; per-model histograms would cost ~190 KB each at 10,000 models."""

    count: int = 0
    errors: int = 0
    cold: int = 0
    total_us: int = 0
    max_us: int = 0

    @property
    def mean_ms(self) -> float:
        """Mean latency of successful requests."""
        ok = self.count - self.errors
        return self.total_us / ok / 1000.0 if ok > 0 else 0.0

    def add(self, other: ModelStats) -> None:
        """Merge another worker's counters in place."""
        self.count += other.count
        self.errors += other.errors
        self.cold += other.cold
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)


class Interval(StrictModel):
    """Requests completed in [t_s, t_s + interval) after measurement start, with their latencies."""

    t_s: float
    count: int
    errors: int
    hist: str = Field(description="Encoded HDR histogram of successful latencies (µs, 2 figures).")


class Histograms(StrictModel):
    """Encoded HDR histograms (µs). `latency` is from the intended send time (what users feel); `service`
    from the actual send (what the server took once asked); `send_lag` is how late a request was sent
    (waiting for a free connection included); `schedule_lag` is how late the generator's own scheduler woke
    up (its health: large values mean the generator, not the server, was the bottleneck)."""

    latency: str
    service: str
    send_lag: str
    schedule_lag: str
    cold: str
    warm: str
    errors: str


class WorkerInfo(StrictModel):
    """Where and how one worker ran, and what it cost the machine it ran on."""

    index: int
    hostname: str
    pid: int
    start_unix: float = Field(description="Wall-clock time of measurement start (aligns series only).")
    measured_s: float = Field(description="Measured window length (monotonic clock).")
    wall_s: float = Field(description="Whole run, warm-up included (monotonic clock).")
    cpu_s: float = Field(description="CPU seconds of the generator's event-loop thread over the whole run.")
    requests: int
    warmup_requests: int


class RunMetadata(StrictModel):
    """What was run against what, with which versions, on which machine."""

    mode: Literal["seq", "rnd", "bmk"]
    api: Literal["seed", "v2"]
    target: str
    load_shape: dict[str, Any]
    load_description: str
    traffic: dict[str, Any]
    models: int
    warmup_s: float
    duration_s: float | None
    requests: int | None
    timeout_s: float
    started_at: str
    versions: dict[str, str]
    machine: dict[str, Any]


class BenchResult(StrictModel):
    """One run's result file."""

    format_version: Literal[1] = RESULT_FORMAT_VERSION
    metadata: RunMetadata
    workers: list[WorkerInfo]
    interval_s: float
    histograms: Histograms
    errors: dict[str, int] = Field(default_factory=dict)
    models: dict[str, ModelStats] = Field(default_factory=dict)
    series: list[Interval] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    summary: dict[str, Any] = Field(
        default_factory=dict, description="Derived figures for readers; recomputed on load, never trusted."
    )

    # --- derived figures -------------------------------------------------------------------------
    def window_s(self) -> float:
        """Measured wall window: from the earliest worker start to the latest worker end."""
        if not self.workers:
            return 0.0
        start = min(w.start_unix for w in self.workers)
        end = max(w.start_unix + w.measured_s for w in self.workers)
        return max(end - start, 1e-9)

    def total_requests(self) -> int:
        """Measured requests, successes and errors."""
        return sum(w.requests for w in self.workers)

    def error_count(self) -> int:
        """Measured requests that failed (any status or kind)."""
        return sum(self.errors.values())

    def throughput(self) -> float:
        """Measured requests completed per second, all workers together."""
        return self.total_requests() / self.window_s()

    def latency(self) -> H.LatencySummary:
        """Latency percentiles of successful requests (from the intended send time)."""
        return H.summarize(H.decode(self.histograms.latency))

    def compute_summary(self) -> dict[str, Any]:
        """Headline figures, all derived from the histograms and counters."""
        cold = H.decode(self.histograms.cold).get_total_count()
        warm = H.decode(self.histograms.warm).get_total_count()
        total = self.total_requests()
        return {
            "requests": total,
            "errors": self.error_count(),
            "error_rate": self.error_count() / total if total else 0.0,
            "throughput_rps": self.throughput(),
            "window_s": self.window_s(),
            "latency_ms": self.latency().as_dict(),
            "service_ms": H.summarize(H.decode(self.histograms.service)).as_dict(),
            "send_lag_ms": H.summarize(H.decode(self.histograms.send_lag)).as_dict(),
            "schedule_lag_ms": H.summarize(H.decode(self.histograms.schedule_lag)).as_dict(),
            "cold": int(cold),
            "warm": int(warm),
            "workers": len(self.workers),
            "generator_cpu_share": [round(w.cpu_s / w.wall_s, 3) if w.wall_s else 0.0 for w in self.workers],
        }

    def slowest_models(self, top: int = 10, min_count: int = 1) -> list[tuple[str, ModelStats]]:
        """Models by mean successful latency, slowest first."""
        items = [(m, s) for m, s in self.models.items() if s.count - s.errors >= min_count]
        items.sort(key=lambda kv: kv[1].mean_ms, reverse=True)
        return items[:top]


def save_result(result: BenchResult, path: Path) -> None:
    """Write a result file (summary refreshed first)."""
    result.summary = result.compute_summary()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.model_dump_json(indent=1) + "\n")


def load_result(path: Path) -> BenchResult:
    """Read a result file, or a worker's log whose last JSON line is a result (a Kubernetes Job worker
    prints its result to stdout). The summary is recomputed from the histograms."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read result file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
        for line in reversed(text.splitlines()):
            if line.startswith("{") and '"histograms"' in line:
                try:
                    data = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
        if data is None:
            raise ConfigError(f"{path} holds no inferpack bench result") from None
    try:
        result = BenchResult.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not an inferpack bench result: {exc}") from exc
    result.summary = result.compute_summary()
    return result


def _merge_series(results: list[BenchResult], interval_s: float) -> list[Interval]:
    """Align every worker's intervals on the earliest start (wall clock) and merge them exactly."""
    origin = min(w.start_unix for r in results for w in r.workers)
    slots: dict[int, list[Interval]] = {}
    for r in results:
        shift = min(w.start_unix for w in r.workers) - origin
        for iv in r.series:
            slot = round((iv.t_s + shift) / interval_s)
            slots.setdefault(slot, []).append(iv)
    merged: list[Interval] = []
    for slot in sorted(slots):
        items = slots[slot]
        merged.append(
            Interval(
                t_s=slot * interval_s,
                count=sum(i.count for i in items),
                errors=sum(i.errors for i in items),
                hist=H.merge_encoded((i.hist for i in items), H.INTERVAL_SIG_FIGS),
            )
        )
    return merged


def aggregate(results: list[BenchResult]) -> BenchResult:
    """Merge worker (or partial aggregate) results into one, exactly: histograms by adding counts."""
    if not results:
        raise ConfigError("nothing to aggregate")
    intervals = {r.interval_s for r in results}
    if len(intervals) != 1:
        raise ConfigError(f"results use different series intervals {sorted(intervals)}")
    interval_s = intervals.pop()
    fields = Histograms.model_fields
    hists = Histograms(**{f: H.merge_encoded(getattr(r.histograms, f) for r in results) for f in fields})
    errors: dict[str, int] = {}
    models: dict[str, ModelStats] = {}
    for r in results:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
        for m, s in r.models.items():
            models.setdefault(m, ModelStats()).add(s)
    workers = sorted((w for r in results for w in r.workers), key=lambda w: (w.hostname, w.index))
    first = results[0].metadata
    meta = first.model_copy(update={"models": max(r.metadata.models for r in results)})
    warnings = list(dict.fromkeys(w for r in results for w in r.warnings))
    runs = {
        (r.metadata.mode, r.metadata.api, r.metadata.target, r.metadata.load_description) for r in results
    }
    if len(runs) > 1:
        # Merging is still exact, but the figures then describe no single run.
        warnings.append(
            f"aggregated results of {len(runs)} different runs (mode, API, target or load differ)"
        )
    merged = BenchResult(
        metadata=meta,
        workers=workers,
        interval_s=interval_s,
        histograms=hists,
        errors=dict(sorted(errors.items())),
        models=models,
        series=_merge_series(results, interval_s),
        warnings=warnings,
    )
    merged.summary = merged.compute_summary()
    return merged
