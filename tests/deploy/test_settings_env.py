"""Rendered pods run the configuration a local fleet runs: every server and router setting that differs
from its default reaches the pods as INFERPACK_* variables (one spelling, `settings.env_overrides`), read
back here through the real settings loader. The local fleet's servers and router read the same settings
from the configuration file (`--config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.options import RenderOptions
from inferpack.deploy.render import render_manifests
from inferpack.deploy.servers import POD_SKIPPED
from inferpack.plan import Plan, save_plan
from inferpack.settings import RouterSettings, ServerSettings, env_overrides, load_settings

Manifest = dict[str, Any]

# Every server setting a pod takes from the configuration, none at its default (checked below, so a new
# setting fails this test until it is rendered and listed here).
SERVER = ServerSettings.model_validate(
    {
        "lazy_load": True,
        "memory_budget_mb": 4096.5,
        "pinned_models": ["m-1", "m-hot"],
        "ready_requires_models": False,
        "idle_unload_s": 600.0,
        "max_concurrent_loads": 3,
        "eviction_policy": "frequency",
        "warm_start": True,
        "access_stats_save_s": 30.0,
        "access_half_life_s": 60.0,
        "warm_start_max_models": 5,
        "load_nice": 5,
        "memory_wait_s": 1.5,
        "repository_retry_initial_s": 2.0,
        "repository_retry_max_s": 30.0,
        "inference_threads": 3,
        "intra_op_threads": 2,
        "dtype": "fp32",
        "engine": "mixed",
        "trace_after_batches": 0,
        "trunk_after_batches": 64,
        "pack_weights": False,
        "max_body_bytes": 2048,
        "max_sequence_length": 256,
        "drain_timeout_s": 12.0,
        "metrics_top_k": 10,
        "batching": {
            "max_batch_size": 4,
            "max_batch_latency_ms": 50.0,
            "spread_over_idle_threads": False,
            "settle_ms": 3.5,
            "max_wait_ms": 2.5,
            "max_queue": 16,
            "deadline_ms": 500.0,
            "latency_objective_ms": 200.0,
            "deadline_factor": 6.0,
            "cross_tenant": False,
        },
    }
)
ROUTER = RouterSettings(
    upstream_timeout_s=30.0,
    deadline_floor_s=1.5,
    deadline_factor=4.0,
    deadline_min_samples=10,
    latency_window=100,
    eject_after_failures=5,
    eject_base_s=2.0,
    eject_max_s=60.0,
    probe_interval_s=1.0,
    probe_timeout_s=1.0,
)


def non_default_fields(section: Any, skip: tuple[str, ...] = ()) -> set[str]:
    """Dotted names of the fields of `section` (nested sections included) that differ from the default."""
    defaults = type(section)()
    out = set()
    for name in type(section).model_fields:
        value = getattr(section, name)
        if name in skip:
            continue
        if isinstance(value, BaseModel):
            out |= {f"{name}.{sub}" for sub in non_default_fields(value)}
        elif value != getattr(defaults, name):
            out.add(name)
    return out


def all_fields(section: Any, skip: tuple[str, ...] = ()) -> set[str]:
    out = set()
    for name in type(section).model_fields:
        if name in skip:
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            out |= {f"{name}.{sub}" for sub in all_fields(value)}
        else:
            out.add(name)
    return out


def test_the_fixtures_set_every_setting_a_pod_takes() -> None:
    assert non_default_fields(SERVER, POD_SKIPPED) == all_fields(SERVER, POD_SKIPPED)
    assert non_default_fields(ROUTER) == all_fields(ROUTER)


def loaded_from(
    env: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> tuple[ServerSettings, RouterSettings]:
    """What a process with this container env loads (the real loader; no configuration file)."""
    with monkeypatch.context() as m:
        for var in env:
            if "value" in var and var["name"].startswith("INFERPACK_"):
                m.setenv(var["name"], var["value"])
        loaded = load_settings(None)
    return loaded.server, loaded.router


def containers(manifests: list[Manifest], component: str) -> dict[str, Manifest]:
    return {
        m["metadata"]["name"]: m["spec"]["template"]["spec"]["containers"][0]
        for m in manifests
        if m["kind"] == "Deployment" and m["metadata"]["labels"]["app.kubernetes.io/component"] == component
    }


def test_every_configured_server_and_router_setting_reaches_the_pods(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./inferpack.toml in the way of the settings loader
    manifests = render_manifests(plan, SERVER, RenderOptions(), ROUTER)
    servers = containers(manifests, "server")
    assert len(servers) == len(plan.servers())
    for name, container in servers.items():
        got, _ = loaded_from(container["env"], monkeypatch)
        assert got.model_dump(exclude=set(POD_SKIPPED)) == SERVER.model_dump(exclude=set(POD_SKIPPED)), name
    (router,) = containers(manifests, "router").values()
    _, got_router = loaded_from(router["env"], monkeypatch)
    assert got_router == ROUTER


def test_default_settings_render_no_overrides_beyond_the_pods_own(plan: Plan) -> None:
    """Defaults are the server's own: nothing but the always-rendered pod settings is added."""
    assert env_overrides(ServerSettings(), "server") == {}
    assert env_overrides(RouterSettings(), "router") == {}
    (router,) = containers(render_manifests(plan, ServerSettings()), "router").values()
    assert not [v for v in router["env"] if v["name"].startswith("INFERPACK_ROUTER__")]


