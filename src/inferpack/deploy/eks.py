"""Pure rendering of the cluster a plan needs: an eksctl ClusterConfig with one managed node group per
instance type of the plan, and (optionally) Karpenter NodePools for the same mix.

Sizes come from the plan: a group of N servers needs N nodes (one server pod per node, as planned), so the
node group's desired and minimum size are N, and the maximum leaves `headroom` nodes for rollouts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inferpack.deploy.options import k8s_name
from inferpack.deploy.servers import SCRATCH_MB, group_taint
from inferpack.errors import PlanError
from inferpack.plan import Plan, ServerGroup

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ClusterOptions:
    """Cluster-level choices that are not in the plan."""

    name: str = "inferpack"
    region: str = "us-east-1"
    kubernetes_version: str = "1.33"
    zones: tuple[str, ...] = ()
    headroom: int = 1
    # In the instance catalog (its allocatable sizes the group); 4 vCPUs take three 1-CPU router/bench pods.
    system_instance_type: str = "m6i.xlarge"
    # None: sized from what the system group must hold (`system_nodes_needed`); a number: exactly that.
    system_nodes: int | None = None
    # What the system node group holds, as `k8s render` is run: the router at its most replicas (HPA max)
    # and, without a bench node group, the load-test workers; and what one system node can give them
    # (allocatable less the DaemonSet allowance: CPU cores, MiB), None when the type is not known.
    router_replicas: int = 2
    router_cpu: float = 1.0
    router_memory_mb: int = 512
    bench_workers: int = 4
    bench_cpu: float = 1.0
    bench_memory_mb: int = 1024
    system_node_share: tuple[float, float] | None = None
    s3_policy_arn: str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
    namespace: str = "inferpack"
    node_class: str = "inferpack"
    # Load tests on nodes of their own (the reference's test_instance_type); None: on the system nodes.
    bench_instance_type: str | None = None
    bench_nodes: int = 1
    # The servers' S3 cache cap (MiB) as `k8s render --cache-size-mb` sets it; None: twice their memory.
    cache_size_mb: int | None = None
    # IAM role of Karpenter's nodes (the EC2NodeClass's `role`); None: KarpenterNodeRole-<name>.
    node_role: str | None = None


# Root volume room besides the model cache: the OS, the images (a CUDA or Neuron image is ~10 GiB) and logs.
ROOT_VOLUME_BASE_GIB = 60


def node_volume_gib(group: ServerGroup, options: ClusterOptions) -> int:
    """Root volume of a server node: the server's cache cap and scratch (what its pod requests as
    ephemeral-storage) plus the base. Karpenter's default of 20 GiB holds no model cache at all."""
    cache_mb = options.cache_size_mb or 2 * group.resources.memory_mb
    return math.ceil((cache_mb + SCRATCH_MB) / 1024) + ROOT_VOLUME_BASE_GIB


def _nodes_by_type(plan: Plan) -> dict[str, tuple[ServerGroup, int]]:
    """Instance type -> (its first group, servers of that type across groups)."""
    out: dict[str, tuple[ServerGroup, int]] = {}
    for group in plan.groups:
        if group.instance_type == "local":
            continue
        first, count = out.get(group.instance_type, (group, 0))
        out[group.instance_type] = (first, count + len(group.servers))
    return out


def cluster_addons() -> list[Manifest]:
    """EKS add-ons: the VPC CNI with network-policy enforcement on (without it the servers' NetworkPolicy
    is accepted and ignored) and metrics-server (the router's HPA reads pod CPU from it)."""
    return [
        {
            "name": "vpc-cni",
            "version": "latest",
            "configurationValues": json.dumps({"enableNetworkPolicy": "true"}),
        },
        {"name": "metrics-server", "version": "latest"},
    ]


# Cluster add-on pods on the system group: CoreDNS (2 x 100m / 70 MiB) and metrics-server (100m / 200 MiB).
ADDON_PODS: tuple[tuple[float, float], ...] = ((0.1, 70.0), (0.1, 70.0), (0.1, 200.0))
MIN_SYSTEM_NODES = 2  # one per zone for the router's replicas and CoreDNS, at the least


