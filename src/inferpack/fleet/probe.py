"""The router's health probe: readiness marks servers down and up; for an ejected server it is the
half-open probe that brings it back.

Servers start as healthy (the supervisor, or Kubernetes readiness, checked them before traffic); a failed
forward marks a server down at once, or ejects it after repeated failures (`forwarding`, `outliers`), and
this probe is what brings it back. Each server is probed on its own schedule, so a hung one (whose probe
waits out its timeout) delays no other's.
"""

from __future__ import annotations

import asyncio
import logging

from inferpack.fleet.balancer import Balancer
from inferpack.fleet.outliers import OutlierDetector
from inferpack.fleet.upstream import Failure, UpstreamClient

log = logging.getLogger("inferpack.router")


class HealthProbe:
    """Polls every server's `/v2/health/ready` each `interval_s` and tells the balancer."""

    def __init__(
        self,
        balancer: Balancer,
        outliers: OutlierDetector,
        client: UpstreamClient,
        urls: dict[str, str],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.balancer = balancer
        self.outliers = outliers
        self.client = client
        self.urls = urls
        self.interval_s = interval_s
        self.timeout_s = timeout_s

    async def ready(self, name: str) -> bool:
        """Whether `name` answers its readiness check (200) within the timeout."""
        try:
            answer = await self.client.call(
                "GET", f"{self.urls[name]}/v2/health/ready", timeout_s=self.timeout_s
            )
        except Failure:
            return False
        return answer.status == 200

    async def probe(self, name: str) -> None:
        """Probe one server once (an ejected one only once its period is over: half-open; answered, it is
        readmitted) and mark it up or down."""
        if self.outliers.ejected(name) and not self.outliers.half_open(name):
            return
        up = await self.ready(name)
        if self.outliers.ejected(name):
            event = self.outliers.probe(name, up)
            if event == "readmitted":
                self.balancer.readmit(name)
                log.warning("server %s is back after its ejection (readiness probe answered)", name)
        if up != self.balancer.healthy[name]:
            log.warning("server %s is %s", name, "back" if up else "down")
        (self.balancer.mark_up if up else self.balancer.mark_down)(name)

    async def _loop(self, name: str) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe(name)

    async def run(self) -> None:
        """Probe every server each interval, until cancelled: one loop per server, started for servers that
        join the placement and stopped for those that leave it."""
        loops: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                current = set(self.balancer.servers)
                for name in current - loops.keys():
                    loops[name] = asyncio.create_task(self._loop(name))
                for name in loops.keys() - current:
                    loops.pop(name).cancel()
                await asyncio.sleep(self.interval_s)
        finally:
            for task in loops.values():
                task.cancel()
