"""The router's placement as files it can re-read while running: the plan and the endpoints file.

The local fleet's router re-reads both on SIGHUP (`fleet.reconcile` changes the placement of a running
fleet that way) and reports a digest of what it applied in its readiness body (`placement`), so the
supervisor knows when the router routes by the files it wrote. A file that does not parse, or endpoints
that do not cover the plan, leave the router on its previous placement (logged).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from inferpack.endpoints import ServerEndpoints
from inferpack.jsonfile import GZIP_MAGIC, parse_json_model
from inferpack.plan import Plan


def _text(raw: bytes) -> str:
    # a Kubernetes router's plan is gzip-compressed (the placement ConfigMap's plan.json.gz)
    return (gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw).decode()


def placement_digest(plan_text: bytes, endpoints_text: bytes) -> str:
    """A short digest of a plan file and an endpoints file, as their bytes are."""
    return hashlib.sha256(plan_text + b"\0" + endpoints_text).hexdigest()[:16]


@dataclass(frozen=True)
class Placement:
    """A plan, its server URLs and the digest of the files they came from."""

    plan: Plan
    endpoints: dict[str, str]
    digest: str


@dataclass(frozen=True)
class PlacementFiles:
    """Where a router's plan and endpoints file are."""

    plan: Path
    endpoints: Path

    def read(self) -> Placement:
        """Parse both files (ConfigError or PlanError naming the problem)."""
        plan_text, endpoints_text = self.plan.read_bytes(), self.endpoints.read_bytes()
        plan = parse_json_model(_text(plan_text), Plan, f"plan file {self.plan}")
        endpoints = parse_json_model(
            _text(endpoints_text), ServerEndpoints, f"endpoints file {self.endpoints}"
        )
        endpoints.check_covers(plan)
        return Placement(plan, endpoints.servers, placement_digest(plan_text, endpoints_text))