def system_pods(options: ClusterOptions) -> list[tuple[float, float]]:
    """(CPU cores, MiB) of every pod the system group must hold at once."""
    pods = [(options.router_cpu, float(options.router_memory_mb))] * options.router_replicas
    if not options.bench_instance_type:
        pods += [(options.bench_cpu, float(options.bench_memory_mb))] * options.bench_workers
    return pods + list(ADDON_PODS)


def system_nodes_needed(options: ClusterOptions) -> int:
    """Nodes of the system group: `system_nodes` when given, else the nodes that first-fit-decreasing
    packs the system pods into (each node `system_node_share`), never fewer than MIN_SYSTEM_NODES."""
    if options.system_nodes is not None:
        return options.system_nodes
    if options.system_node_share is None:
        return MIN_SYSTEM_NODES
    cpu, memory = options.system_node_share
    free: list[list[float]] = []
    for pod_cpu, pod_mem in sorted(system_pods(options), reverse=True):
        if pod_cpu > cpu or pod_mem > memory:
            raise PlanError(
                f"a system pod ({pod_cpu} CPU, {pod_mem:.0f} MiB) does not fit a "
                f"{options.system_instance_type} node ({cpu:.2f} CPU, {memory:.0f} MiB free)",
                hint="choose a larger --system-instance-type or smaller router/bench requests",
            )
        for node in free:
            if node[0] >= pod_cpu - 1e-9 and node[1] >= pod_mem - 1e-9:
                node[0] -= pod_cpu
                node[1] -= pod_mem
                break
        else:
            free.append([cpu - pod_cpu, memory - pod_mem])
    return max(MIN_SYSTEM_NODES, len(free))


def render_eksctl_config(plan: Plan, options: ClusterOptions | None = None) -> Manifest:
    """An eksctl ClusterConfig (eksctl.io/v1alpha5): OIDC + the servers' IRSA role, one node group per type.

    AL2023 is the AMI family throughout; eksctl picks its NVIDIA or Neuron variant for GPU and Inferentia
    instance types. A system node group runs the router, CoreDNS and the load-test pods, unless
    `bench_instance_type` gives the load tests a node group of their own.
    """
    options = options or ClusterOptions()
    system_nodes = system_nodes_needed(options)
    groups: list[Manifest] = [
        {
            "name": "system",
            "instanceType": options.system_instance_type,
            "amiFamily": "AmazonLinux2023",
            "desiredCapacity": system_nodes,
            "minSize": system_nodes,
            "maxSize": system_nodes + options.headroom + 2,
            "labels": {"inferpack.dev/role": "system"},
        }
    ]
    for instance_type, (group, count) in sorted(_nodes_by_type(plan).items()):
        node_group: Manifest = {
            "name": k8s_name("ng", instance_type.replace(".", "-")),
            "instanceType": instance_type,
            "amiFamily": "AmazonLinux2023",
            "desiredCapacity": count,
            "minSize": count,
            "maxSize": count + options.headroom,
            "labels": {"inferpack.dev/role": "server", "inferpack.dev/target": group.target},
            "volumeSize": node_volume_gib(group, options),
            "privateNetworking": True,
            # only this group's servers (and their image pre-pull) tolerate it
            "taints": [group_taint(group)],
        }
        groups.append(node_group)
    if options.bench_instance_type:
        # Pods reach these nodes with `k8s render --bench-node-selector inferpack.dev/role=bench`.
        groups.append(
            {
                "name": "bench",
                "instanceType": options.bench_instance_type,
                "amiFamily": "AmazonLinux2023",
                "desiredCapacity": options.bench_nodes,
                "minSize": 0,
                "maxSize": options.bench_nodes,
                "labels": {"inferpack.dev/role": "bench"},
                "privateNetworking": True,
            }
        )
    config: Manifest = {
        "apiVersion": "eksctl.io/v1alpha5",
        "kind": "ClusterConfig",
        "metadata": {"name": options.name, "region": options.region, "version": options.kubernetes_version},
        "iam": {
            "withOIDC": True,
            "serviceAccounts": [
                {
                    "metadata": {"name": "inferpack", "namespace": options.namespace},
                    "attachPolicyARNs": [options.s3_policy_arn],
                    "roleOnly": True,
                }
            ],
        },
        "addons": cluster_addons(),
        "managedNodeGroups": groups,
    }
    if options.zones:
        config["availabilityZones"] = list(options.zones)
    return config


