"""Rollouts without outages: server waves from the plan, and the `k8s apply` command lines built on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.deploy.test_operations import _cli, fake_kubectl  # noqa: F401  (a fixture)

from inferpack.deploy.kubectl import SERVER_SIDE_APPLY, Kubectl, KubectlError, run
from inferpack.deploy.kustomize import write_base
from inferpack.deploy.render import render_manifests
from inferpack.deploy.rollout import base_plan, base_resources, rollout_waves, summarise_waves
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan
from inferpack.settings import ServerSettings


def _plan(servers: list[list[str]]) -> Plan:
    return Plan(
        created_by="test",
        repository="demo-repo",
        groups=[
            ServerGroup(
                name="g",
                instance_type="c7i.2xlarge",
                resources=Resources(cpu=7.5, memory_mb=14000),
                servers=[ServerPlan(name=f"g-{i}", models=models) for i, models in enumerate(servers)],
            )
        ],
    )


def _check(plan: Plan, waves: list[list[str]]) -> None:
    flat = [name for wave in waves for name in wave]
    assert sorted(flat) == sorted(s.name for s in plan.servers())  # every server, exactly once
    for holders in plan.placement().values():
        for wave in waves:
            assert len(set(wave) & set(holders)) <= 1, (wave, holders)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(st.sampled_from([f"m{i}" for i in range(12)]), min_size=1, max_size=5, unique=True),
        min_size=1,
        max_size=12,
    )
)
def test_no_wave_holds_two_holders_of_a_model(servers: list[list[str]]) -> None:
    plan = _plan(servers)
    waves = rollout_waves(plan)
    _check(plan, waves)
    assert all(waves) and waves == rollout_waves(plan)  # no empty wave; deterministic
    # greedy colouring: never more waves than the most servers any one server shares a model with
    peers = {s.name: {h for m in s.models for h in plan.placement()[m]} for s in plan.servers()}
    assert len(waves) <= max(len(p) for p in peers.values())
    # the summary: a model goes dark during a wave only when every copy of it is in that wave
    summary = summarise_waves(plan, waves)
    for wave in summary:
        for model in wave.models_dark:
            assert len(plan.placement()[model]) == 1 and plan.placement()[model][0] in wave.servers


def test_wave_summary_of_a_two_copy_plan() -> None:
    plan = _plan([["a", "b"], ["b", "c"], ["c", "a"], ["d"]])
    waves = rollout_waves(plan)
    summary = summarise_waves(plan, waves)
    assert [w.servers for w in summary] == waves
    assert sum(w.models_restarting for w in summary) == 7  # every copy restarts once
    assert [m for w in summary for m in w.models_dark] == ["d"]  # only the one-copy model


def test_waves_of_the_mixed_plan(plan: Plan) -> None:
    waves = rollout_waves(plan)
    _check(plan, waves)
    assert len(waves) == 3  # m-hot has three copies: they restart one at a time
    assert [w for w in waves if "inf2-0" in w] != [w for w in waves if "inf2-1" in w]


def test_apply_runs_waves_then_router_then_prunes(plan: Plan, tmp_path: Path) -> None:
    base = tmp_path / "k8s"
    write_base(base, render_manifests(plan, ServerSettings()))
    assert base_plan(base) == plan  # the apply rolls out exactly what was rendered
    resources = base_resources(base)
    waves = rollout_waves(plan)
    k = Kubectl(namespace="serving")
    commands = k.apply(base, resources=resources, waves=waves)
    apply = ["kubectl", *SERVER_SIDE_APPLY]
    files = [[c[i + 1] for i, a in enumerate(c) if a == "-f"] for c in commands if c[:5] == apply]
    applied = [Path(f).relative_to(base).as_posix() for group in files for f in group]
    assert sorted(applied) == sorted(resources)  # every file of the base, once
    assert "servers/c7i-0.yaml" not in files[0] and "router.yaml" not in applied[:-1]
    # each wave: its files applied, then each of its Deployments rolled out, before the next wave
    position = 1
    for wave in waves:
        assert files[len([c for c in commands[:position] if c[:5] == apply])] == [
            str(base / f"servers/{name}.yaml") for name in wave
        ]
        rollouts = commands[position + 1 : position + 1 + len(wave)]
        assert [c[3:5] for c in rollouts] == [["rollout", "status"]] * len(wave)
        assert [c[5] for c in rollouts] == [f"deployment/srv-{name}" for name in wave]
        position += 1 + len(wave)
    assert commands[-2][3:6] == ["rollout", "status", "deployment/router"]
    prune = commands[-1]
    assert prune[:6] == ["kubectl", "--namespace", "serving", "delete", "deployments,services", "-l"]
    kept = ",".join(sorted(s.name for s in plan.servers()))
    assert prune[6] == (
        "app.kubernetes.io/part-of=inferpack,app.kubernetes.io/component=server,"
        f"inferpack.dev/server,inferpack.dev/server notin ({kept})"
    )
    # the server budget lets not-ready pods be evicted (a node drain is never blocked by them)
    pdbs = [
        d
        for f in base.rglob("*.yaml")
        for d in yaml.safe_load_all(f.read_text())
        if isinstance(d, dict) and d.get("kind") == "PodDisruptionBudget"
    ]
    assert pdbs and all(p["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" for p in pdbs)


def test_cli_apply_reads_the_plan_from_the_base(
    fake_kubectl: tuple[Path, Path],  # noqa: F811
    plan: Plan,
    tmp_path: Path,
) -> None:
    base = tmp_path / "k8s"
    write_base(base, render_manifests(plan, ServerSettings()))
    proc, calls = _cli(fake_kubectl, "apply", "--dir", str(base))
    assert proc.returncode == 0, proc.stderr
    rollouts = [c[4] for c in calls if c[2:4] == ["rollout", "status"]]
    assert rollouts[-1] == "deployment/router" and len(rollouts) == len(plan.servers()) + 1
    assert calls[-1][2] == "delete"
    proc, calls = _cli(fake_kubectl, "apply", "--dir", str(base), "--server-dry-run")
    assert len(calls) == 1 and calls[0][-1] == "--dry-run=server"
    # --dry-run needs no cluster: it prints the waves and the commands, and runs nothing
    proc, calls = _cli(fake_kubectl, "apply", "--dir", str(base), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    waves = rollout_waves(plan)
    assert f"{len(plan.servers())} servers in {len(waves)} waves" in proc.stdout
    assert "deployment/router" in proc.stdout and "notin" in proc.stdout


def test_the_real_kubectl_accepts_the_rollout_command_lines(
    no_cluster: tuple[str, Path], plan: Plan, tmp_path: Path
) -> None:
    kubectl, config = no_cluster
    base = tmp_path / "k8s"
    write_base(base, render_manifests(plan, ServerSettings()))
    k = Kubectl(kubeconfig=config, binary=kubectl)
    commands = k.apply(base, resources=base_resources(base), waves=rollout_waves(plan))
    # one of each shape: apply -f files, rollout status deployment/NAME, delete by a set-based selector
    for cmd in (commands[0], commands[2], commands[-1]):
        with pytest.raises(KubectlError, match="no cluster reachable"):
            run([[*cmd[:1], "--request-timeout=5s", *cmd[1:]]], echo=lambda _line: None)
    # kubectl sends a label selector to the API server unparsed: its syntax is checked by a cluster only
