"""Security defaults of the rendered objects: the repository API, identities, the cluster's add-ons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.eks import ClusterOptions, render_eksctl_config
from inferpack.deploy.options import RenderOptions
from inferpack.deploy.render import render_bench_job, render_idle_bench_job, render_manifests
from inferpack.plan import Plan, save_plan
from inferpack.settings import AuthSettings, ServerSettings

Manifest = dict[str, Any]


def _pod_specs(manifests: list[Manifest], component: str) -> list[Manifest]:
    return [
        m["spec"]["template"]["spec"]
        for m in manifests
        if m["kind"] in ("Deployment", "Job", "DaemonSet")
        and m["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]


def _env(spec: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in spec["containers"][0]["env"]}


def test_repository_api_is_off_unless_an_admin_secret_guards_it(plan: Plan) -> None:
    for spec in _pod_specs(render_manifests(plan, ServerSettings()), "server"):
        env = _env(spec)
        assert env["INFERPACK_SERVER__AUTH__REPOSITORY_API"] == "false"
        assert "INFERPACK_SERVER__AUTH__ADMIN_TOKEN" not in env
    guarded = render_manifests(plan, ServerSettings(), RenderOptions(admin_secret="adm"))
    for spec in _pod_specs(guarded, "server"):
        env = _env(spec)
        assert env["INFERPACK_SERVER__AUTH__REPOSITORY_API"] == "true"
        # the token comes from the Secret, never as a literal in the manifest
        assert env["INFERPACK_SERVER__AUTH__ADMIN_TOKEN"] == {
            "secretKeyRef": {"name": "adm", "key": "admin-token"}
        }
    # a config that switches the API off keeps it off, Secret or not
    off = ServerSettings(auth=AuthSettings(repository_api=False))
    for spec in _pod_specs(render_manifests(plan, off, RenderOptions(admin_secret="adm")), "server"):
        assert _env(spec)["INFERPACK_SERVER__AUTH__REPOSITORY_API"] == "false"
        assert "INFERPACK_SERVER__AUTH__ADMIN_TOKEN" not in _env(spec)


def test_the_router_gets_the_servers_auth_and_prometheus_a_metrics_token(plan: Plan) -> None:
    """The router checks tokens and scopes itself (docs/security.md): it reads the same tokens file, and
    the auth Secret's optional `metrics-token` key reaches servers and router alike."""
    options = RenderOptions(auth_secret="tok", admin_secret="adm")
    manifests = render_manifests(plan, ServerSettings(), options)
    (router,) = _pod_specs(manifests, "router")
    servers = _pod_specs(manifests, "server")
    for spec in [router, *servers]:
        env = _env(spec)
        assert env["INFERPACK_SERVER__AUTH__TOKENS_FILE"] == "/etc/inferpack/auth/tokens"
        assert env["INFERPACK_SERVER__AUTH__METRICS_TOKEN"] == {
            "secretKeyRef": {"name": "tok", "key": "metrics-token", "optional": True}
        }
        assert env["INFERPACK_SERVER__AUTH__ADMIN_TOKEN"] == {
            "secretKeyRef": {"name": "adm", "key": "admin-token"}
        }
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "auth")
        assert mount == {"name": "auth", "mountPath": "/etc/inferpack/auth", "readOnly": True}
        assert {"name": "auth", "secret": {"secretName": "tok"}} in spec["volumes"]
    (open_router,) = _pod_specs(render_manifests(plan, ServerSettings()), "router")
    assert not any(
        k.startswith("INFERPACK_SERVER__AUTH__") and k.endswith("TOKEN") for k in _env(open_router)
    )


def test_only_servers_carry_the_s3_role(plan: Plan) -> None:
    role = "arn:aws:iam::123456789012:role/inferpack-s3"
    options = RenderOptions(role_arn=role)
    manifests = render_manifests(plan, ServerSettings(), options)
    accounts = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ServiceAccount"}
    assert accounts["inferpack"]["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    assert "annotations" not in accounts["inferpack-client"]["metadata"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts.values())
    assert {s["serviceAccountName"] for s in _pod_specs(manifests, "server")} == {"inferpack"}
    assert {s["serviceAccountName"] for s in _pod_specs(manifests, "router")} == {"inferpack-client"}
    for job in (render_bench_job(options), render_idle_bench_job(options)):
        assert job["spec"]["template"]["spec"]["serviceAccountName"] == "inferpack-client"


def test_cluster_config_enables_network_policy_and_metrics_server(plan: Plan) -> None:
    config = render_eksctl_config(plan)
    addons = {a["name"]: a for a in config["addons"]}
    assert json.loads(addons["vpc-cni"]["configurationValues"]) == {"enableNetworkPolicy": "true"}
    assert "metrics-server" in addons
    irsa = config["iam"]["serviceAccounts"]
    assert [a["metadata"] for a in irsa] == [{"name": "inferpack", "namespace": "inferpack"}]
    other = render_eksctl_config(plan, ClusterOptions(namespace="serving"))
    assert other["iam"]["serviceAccounts"][0]["metadata"]["namespace"] == "serving"


def test_cluster_config_cli_follows_the_namespace(plan: Plan, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    save_plan(plan, plan_file)
    result = CliRunner().invoke(app, ["eks", "cluster-config", "--plan", str(plan_file), "-n", "serving"])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.stdout)
    assert config["iam"]["serviceAccounts"][0]["metadata"] == {"name": "inferpack", "namespace": "serving"}
