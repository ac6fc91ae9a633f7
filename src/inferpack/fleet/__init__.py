"""The local fleet: server processes on this host behind one model-aware router.

Modules by job: `state` (the run directory and its JSON state), `balancer` (placement and least-outstanding
choice, pure), `processes` (spawning, readiness, stopping), `supervisor` (the background process `up`
starts: it owns the servers and the router and restarts the dead), `router` (the router's ASGI app: routes
and headers), `forwarding` (the router's retry policy and fan-out), `probe` (the router's health probe),
`routermetrics` (its metrics), `upstream` (its pooled client), `ops` (the Python API behind
up/status/logs/down), `display` (start-up progress and summary), `configview` (`inferpack config show`),
`demo` (`inferpack demo`), `cli` (the typer commands).
"""

from __future__ import annotations
