"""EKS allocatable per instance type, against the EKS AMI's own formulas and hand-worked figures.

Source: awslabs/amazon-eks-ami, templates/al2/runtime/bootstrap.sh (get_cpu_millicores_to_reserve,
get_memory_mebibytes_to_reserve, evictionHard) and templates/shared/runtime/eni-max-pods.txt.
"""

from __future__ import annotations

import pytest

from inferpack.planner.allocatable import (
    DAEMONSET_CPU,
    DAEMONSET_MEMORY_MB,
    kube_reserved_cpu_millicores,
    kube_reserved_memory_mb,
    node_allocatable,
    server_share,
)
from inferpack.planner.catalog import InstanceType, load_catalog
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import load_profiles
from inferpack.planner.solve import solve, to_plan

CATALOG = load_catalog()


@pytest.mark.parametrize(
    ("vcpus", "millicores"),
    # 6% of core 1, 1% of core 2, 0.5% of cores 3-4, 0.25% above: integer millicores as bootstrap.sh
    [(1, 60), (2, 70), (4, 80), (8, 90), (16, 110), (96, 310), (192, 550)],
)
def test_kube_reserved_cpu_follows_the_ami(vcpus: int, millicores: int) -> None:
    assert kube_reserved_cpu_millicores(vcpus) == millicores


def test_kube_reserved_memory_follows_the_ami() -> None:
    assert [kube_reserved_memory_mb(p) for p in (8, 29, 58, 234, 737)] == [343, 574, 893, 2829, 8362]


def test_c7g_xlarge_worked_by_hand() -> None:
    """The issue's example: 4 vCPUs, 8 GiB, max pods 58."""
    inst = CATALOG.get("c7g.xlarge")
    assert inst.max_pods == 58
    node = node_allocatable(inst)
    assert node.cpu == pytest.approx(4 - 0.080)
    assert node.memory_mb == pytest.approx(8192 * 0.925 - (255 + 11 * 58) - 100)  # 6584.6 MiB
    server = server_share(inst)
    assert (server.cpu, server.memory_mb) == (3.67, 6200.0)


def test_every_catalog_type_has_max_pods_and_a_server_that_fits() -> None:
    for inst in CATALOG.instances:
        assert inst.max_pods is not None, inst.name
        node, server = node_allocatable(inst), server_share(inst)
        assert server.cpu + DAEMONSET_CPU <= node.cpu + 1e-9 < inst.vcpus, inst.name
        assert server.memory_mb + DAEMONSET_MEMORY_MB <= node.memory_mb < inst.memory_mb, inst.name


def test_a_type_without_max_pods_is_a_whole_machine() -> None:
    local = InstanceType(name="local", vcpus=2, memory_mb=24576, price_per_hour=0)
    assert server_share(local) == node_allocatable(local)
    assert (server_share(local).cpu, server_share(local).memory_mb) == (2.0, 24576.0)


def test_plans_ask_for_the_server_share_and_pack_within_it() -> None:
    """The plan's resources are what the node can allocate, and the packing fills at most 90% of that."""
    profiles = load_profiles()
    models = [ModelDemand(f"m{i}", 420.0, 1.0) for i in range(60)]
    options = PlanOptions(instance_types=["c7g.xlarge"], slo_p90_ms=1000)
    problem = build_problem(models, CATALOG, profiles, options)
    plan = to_plan(problem, solve(problem, method="heuristic"), options)
    (group,) = plan.groups
    assert (group.resources.cpu, group.resources.memory_mb) == (3.67, 6200)
    prof = profiles.lookup("bert-base", "c7g.xlarge")
    assert prof is not None
    reference = profiles.classes["bert-base"].reference_memory_mb
    for server in group.servers:
        held = sum(420.0 / reference * prof.resident_mb for _ in server.models) + prof.server_overhead_mb
        assert held <= 0.9 * 6200 + 1e-6