def render_karpenter_node_pools(
    plan: Plan,
    options: ClusterOptions | None = None,
    instance_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> list[Manifest]:
    """Karpenter (karpenter.sh/v1) NodePools, one per target, limited to the plan's instance types, each
    with its EC2NodeClass (karpenter.k8s.aws/v1) `<node_class>-<target>`: AL2023, subnets and security
    groups tagged `karpenter.sh/discovery: <cluster>`, a root volume sized for the servers' cache.

    `instance_sizes` (type -> (vCPUs, memory MiB), from the catalog) gives each pool `limits`: the
    capacity of the plan's nodes plus `headroom` nodes per type, so a bad rollout cannot buy without
    bound. A pool with a type of unknown size gets no limits.
    """
    options = options or ClusterOptions()
    by_target: dict[str, list[tuple[ServerGroup, int]]] = {}
    for _instance_type, (group, count) in sorted(_nodes_by_type(plan).items()):
        by_target.setdefault(group.target, []).append((group, count))
    out: list[Manifest] = []
    for target, members in sorted(by_target.items()):
        groups = [g for g, _count in members]
        types = sorted({g.instance_type for g in groups})
        arches = sorted({"arm64" if g.architecture == "arm64" else "amd64" for g in groups})
        class_name = f"{options.node_class}-{target}"
        template: Manifest = {
            "metadata": {"labels": {"inferpack.dev/role": "server", "inferpack.dev/target": target}},
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": class_name},
                "requirements": [
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": types},
                    {"key": "kubernetes.io/arch", "operator": "In", "values": arches},
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                ],
                # only this target's servers (and their image pre-pull) tolerate it
                "taints": [group_taint(groups[0])],
            },
        }
        spec: Manifest = {
            "template": template,
            # Servers hold loaded models; consolidating them away costs cold starts.
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m"},
        }
        sizes = instance_sizes or {}
        if all(g.instance_type in sizes for g in groups):
            nodes = [(sizes[g.instance_type], count + options.headroom) for g, count in members]
            spec["limits"] = {
                "cpu": str(sum(vcpus * n for (vcpus, _mem), n in nodes)),
                "memory": f"{sum(mem * n for (_vcpus, mem), n in nodes)}Mi",
            }
        out.append(
            {
                "apiVersion": "karpenter.sh/v1",
                "kind": "NodePool",
                "metadata": {"name": f"inferpack-{target}"},
                "spec": spec,
            }
        )
        out.append(render_node_class(class_name, max(node_volume_gib(g, options) for g in groups), options))
    return out


def render_node_class(name: str, volume_gib: int, options: ClusterOptions) -> Manifest:
    """An EC2NodeClass: AL2023 (its GPU/Neuron variants are chosen per instance type), the cluster's
    discovery-tagged subnets and security groups, an encrypted gp3 root volume of `volume_gib`."""
    discovery = [{"tags": {"karpenter.sh/discovery": options.name}}]
    return {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": {"name": name},
        "spec": {
            "role": options.node_role or f"KarpenterNodeRole-{options.name}",
            "amiSelectorTerms": [{"alias": "al2023@latest"}],
            "subnetSelectorTerms": discovery,
            "securityGroupSelectorTerms": discovery,
            "blockDeviceMappings": [
                {
                    "deviceName": "/dev/xvda",
                    "ebs": {
                        "volumeSize": f"{volume_gib}Gi",
                        "volumeType": "gp3",
                        "encrypted": True,
                        "deleteOnTermination": True,
                    },
                }
            ],
        },
    }
