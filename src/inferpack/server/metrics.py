"""Prometheus metrics for one server, in a registry of its own (no global state for tests to reset).

Per-model labels are bounded: the first `top_k` models that serve traffic get their own label for the life
of the process and every other model is counted as "other". Labels never move, so every series stays
monotonic (a moving top-K would make counters jump backwards), and the series count stays <= top_k + 1
however many thousands of models a server holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferpack.runtime.registry import RegistryStats

OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


class LabelLimiter:
    """Maps model ids to at most `top_k` distinct labels plus "other"."""

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, model_id: str) -> str:
        if model_id in self._admitted:
            return model_id
        with self._lock:
            if len(self._admitted) < self.top_k:
                self._admitted.add(model_id)
                return model_id
        return OTHER


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self, top_k: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.label = LabelLimiter(top_k)
        r = self.registry
        self.requests = Counter(
            "inferpack_requests",
            "Inference requests by model, API and status code.",
            ["model", "api", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "inferpack_request_duration_seconds",
            "Server-side inference request latency (queue + batch + compute).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "inferpack_queue_wait_seconds",
            "Time the oldest request of a batch waited.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "inferpack_batch_compute_seconds",
            "Tokenise + forward + decode time per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inferpack_batch_size",
            "Items of one model per executed batch (a batch mixing tenants counts once per model).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "inferpack_batch_rows",
            "Rows per forward an inference thread ran, every model of a mixed batch together.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_models = Histogram(
            "inferpack_batch_models",
            "Models per forward (above 1: cross-tenant batches through shared layers).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.loads = Counter("inferpack_model_loads", "Model loads by outcome.", ["outcome"], registry=r)
        self.load_time = Histogram(
            "inferpack_model_load_seconds",
            "Model load time (read, build, warm up).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.shed = Counter(
            "inferpack_requests_shed",
            "Requests refused without running, by reason: queue_full, deadline (expected wait + service "
            "past the deadline, at arrival), expired (dropped in the queue), memory_budget.",
            ["reason"],
            registry=r,
        )
        self.dropped_disconnected = Counter(
            "inferpack_requests_dropped_disconnected",
            "Queued requests dropped before they ran because their client disconnected.",
            registry=r,
        )
        self.queue_depth = Gauge("inferpack_queue_depth", "Requests queued over all models.", registry=r)
        self.models_loaded = Gauge("inferpack_models_loaded", "Models loaded and ready.", registry=r)
        self.models_known = Gauge("inferpack_models_known", "Models in the repository.", registry=r)
        self.repository_degraded = Gauge(
            "inferpack_repository_degraded",
            "1 while the model repository cannot be listed (S3 failing, folder unreadable) and the server "
            "serves its last listing and local cache; 0 when healthy.",
            registry=r,
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc.: RSS next to the model ledger
        self._early_shed: dict[tuple[str, str, str], tuple[Counter, Counter]] = {}

    def bind(
        self, queue_depth: Callable[[], float], loaded: Callable[[], float], known: Callable[[], float]
    ) -> None:
        """Gauges read live values at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.models_loaded.set_function(loaded)
        self.models_known.set_function(known)

    def bind_repository(self, degraded: Callable[[], float]) -> None:
        """The repository's health, read at scrape time."""
        self.repository_degraded.set_function(degraded)

    def bind_registry(self, stats: RegistryStats, memory: Callable[[], int], budget: int | None) -> None:
        """Cache hits/misses, evictions and model memory, read from the registry at scrape time."""
        self.registry.register(_RegistryCollector(stats, memory, budget))

    def bind_runtimes(self, runs: Callable[[], dict[str, int]]) -> None:
        """Batches the loaded models of engine mixed ran on each runtime, read at scrape time."""
        self.registry.register(_RuntimeCollector(runs))

    def observe_request(self, model_id: str, api: str, code: int, seconds: float | None) -> None:
        """Count one inference request (and its latency when it was served)."""
        label = self.label(model_id)
        self.requests.labels(label, api, str(code)).inc()
        if seconds is not None:
            self.latency.labels(label).observe(seconds)

    def observe_batch(self, model_id: str, size: int, waited: float, compute: float) -> None:
        """Record one executed batch (called by the batchers)."""
        self.batch_size.observe(size)
        self.queue_wait.observe(waited)
        self.compute.observe(compute)

    def observe_forward(self, rows: int, models: int) -> None:
        """Record one forward an inference thread ran: its rows and how many models they were for."""
        self.batch_rows.observe(rows)
        self.batch_models.observe(models)

    def observe_shed(self, reason: str) -> None:
        """Count one request refused without running."""
        self.shed.labels(reason).inc()

    def observe_early_shed(self, model_id: str, api: str, reason: str) -> None:
        """Count one request the early shed refused: `observe_shed(reason)` and `observe_request(model_id,
        api, 503, None)` in one, with the two labelled counters looked up once per (model, api, reason)
        rather than per request (`.labels()` takes a lock and builds the label tuple each time; under
        overload this runs hundreds of times a second). The cache holds at most loaded models x APIs x
        reasons entries, and labels never move (`LabelLimiter`), so a cached child stays right."""
        key = (model_id, api, reason)
        pair = self._early_shed.get(key)
        if pair is None:
            pair = self._early_shed[key] = (
                self.shed.labels(reason),
                self.requests.labels(self.label(model_id), api, "503"),
            )
        pair[0].inc()
        pair[1].inc()

    def observe_disconnected(self, model_id: str) -> None:
        """Count one queued request dropped because its client went away (called by the batchers)."""
        self.dropped_disconnected.inc()

    def observe_load(self, model_id: str, seconds: float, ok: bool) -> None:
        """Record one model load."""
        self.loads.labels("success" if ok else "failure").inc()
        if ok:
            self.load_time.observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class _RegistryCollector(Collector):
    """Exports the registry's counters without mirroring them into prometheus objects on the hot path."""

    def __init__(self, stats: RegistryStats, memory: Callable[[], int], budget: int | None) -> None:
        self.stats = stats
        self.memory = memory
        self.budget = budget

    def collect(self) -> Iterable[Metric]:
        hits = CounterMetricFamily("inferpack_model_cache_hits", "Requests that found their model loaded.")
        hits.add_metric([], self.stats.hits)
        misses = CounterMetricFamily("inferpack_model_cache_misses", "Requests that had to load their model.")
        misses.add_metric([], self.stats.misses)
        evictions = CounterMetricFamily(
            "inferpack_model_evictions", "Models unloaded by policy.", labels=["reason"]
        )
        for reason, count in sorted(self.stats.evictions.items()):
            evictions.add_metric([reason], count)
        memory = GaugeMetricFamily("inferpack_model_memory_bytes", "Tensor bytes held by loaded models.")
        memory.add_metric([], self.memory())
        swaps = CounterMetricFamily(
            "inferpack_runtime_swaps", "Cold models whose fast runtime took over from the eager stand-in."
        )
        swaps.add_metric([], self.stats.swaps)
        warm_loads = CounterMetricFamily(
            "inferpack_warm_start_loads", "Models loaded by the warm start from access statistics."
        )
        warm_loads.add_metric([], self.stats.warm_start_loads)
        pending = GaugeMetricFamily(
            "inferpack_warm_start_pending", "Models the warm start has yet to try (0 when done or off)."
        )
        pending.add_metric([], self.stats.warm_start_pending)
        trunks = CounterMetricFamily(
            "inferpack_base_trunks",
            "Bases' trunks (graphs of their shared layers, which all their tenants run on) made and dropped.",
            labels=["event"],
        )
        for event, count in sorted(self.stats.trunks.items()):
            trunks.add_metric([event], count)
        held = GaugeMetricFamily("inferpack_base_trunks_held", "Bases whose trunk is held now.")
        held.add_metric([], self.stats.trunks_held)
        upgrading = GaugeMetricFamily(
            "inferpack_upgrades_in_progress",
            "Background jobs queued or running on the upgrade lane: fast runtimes being prepared, hot "
            "models' traced graphs, bases' trunks (0 when the server has settled).",
        )
        upgrading.add_metric([], self.stats.upgrades_busy)
        yield from (hits, misses, evictions, memory, swaps, warm_loads, pending, trunks, held, upgrading)
        if self.budget is not None:
            budget = GaugeMetricFamily("inferpack_model_memory_budget_bytes", "The model memory budget.")
            budget.add_metric([], self.budget)
            yield budget


class _RuntimeCollector(Collector):
    """Engine mixed: which runtime its models' single-model batches ran on (runtime/runtimechoice.py)."""

    def __init__(self, runs: Callable[[], dict[str, int]]) -> None:
        self.runs = runs

    def collect(self) -> Iterable[Metric]:
        """One gauge, labelled by runtime (models unloaded since no longer count)."""
        family = GaugeMetricFamily(
            "inferpack_mixed_batches",
            "Batches the loaded models with two runtimes (engine mixed) ran on each, as measured faster.",
            labels=["runtime"],
        )
        for runtime, count in sorted(self.runs().items()):
            family.add_metric([runtime], count)
        yield family
