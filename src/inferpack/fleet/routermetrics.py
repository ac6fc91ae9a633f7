"""The router's own Prometheus metrics, in a registry of its own (one per router app)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0)


class RouterMetrics:
    """Requests answered, forwarded, retried and failed; latency; outstanding and health per server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "inferpack_router_requests",
            "Requests answered by the router, by status code.",
            ["code"],
            registry=r,
        )
        self.forwarded = Counter(
            "inferpack_router_forwarded", "Requests forwarded, by server.", ["server"], registry=r
        )
        self.retries = Counter(
            "inferpack_router_retries", "Requests retried on another copy after a failure.", registry=r
        )
        self.deadline_retries = Counter(
            "inferpack_router_deadline_retries",
            "Requests retried on another copy because a copy missed its deadline.",
            registry=r,
        )
        self.ejections = Counter(
            "inferpack_router_ejections",
            "Servers ejected after consecutive failed calls (deadline missed, connection failed).",
            ["server"],
            registry=r,
        )
        self.ejected = Gauge(
            "inferpack_router_server_ejected",
            "1 while the server is ejected (no traffic until a readiness probe brings it back).",
            ["server"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "inferpack_router_upstream_failures",
            "Failed upstream calls by server and kind (connect, protocol, timeout; model-not-ready, "
            "model-load-failed, shutting-down: a 503 retried on another copy).",
            ["server", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "inferpack_router_request_duration_seconds",
            "Time from request received to response ready, upstream included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outstanding = Gauge(
            "inferpack_router_outstanding", "Requests in flight, by server.", ["server"], registry=r
        )
        self.healthy = Gauge(
            "inferpack_router_server_healthy",
            "1 when the server's readiness probe answers (see also ..._server_ejected).",
            ["server"],
            registry=r,
        )
        self.models_by_copies = Gauge(
            "inferpack_router_models_by_healthy_copies",
            "Placed models by their number of healthy copies (0: unavailable; the last label is 'N+').",
            ["copies"],
            registry=r,
        )
        self.models_unavailable = Gauge(
            "inferpack_router_models_unavailable",
            "Placed models with no healthy copy (requests for them get 503).",
            registry=r,
        )
        self._codes: dict[int, Any] = {}

    def count(self, code: int) -> None:
        """Count one answered request (label children cached: this runs on every request)."""
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self.requests.labels(str(code))
        child.inc()