def test_secrets_and_the_rendering_machines_paths_never_reach_the_env(plan: Plan) -> None:
    settings = SERVER.model_copy(
        update={
            "auth": SERVER.auth.model_copy(update={"tokens": ["secret-token"], "admin_token": "admin"}),
            "access_stats_file": "/home/me/stats.json",
        }
    )
    for container in containers(render_manifests(plan, settings), "server").values():
        text = str(container["env"])
        assert "secret-token" not in text and "/home/me" not in text
        assert "admin" not in {v.get("value") for v in container["env"]}
        names = {v["name"] for v in container["env"]}
        assert "INFERPACK_SERVER__AUTH__TOKENS" not in names
        assert "INFERPACK_SERVER__ACCESS_STATS_FILE" not in names


def test_a_configured_objective_reaches_every_server_and_the_plans_p90_does_not(plan: Plan) -> None:
    """A configured latency objective reaches every server; the plan's P90 objective alone does not (as
    the servers' default deadline it would turn the slowest tenth of answers at the planned rate into
    errors: `Plan.server_objective_ms`)."""
    sized = plan.model_copy(update={"slo_p90_ms": 180.0})
    for container in containers(render_manifests(sized, ServerSettings()), "server").values():
        assert "INFERPACK_SERVER__BATCHING__LATENCY_OBJECTIVE_MS" not in {v["name"] for v in container["env"]}
    for container in containers(render_manifests(sized, SERVER), "server").values():
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["INFERPACK_SERVER__BATCHING__LATENCY_OBJECTIVE_MS"] == "200.0"


def test_k8s_render_takes_the_configs_server_and_router_sections(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "inferpack.toml"
    config.write_text(
        "[server.batching]\nspread_over_idle_threads = false\ncross_tenant = false\n"
        "[router]\neject_base_s = 3.0\nupstream_timeout_s = 20.0\n"
    )
    plan_file = tmp_path / "plan.json"
    save_plan(plan, plan_file)
    out = tmp_path / "k8s"
    args = ["k8s", "render", "--plan", str(plan_file), "--out", str(out), "--config", str(config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    docs = [d for f in sorted(out.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    config.unlink()  # what the pods load comes from their env alone
    for name, container in containers(docs, "server").items():
        server, _ = loaded_from(container["env"], monkeypatch)
        assert not server.batching.spread_over_idle_threads and not server.batching.cross_tenant, name
    (router,) = containers(docs, "router").values()
    _, got = loaded_from(router["env"], monkeypatch)
    assert (got.eject_base_s, got.upstream_timeout_s) == (3.0, 20.0)


def test_pods_pack_weights_in_memory(plan: Plan, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One server per pod: no other process to share packed weights' files with, whatever is configured."""
    monkeypatch.chdir(tmp_path)
    configured = SERVER.model_copy(update={"share_packed_weights": True, "packed_weights_dir": "/home/me/p"})
    for container in containers(render_manifests(plan, configured), "server").values():
        got, _ = loaded_from(container["env"], monkeypatch)
        assert got.share_packed_weights is False
        assert "/home/me" not in str(container["env"])  # the rendering machine's path is no path in a pod
