"""Where requests go: one base URL (a router or a single server), a list of URLs, or client-side routing
from a placement plan (model -> servers) plus an endpoints file (server name -> URL).

The endpoints file (`inferpack.endpoints`) is the one the local fleet writes as `endpoints.json` and
Kubernetes rendering puts in the placement ConfigMap:

    {"format_version": 1, "servers": {"server-0": "http://127.0.0.1:8101", "server-1": "http://..."}}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from inferpack.endpoints import load_endpoints
from inferpack.errors import ConfigError
from inferpack.jsonfile import StrictModel
from inferpack.plan import load_plan


class LoadTarget(StrictModel):
    """Resolved target: either `urls` (any URL serves any model) or `placement` (model -> URLs)."""

    urls: list[str] = Field(default_factory=list)
    placement: dict[str, list[str]] | None = None
    description: str = ""

    def url_choices(self, model: str) -> list[str]:
        """The base URLs that can answer `model`."""
        if self.placement is None:
            return self.urls
        try:
            return self.placement[model]
        except KeyError as exc:
            raise ConfigError(f"model {model!r} is on no server of the plan") from exc

    def pairs(self, models: list[str]) -> list[tuple[str, str]]:
        """(base URL, model) for every model of every server, server by server (the `seq` mode)."""
        if self.placement is None:
            return [(url, m) for url in self.urls for m in models]
        by_url: dict[str, list[str]] = {}
        for m in models:
            for url in self.url_choices(m):
                by_url.setdefault(url, []).append(m)
        return [(url, m) for url, ms in by_url.items() for m in ms]


class UrlChooser:
    """Picks a base URL per request: the only one, or a seeded random choice among the copies."""

    def __init__(self, target: LoadTarget, models: list[str], rng: np.random.Generator) -> None:
        self._choices = [target.url_choices(m) for m in models]
        self._rng = rng

    def url_for(self, index: int) -> str:
        """Base URL for the model at `index` of the model list."""
        choices = self._choices[index]
        if len(choices) == 1:
            return choices[0]
        return choices[int(self._rng.integers(len(choices)))]


def resolve_target(
    urls: list[str], plan_path: Path | None, endpoints_path: Path | None
) -> tuple[LoadTarget, list[str]]:
    """Build the LoadTarget from CLI inputs; also returns the plan's model ids (empty without a plan).

    plan + endpoints file: client-side routing to each model's servers. plan + URL(s): the plan only names
    the models and the URLs (e.g. the router) route. URL(s) alone: any URL serves any model.
    """
    plan_models: list[str] = []
    if plan_path is not None:
        plan = load_plan(plan_path)
        plan_models = plan.models()
        if endpoints_path is not None:
            if urls:
                raise ConfigError("give either --url or --endpoints with --plan, not both")
            endpoints = load_endpoints(endpoints_path)  # the fleet's and Kubernetes' endpoints.json
            missing = [s.name for s in plan.servers() if s.name not in endpoints.servers]
            if missing:
                raise ConfigError(f"endpoints file {endpoints_path} lacks plan server(s) {missing[:5]}")
            placement = {m: [endpoints.servers[s] for s in names] for m, names in plan.placement().items()}
            desc = f"plan {plan_path.name} via {endpoints_path.name} ({len(plan.servers())} servers)"
            return LoadTarget(placement=placement, description=desc), plan_models
    elif endpoints_path is not None:
        raise ConfigError("--endpoints is only used with --plan")
    if not urls:
        raise ConfigError(
            "no target", hint="give --url URL (repeatable), or --plan with --endpoints or --url"
        )
    clean = [u.rstrip("/") for u in urls]
    for u in clean:
        if not u.startswith(("http://", "https://")):
            raise ConfigError(f"{u!r} is not an http(s) URL")
    return LoadTarget(urls=clean, description=", ".join(clean)), plan_models
