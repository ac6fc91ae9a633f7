"""Every rendered server of every catalog instance type fits its EKS node.

Server pods asked for the instance's whole vCPUs and memory (`cpu: "4"`, `memory: 8192Mi` on a c7g.xlarge,
whose allocatable is ~3.9 CPU and ~6.4 GiB): they never scheduled. Plans now ask for the node's allocatable
minus the DaemonSet allowance (planner/allocatable.py), and the manifests render that.
"""

from __future__ import annotations

from typing import Any

import pytest

from inferpack.deploy.render import render_manifests
from inferpack.errors import PlanError
from inferpack.plan import Plan, ServerGroup, ServerPlan
from inferpack.planner.allocatable import DAEMONSET_CPU, DAEMONSET_MEMORY_MB, node_allocatable
from inferpack.planner.catalog import InstanceType, load_catalog
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import load_profiles
from inferpack.planner.solve import group_resources, solve, to_plan
from inferpack.settings import ServerSettings

CATALOG = load_catalog()
PROFILES = load_profiles()


def cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> float:
    assert quantity.endswith("Mi"), quantity
    return float(quantity[:-2])


def plan_on(inst: InstanceType) -> Plan:
    """A real plan on this type alone, or (where no model class can run on it at the objective, e.g. a
    1-vCPU node left with 0.69 cores) a group with the resources the planner would give it."""
    options = PlanOptions(instance_types=[inst.name], slo_p90_ms=5000)
    try:
        problem = build_problem(
            [ModelDemand(f"m{i}", 100.0, 0.1) for i in range(3)], CATALOG, PROFILES, options
        )
        return to_plan(problem, solve(problem, method="heuristic"), options)
    except PlanError:
        group = ServerGroup(
            name="g",
            instance_type=inst.name,
            target=inst.target,
            architecture=inst.architecture,
            resources=group_resources(inst, options),
            servers=[ServerPlan(name="g-0", models=["m0"])],
        )
        return Plan(created_by="test", groups=[group])


@pytest.mark.parametrize("name", CATALOG.names())
def test_every_rendered_server_fits_its_node(name: str) -> None:
    inst = CATALOG.get(name)
    node = node_allocatable(inst)
    manifests = render_manifests(plan_on(inst), ServerSettings())
    servers: list[dict[str, Any]] = [
        m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"].startswith("srv-")
    ]
    assert servers
    for deployment in servers:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == name
        (container,) = pod["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        # Guaranteed QoS, as before (disk is requested only: see test_render)
        assert {k: v for k, v in requests.items() if k != "ephemeral-storage"} == limits
        # one server per node, next to the DaemonSets the allowance covers
        assert cores(requests["cpu"]) + DAEMONSET_CPU <= node.cpu + 1e-9, requests
        assert mebibytes(requests["memory"]) + DAEMONSET_MEMORY_MB <= node.memory_mb, requests
        assert cores(requests["cpu"]) < inst.vcpus and mebibytes(requests["memory"]) < inst.memory_mb


# What the EKS default add-ons' DaemonSets request per node: aws-node (VPC CNI) 25m CPU, kube-proxy 100m CPU;
# neither requests memory.
EKS_DAEMONSETS = {"cpu": 0.125, "memory": 0.0}


def test_the_prepull_daemonset_is_within_the_allowance() -> None:
    """inferpack's own DaemonSet runs on every server node: the allowance covers it and the EKS add-ons (a
    pod requests the larger of its init containers' requests and the sum of its containers')."""
    manifests = render_manifests(plan_on(CATALOG.get("c7g.xlarge")), ServerSettings())
    (daemonset,) = [m for m in manifests if m["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    for resource, parse, allowance in (
        ("cpu", cores, DAEMONSET_CPU),
        ("memory", mebibytes, DAEMONSET_MEMORY_MB),
    ):
        init = max(parse(c["resources"]["requests"][resource]) for c in pod["initContainers"])
        running = sum(parse(c["resources"]["requests"][resource]) for c in pod["containers"])
        assert max(init, running) + EKS_DAEMONSETS[resource] <= allowance, resource
