"""Which pods may land on which nodes: routers and load tests on the system group, each server group's
nodes tainted so that only its servers (and their image pre-pull) tolerate them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.eks import ClusterOptions, render_eksctl_config, render_karpenter_node_pools
from inferpack.deploy.options import RenderOptions
from inferpack.deploy.render import render_bench_job, render_idle_bench_job, render_manifests
from inferpack.errors import PlanError
from inferpack.plan import Plan, save_plan
from inferpack.settings import ServerSettings

Manifest = dict[str, Any]
SYSTEM = {"inferpack.dev/role": "system", "kubernetes.io/arch": "amd64"}


def _pods(plan: Plan, options: RenderOptions) -> list[Manifest]:
    objects = [*render_manifests(plan, ServerSettings(), options)]
    objects += [render_bench_job(options), render_idle_bench_job(options)]
    return [m for m in objects if m["kind"] in ("Deployment", "Job", "DaemonSet")]


def _component(workload: Manifest) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def _tolerates(spec: Manifest, taint: Manifest) -> bool:
    for tol in spec.get("tolerations", []):
        if tol["key"] != taint["key"] or tol.get("effect", taint["effect"]) != taint["effect"]:
            continue
        if tol.get("operator") == "Exists" or tol.get("value") == taint["value"]:
            return True
    return False


def _group_taints(plan: Plan) -> dict[str, list[Manifest]]:
    """Instance type -> the taints of its eksctl node group."""
    config = render_eksctl_config(plan)
    return {
        g["instanceType"]: g.get("taints", []) for g in config["managedNodeGroups"] if g["name"] != "system"
    }


def test_router_and_bench_pods_select_the_system_group(plan: Plan) -> None:
    for workload in _pods(plan, RenderOptions()):
        if _component(workload) in ("router", "bench"):
            assert workload["spec"]["template"]["spec"]["nodeSelector"] == SYSTEM
    # a bench node selector moves the load tests only; the router stays on the system group
    options = RenderOptions(bench_node_selector={"inferpack.dev/role": "bench"})
    for workload in _pods(plan, options):
        expected = {"router": SYSTEM, "bench": {"inferpack.dev/role": "bench"}}.get(_component(workload))
        if expected:
            assert workload["spec"]["template"]["spec"]["nodeSelector"] == expected
    arm = RenderOptions(system_node_selector={"inferpack.dev/role": "system", "kubernetes.io/arch": "arm64"})
    routers = [w for w in _pods(plan, arm) if _component(w) == "router"]
    assert routers[0]["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"] == "arm64"


def test_every_server_group_is_tainted_and_only_servers_tolerate_it(plan: Plan) -> None:
    taints = _group_taints(plan)
    group_of = {g.name: g for g in plan.groups}
    for workload in _pods(plan, RenderOptions()):
        spec = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        component = _component(workload)
        if component == "server":
            (taint,) = taints[group_of[labels["inferpack.dev/group"]].instance_type]
        elif (
            component == "prepull"
        ):  # pulls the image on the nodes of its instance type, so it must land there
            (taint,) = taints[workload["metadata"]["annotations"]["inferpack.dev/instance-type"]]
        else:
            assert "tolerations" not in spec, workload["metadata"]["name"]
            assert not any(_tolerates(spec, t) for ts in taints.values() for t in ts)
            continue
        # exactly its group's taint, nothing broader (CPU groups share one, kept apart by instance type)
        assert spec["tolerations"] == [
            {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": "NoSchedule"}
        ]
        assert _tolerates(spec, taint)
    assert all(len(t) == 1 for t in taints.values())


def test_karpenter_pools_carry_the_same_taints(plan: Plan) -> None:
    by_type = _group_taints(plan)
    for pool in render_karpenter_node_pools(plan):
        if pool["kind"] != "NodePool":
            continue
        spec = pool["spec"]["template"]["spec"]
        types = spec["requirements"][0]["values"]
        for instance_type in types:
            assert spec["taints"] == by_type[instance_type]


def test_cli_system_node_selector(plan: Plan, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    save_plan(plan, plan_file)
    for flags, expected in (
        ([], SYSTEM),
        (["--system-node-selector", "pool=sys", "--system-node-selector", "kubernetes.io/arch=arm64"],
         {"pool": "sys", "kubernetes.io/arch": "arm64"}),
        (["--system-node-selector", "none"], None),
    ):  # fmt: skip
        out = tmp_path / f"k8s{len(flags)}"
        result = CliRunner().invoke(
            app, ["k8s", "render", "--plan", str(plan_file), "--out", str(out), *flags]
        )
        assert result.exit_code == 0, result.output
        router = (out / "router.yaml").read_text()
        if expected is None:
            assert "nodeSelector" not in router
        else:
            for key, value in expected.items():
                assert f"{key}: {value}" in router


def test_cache_cap_and_disk_request_follow_the_plan(plan: Plan) -> None:
    """The S3 cache is capped by the server itself (no emptyDir sizeLimit, which evicts the pod), and the
    pod requests the disk the cap needs plus scratch room."""
    for options, cap in ((RenderOptions(), None), (RenderOptions(model_cache_size_mb=5000), 5000)):
        servers = [w for w in _pods(plan, options) if _component(w) == "server"]
        assert servers
        for workload in servers:
            spec = workload["spec"]["template"]["spec"]
            group = next(g for g in plan.groups if g.name == spec_group(workload))
            expected = cap or 2 * group.resources.memory_mb
            container = spec["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["INFERPACK_S3_CACHE_MAX_MB"] == str(expected)
            assert container["resources"]["requests"]["ephemeral-storage"] == f"{expected + 1024}Mi"
            assert "ephemeral-storage" not in container["resources"]["limits"]
            (cache,) = [v for v in spec["volumes"] if v["name"] == "model-cache"]
            assert cache == {"name": "model-cache", "emptyDir": {}}


def spec_group(workload: Manifest) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"]["inferpack.dev/group"])


def test_karpenter_limits_and_node_classes_follow_the_plan(plan: Plan) -> None:
    sizes = {
        "c7i.2xlarge": (8, 16384),
        "c7g.xlarge": (4, 8192),
        "g5.xlarge": (4, 16384),
        "inf2.xlarge": (4, 16384),
    }
    objects = render_karpenter_node_pools(plan, ClusterOptions(name="prod", headroom=1), sizes)
    pools = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NodePool"}
    classes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "EC2NodeClass"}
    # cpu pool: 2 c7i + 2 c7g servers, one spare node per type
    assert pools["inferpack-cpu"]["spec"]["limits"] == {
        "cpu": str(3 * 8 + 3 * 4),
        "memory": f"{3 * 16384 + 3 * 8192}Mi",
    }
    for target, pool in pools.items():
        ref = pool["spec"]["template"]["spec"]["nodeClassRef"]
        assert ref == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": target}
        node_class = classes[target]
        assert node_class["apiVersion"] == "karpenter.k8s.aws/v1"
        assert node_class["spec"]["role"] == "KarpenterNodeRole-prod"
        assert node_class["spec"]["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
        assert node_class["spec"]["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "prod"}}]
        volume = node_class["spec"]["blockDeviceMappings"][0]["ebs"]["volumeSize"]
        groups = [g for g in plan.groups if g.target == target.removeprefix("inferpack-")]
        # the root volume holds the largest server's cache cap and scratch, plus OS and images
        need = max(2 * g.resources.memory_mb + 1024 for g in groups)
        assert int(volume.removesuffix("Gi")) * 1024 >= need + 60 * 1024
    eksctl = render_eksctl_config(plan, ClusterOptions(cache_size_mb=50_000))
    for ng in eksctl["managedNodeGroups"]:
        if ng["name"] != "system":
            assert ng["volumeSize"] == math.ceil((50_000 + 1024) / 1024) + 60
    # a type of unknown size: no limits rather than wrong ones
    unknown = render_karpenter_node_pools(plan, None, {})
    assert all("limits" not in o["spec"] for o in unknown if o["kind"] == "NodePool")


def test_system_group_is_sized_from_what_it_must_hold(plan: Plan) -> None:
    # a node that takes three 1-CPU pods (the router's and the load-test workers' default requests)
    share = (3.67, 13_000.0)

    def system(**kw: Any) -> Manifest:
        config = render_eksctl_config(plan, ClusterOptions(system_node_share=share, **kw))
        return next(g for g in config["managedNodeGroups"] if g["name"] == "system")

    assert system()["desiredCapacity"] == 2  # 2 routers + 4 workers + add-ons: two nodes
    big = system(router_replicas=10, bench_workers=8)  # 18 one-CPU pods, three per node
    assert big["desiredCapacity"] == big["minSize"] == 6
    assert big["maxSize"] == 6 + 1 + 2
    # load tests on their own group: the system group holds the routers and add-ons only
    assert (
        system(router_replicas=10, bench_workers=8, bench_instance_type="c7i.4xlarge")["desiredCapacity"] == 4
    )
    # memory can be the binding constraint too
    assert system(bench_workers=6, bench_memory_mb=6000)["desiredCapacity"] == 3
    assert system(system_nodes=7)["desiredCapacity"] == 7
    with pytest.raises(PlanError):
        system(router_cpu=4.0)


def test_cluster_config_cli_sizes_the_system_group_from_the_catalog(plan: Plan, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    save_plan(plan, plan_file)
    args = [
        "eks",
        "cluster-config",
        "--plan",
        str(plan_file),
        "--router-replicas",
        "10",
        "--bench-workers",
        "8",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    groups = {g["name"]: g for g in yaml.safe_load(result.stdout)["managedNodeGroups"]}
    assert groups["system"]["instanceType"] == "m6i.xlarge"
    assert groups["system"]["desiredCapacity"] == 6
