"""The endpoints file: where each server of a plan answers. The router reads it next to the plan.

Format (JSON, versioned, unknown fields rejected):

    {
      "format_version": 1,
      "servers": {
        "cpu-a-0": "http://srv-cpu-a-0.inferpack.svc.cluster.local:8080",
        "cpu-a-1": "http://127.0.0.1:41234"
      }
    }

`servers` maps every server name of the plan to the base URL of its HTTP API (no trailing slash, no path).
The plan says which models a server holds; this file says how to reach it. On Kubernetes the file lives in
the `inferpack-placement` ConfigMap (key `endpoints.json`, beside `plan.json`); the local fleet writes the
same file with loopback URLs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from inferpack.errors import PlanError
from inferpack.jsonfile import StrictModel, read_json_model
from inferpack.plan import Plan

ENDPOINTS_FORMAT_VERSION: Literal[1] = 1


class ServerEndpoints(StrictModel):
    """Server name -> base URL of its HTTP API."""

    format_version: Literal[1] = ENDPOINTS_FORMAT_VERSION
    servers: dict[str, str] = Field(
        description="Server name (as in the plan) -> base URL, e.g. http://h:8080."
    )

    @field_validator("servers")
    @classmethod
    def _urls_are_http(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not url.startswith(("http://", "https://")) or url.endswith("/"):
                raise ValueError(f"server {name!r}: {url!r} must be an http(s) base URL without trailing '/'")
        return value

    def check_covers(self, plan: Plan) -> None:
        """Raise PlanError unless every server of the plan has exactly one URL here (and no stranger)."""
        planned = {s.name for s in plan.servers()}
        if missing := sorted(planned - set(self.servers)):
            raise PlanError(f"endpoints file misses server(s) {missing[:5]} of the plan")
        if extra := sorted(set(self.servers) - planned):
            raise PlanError(f"endpoints file names server(s) {extra[:5]} that the plan does not have")


def load_endpoints(path: Path) -> ServerEndpoints:
    """Read and validate an endpoints file."""
    return read_json_model(path, ServerEndpoints, "endpoints file")


def endpoints_json(endpoints: ServerEndpoints) -> str:
    """The file's text: indented, keys sorted, so a ConfigMap diff shows only real changes."""
    return json.dumps(endpoints.model_dump(), indent=2, sort_keys=True) + "\n"


def save_endpoints(endpoints: ServerEndpoints, path: Path) -> None:
    """Write an endpoints file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(endpoints_json(endpoints))
