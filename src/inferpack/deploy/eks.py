"""Pure rendering of the cluster a plan needs: an eksctl ClusterConfig with one managed node group per
instance type of the plan, and (optionally) Karpenter NodePools for the same mix.

Sizes come from the plan: a group of N servers needs N nodes (one server pod per node, as planned), so the
node group's desired and minimum size are N, and the maximum leaves `headroom` nodes for rollouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inferpack.deploy.options import k8s_name
from inferpack.deploy.servers import group_taint
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
    system_instance_type: str = "m7i.large"
    system_nodes: int = 2
    s3_policy_arn: str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
    namespace: str = "inferpack"
    node_class: str = "inferpack"
    # Load tests on nodes of their own (the reference's test_instance_type); None: on the system nodes.
    bench_instance_type: str | None = None
    bench_nodes: int = 1


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


def render_eksctl_config(plan: Plan, options: ClusterOptions | None = None) -> Manifest:
    """An eksctl ClusterConfig (eksctl.io/v1alpha5): OIDC + the servers' IRSA role, one node group per type.

    AL2023 is the AMI family throughout; eksctl picks its NVIDIA or Neuron variant for GPU and Inferentia
    instance types. A system node group runs the router, CoreDNS and the load-test pods, unless
    `bench_instance_type` gives the load tests a node group of their own.
    """
    options = options or ClusterOptions()
    groups: list[Manifest] = [
        {
            "name": "system",
            "instanceType": options.system_instance_type,
            "amiFamily": "AmazonLinux2023",
            "desiredCapacity": options.system_nodes,
            "minSize": options.system_nodes,
            "maxSize": options.system_nodes + options.headroom + 2,
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
            "volumeSize": 100,
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


def render_karpenter_node_pools(plan: Plan, options: ClusterOptions | None = None) -> list[Manifest]:
    """Karpenter (karpenter.sh/v1) NodePools, one per target, limited to the plan's instance types.

    They reference an EC2NodeClass named `node_class` that the platform team owns (AMI, subnets, role).
    """
    options = options or ClusterOptions()
    by_target: dict[str, list[ServerGroup]] = {}
    for instance_type, (group, _count) in sorted(_nodes_by_type(plan).items()):
        del instance_type
        by_target.setdefault(group.target, []).append(group)
    pools = []
    for target, groups in sorted(by_target.items()):
        types = sorted({g.instance_type for g in groups})
        arches = sorted({"arm64" if g.architecture == "arm64" else "amd64" for g in groups})
        template: Manifest = {
            "metadata": {"labels": {"inferpack.dev/role": "server", "inferpack.dev/target": target}},
            "spec": {
                "nodeClassRef": {
                    "group": "karpenter.k8s.aws",
                    "kind": "EC2NodeClass",
                    "name": options.node_class,
                },
                "requirements": [
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": types},
                    {"key": "kubernetes.io/arch", "operator": "In", "values": arches},
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                ],
            },
        }
        template["spec"]["taints"] = [group_taint(groups[0])]
        pools.append(
            {
                "apiVersion": "karpenter.sh/v1",
                "kind": "NodePool",
                "metadata": {"name": f"inferpack-{target}"},
                "spec": {
                    "template": template,
                    # Servers hold loaded models; consolidating them away costs cold starts.
                    "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m"},
                },
            }
        )
    return pools
