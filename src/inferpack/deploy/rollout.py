"""Rollouts without outages: the order in which `k8s apply` updates the servers of a plan.

Servers are updated in waves; no two servers holding a copy of the same model are in one wave, so while a
wave restarts, every model with two or more copies keeps one outside it. The waves are a colouring of the
"shares a model" graph, computed purely from the plan (greedy, most-connected server first: few waves for
the replica sets a plan makes). The apply reads the plan back from the rendered base's placement
ConfigMap, so it rolls out exactly what was rendered.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass
from pathlib import Path

import yaml

from inferpack.deploy.placement import PLACEMENT_CONFIGMAP, PLAN_KEY
from inferpack.deploy.servers import model_peers
from inferpack.errors import ConfigError
from inferpack.jsonfile import parse_json_model
from inferpack.plan import Plan


def rollout_waves(plan: Plan) -> list[list[str]]:
    """Server names in waves (each sorted): every server in exactly one wave, and no wave holds two
    holders of any model. Deterministic for a plan."""
    peers = model_peers(plan)
    order = sorted(peers, key=lambda name: (-len(peers[name]), name))
    wave_of: dict[str, int] = {}
    for name in order:
        taken = {wave_of[p] for p in peers[name] if p in wave_of}
        wave_of[name] = next(w for w in range(len(taken) + 1) if w not in taken)
    waves: list[list[str]] = [[] for _ in range(max(wave_of.values(), default=-1) + 1)]
    for name, wave in wave_of.items():
        waves[wave].append(name)
    return [sorted(w) for w in waves]


@dataclass(frozen=True)
class WaveSummary:
    """What one rollout wave restarts: its servers, the models they hold, and the models left with no
    serving copy while it restarts (single-copy models only: a wave never holds two copies of a model)."""

    servers: list[str]
    models_restarting: int
    models_dark: list[str]


def summarise_waves(plan: Plan, waves: list[list[str]]) -> list[WaveSummary]:
    """Per wave, what restarts and which models go without a copy meanwhile (for `k8s apply --dry-run`)."""
    placement = plan.placement()
    out = []
    for wave in waves:
        members = set(wave)
        touched = sorted(m for m, holders in placement.items() if members.intersection(holders))
        dark = [m for m in touched if members.issuperset(placement[m])]
        out.append(WaveSummary(servers=wave, models_restarting=len(touched), models_dark=dark))
    return out


def base_resources(base_dir: Path) -> list[str]:
    """The files the rendered base's kustomization lists, in its order."""
    path = base_dir / "kustomization.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the kustomization ({exc})") from exc
    return [str(r) for r in (data or {}).get("resources", [])]


def base_plan(base_dir: Path, router_file: str = "router.yaml") -> Plan:
    """The plan a base was rendered from: its placement ConfigMap's plan.json.gz."""
    path = base_dir / router_file
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the router's manifests ({exc})") from exc
    for doc in documents:
        if (
            isinstance(doc, dict)
            and doc.get("kind") == "ConfigMap"
            and doc.get("metadata", {}).get("name") == PLACEMENT_CONFIGMAP
            and PLAN_KEY in doc.get("binaryData", {})
        ):
            text = gzip.decompress(base64.b64decode(doc["binaryData"][PLAN_KEY])).decode()
            return parse_json_model(text, Plan, f"{path}: {PLAN_KEY}")
    raise ConfigError(
        f"{path} holds no placement ConfigMap with {PLAN_KEY}",
        hint="render the base again (`inferpack k8s render`)",
    )
