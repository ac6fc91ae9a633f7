"""`k8s collect` (merging real worker outputs), the eksctl/Karpenter configs, and the CLI commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.collect import collect
from inferpack.deploy.eks import ClusterOptions, render_eksctl_config, render_karpenter_node_pools
from inferpack.deploy.image import build_commands
from inferpack.deploy.kubectl import Kubectl, KubectlError
from inferpack.loadtest.result import load_result
from inferpack.plan import Plan, save_plan

INFERPACK = str(Path(sys.executable).parent / "inferpack")


def _worker_log(index: int, workers: int, requests: int) -> str:
    """A real `bench worker` run's output, as its pod log would hold it: against a closed port, so every
    request is a (counted) connection error and no server is needed."""
    proc = subprocess.run(
        [
            INFERPACK, "bench", "worker", "--url", "http://127.0.0.1:9", "--num-models", "3",
            "--requests", str(requests), "--users", str(workers), "--timeout", "1",
            "--out", "-", "--progress", "none", "--worker-index", str(index), "--workers", str(workers),
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return "starting worker\n" + proc.stdout


def _job_runner(
    logs: dict[str, str], phases: dict[str, str], completions: int, calls: list[list[str]]
) -> Callable[[list[str]], subprocess.CompletedProcess[str]]:
    """A kubectl stand-in: the Job (uid-1), its pods (with their phases) and each pod's log."""

    def runner(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if cmd[-4:-2] == ["job", "inferpack-bench"]:
            job = {"metadata": {"uid": "uid-1"}, "spec": {"completions": completions}}
            return subprocess.CompletedProcess(cmd, 0, json.dumps(job), "")
        if "pods" in cmd:
            items = [{"metadata": {"name": n}, "status": {"phase": p}} for n, p in phases.items()]
            return subprocess.CompletedProcess(cmd, 0, json.dumps({"items": items}), "")
        return subprocess.CompletedProcess(cmd, 0, logs[cmd[cmd.index("logs") + 1]], "")

    return runner


def test_collect_fetches_each_pod_log_and_merges_exactly(tmp_path: Path) -> None:
    logs = {"inferpack-bench-0-abcde": _worker_log(0, 2, 4), "inferpack-bench-1-fghij": _worker_log(1, 2, 6)}
    calls: list[list[str]] = []
    runner = _job_runner(logs, dict.fromkeys(logs, "Succeeded"), 2, calls)

    k = Kubectl(namespace="serving")
    merged, path = collect(k, tmp_path, runner=runner, echo=lambda _l: None)
    # the Job first (its uid and completions), then only its own pods, by the controller's uid label
    assert calls[0] == ["kubectl", "--namespace", "serving", "get", "job", "inferpack-bench", "-o", "json"]
    assert calls[1] == [
        "kubectl", "--namespace", "serving", "get", "pods", "-l", "batch.kubernetes.io/controller-uid=uid-1",
        "-o", "json",
    ]  # fmt: skip
    assert sorted(calls[2:]) == sorted(k.pod_log(p) for p in logs)
    singles = [load_result(tmp_path / "logs" / f"{pod}.log") for pod in logs]
    assert merged.total_requests() == sum(r.total_requests() for r in singles)
    assert merged.error_count() == sum(r.error_count() for r in singles) > 0
    assert sorted(w.index for w in merged.workers) == [0, 1]
    assert load_result(path).error_count() == merged.error_count()

    with pytest.raises(KubectlError, match="expected 3"):
        collect(k, tmp_path / "again", expected_workers=3, runner=runner, echo=lambda _l: None)


def test_collect_refuses_fewer_workers_than_the_jobs_completions(tmp_path: Path) -> None:
    logs = {"inferpack-bench-0-abcde": _worker_log(0, 2, 4), "inferpack-bench-1-fghij": "Traceback\n"}
    phases = {"inferpack-bench-0-abcde": "Succeeded", "inferpack-bench-1-fghij": "Failed"}
    calls: list[list[str]] = []
    with pytest.raises(KubectlError, match="found 1 finished load-test workers of the Job, expected 2"):
        collect(Kubectl(), tmp_path, runner=_job_runner(logs, phases, 2, calls), echo=lambda _l: None)
    assert not any("logs" in c for c in calls)  # refused before merging anything
    assert not (tmp_path / "result.json").exists()

    # two logs of the same worker (one worker's result twice) are not two workers
    twice = {
        "inferpack-bench-0-abcde": logs["inferpack-bench-0-abcde"],
        "inferpack-bench-1-x": logs["inferpack-bench-0-abcde"],
    }
    runner = _job_runner(twice, dict.fromkeys(twice, "Succeeded"), 2, [])
    with pytest.raises(KubectlError, match="results of 1 distinct workers, expected 2"):
        collect(Kubectl(), tmp_path / "b", runner=runner, echo=lambda _l: None)


def test_eksctl_config_has_a_node_group_per_instance_type(plan: Plan) -> None:
    config = render_eksctl_config(
        plan, ClusterOptions(name="prod", region="eu-west-1", zones=("eu-west-1a",))
    )
    assert config["apiVersion"] == "eksctl.io/v1alpha5"
    assert config["metadata"] == {"name": "prod", "region": "eu-west-1", "version": "1.33"}
    groups = {g["instanceType"]: g for g in config["managedNodeGroups"] if g["name"] != "system"}
    assert sorted(groups) == sorted(g.instance_type for g in plan.groups)
    for group in plan.groups:
        ng = groups[group.instance_type]
        assert ng["desiredCapacity"] == ng["minSize"] == len(group.servers)
        assert ng["maxSize"] == len(group.servers) + 1
    assert groups["g5.xlarge"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
    ]
    assert groups["inf2.xlarge"]["taints"][0]["key"] == "aws.amazon.com/neuron"
    assert groups["c7g.xlarge"]["taints"] == [
        {"key": "inferpack.dev/role", "value": "server", "effect": "NoSchedule"}
    ]
    assert config["iam"]["serviceAccounts"][0]["metadata"] == {"name": "inferpack", "namespace": "inferpack"}


def test_karpenter_pools_cover_the_mix(plan: Plan) -> None:
    pools = {p["metadata"]["name"]: p for p in render_karpenter_node_pools(plan) if p["kind"] == "NodePool"}
    assert sorted(pools) == ["inferpack-cpu", "inferpack-cuda", "inferpack-neuron"]
    reqs = {r["key"]: r["values"] for r in pools["inferpack-cpu"]["spec"]["template"]["spec"]["requirements"]}
    assert reqs["node.kubernetes.io/instance-type"] == ["c7g.xlarge", "c7i.2xlarge"]
    assert reqs["kubernetes.io/arch"] == ["amd64", "arm64"]


def test_image_build_command_lines() -> None:
    cmd = build_commands(
        "podman",
        tag="r/inferpack:1",
        variant="cpu",
        platform="linux/arm64",
        base_image=None,
        context=Path("."),
    )
    assert cmd == [
        "podman", "build", "-f", "Containerfile", "-t", "r/inferpack:1", "--build-arg", "VARIANT=cpu",
        "--platform", "linux/arm64", ".",
    ]  # fmt: skip
    bud = build_commands(
        "buildah", tag="t", variant="cuda", platform=None, base_image="b:1", context=Path("/src")
    )
    assert bud[:2] == ["buildah", "bud"] and "BASE_IMAGE=b:1" in bud and bud[-1] == "/src"


def test_cli_render_writes_a_base_and_cluster_config(plan: Plan, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    save_plan(plan, plan_file)
    runner = CliRunner()
    out = tmp_path / "k8s"
    result = runner.invoke(
        app,
        [
            "k8s", "render", "--plan", str(plan_file), "--out", str(out), "--image", "reg/inferpack:1",
            "--namespace", "serving", "--role-arn", "arn:aws:iam::1:role/r", "--hpa", "--bench-workers", "3",
            "--bench-arg=--rate", "--bench-arg=20",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    docs = [d for f in sorted(out.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["parallelism"] == 3
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--rate", "20"]
    assert {
        d["metadata"].get("namespace") for d in docs if d["kind"] not in ("Namespace", "Kustomization")
    } == {"serving"}
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"reg/inferpack:1"}
    assert any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)

    bad = runner.invoke(
        app, ["k8s", "render", "--plan", str(plan_file), "--out", str(out), "--bench-command", "x"]
    )
    assert bad.exit_code != 0

    eks = runner.invoke(
        app, ["eks", "cluster-config", "--plan", str(plan_file), "--karpenter", str(tmp_path / "k.yaml")]
    )
    assert eks.exit_code == 0, eks.output
    assert yaml.safe_load(eks.stdout)["kind"] == "ClusterConfig"
    assert [p["kind"] for p in yaml.safe_load_all((tmp_path / "k.yaml").read_text())] == [
        "NodePool",
        "EC2NodeClass",
    ] * 3

    dry = runner.invoke(app, ["image", "build", "--builder", "docker", "--dry-run", "--tag", "x:1"])
    assert dry.exit_code == 0 and dry.stdout.startswith("docker build -f Containerfile -t x:1")


def test_cli_driver_refuses_a_folder_it_did_not_render(tmp_path: Path) -> None:
    proc = subprocess.run(
        [INFERPACK, "k8s", "apply", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "no base rendered by inferpack" in " ".join(proc.stderr.split())


def test_endpoints_file_round_trip(plan: Plan, tmp_path: Path) -> None:
    from inferpack.deploy.placement import plan_endpoints
    from inferpack.endpoints import ServerEndpoints, load_endpoints, save_endpoints
    from inferpack.errors import ConfigError, PlanError

    endpoints = plan_endpoints(plan, "ns")
    save_endpoints(endpoints, tmp_path / "e.json")
    assert load_endpoints(tmp_path / "e.json") == endpoints
    assert json.loads((tmp_path / "e.json").read_text())["format_version"] == 1
    with pytest.raises(PlanError, match="misses"):
        ServerEndpoints(servers={"c7i-0": "http://x:1"}).check_covers(plan)
    (tmp_path / "bad.json").write_text('{"format_version": 1, "servers": {"a": "ftp://x/"}}')
    with pytest.raises(ConfigError):
        load_endpoints(tmp_path / "bad.json")
