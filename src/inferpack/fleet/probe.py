"""The router's health probe: marks servers down when their readiness check fails, up when it answers.

Servers start as healthy (the supervisor, or Kubernetes readiness, checked them before traffic); a failed
forward marks a server down at once (`forwarding`), and this probe is what brings it back.
"""

from __future__ import annotations

import asyncio
import logging

from inferpack.fleet.balancer import Balancer
from inferpack.fleet.upstream import Failure, UpstreamClient

log = logging.getLogger("inferpack.router")

PROBE_TIMEOUT_S = 2.0


class HealthProbe:
    """Polls every server's `/v2/health/ready` each `interval_s` and tells the balancer."""

    def __init__(
        self, balancer: Balancer, client: UpstreamClient, urls: dict[str, str], interval_s: float
    ) -> None:
        self.balancer = balancer
        self.client = client
        self.urls = urls
        self.interval_s = interval_s

    async def probe(self, name: str) -> None:
        """Probe one server once and mark it up or down."""
        try:
            answer = await self.client.call(
                "GET", f"{self.urls[name]}/v2/health/ready", timeout_s=PROBE_TIMEOUT_S
            )
            up = answer.status == 200
        except Failure:
            up = False
        if up != self.balancer.healthy[name]:
            log.warning("server %s is %s", name, "back" if up else "down")
        (self.balancer.mark_up if up else self.balancer.mark_down)(name)

    async def run(self) -> None:
        """Probe every server each interval, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.gather(*(self.probe(name) for name in self.balancer.servers))
