"""What an EKS node can give one inferpack server: the instance minus what Kubernetes keeps.

A server pod's requests must fit the node's *allocatable* resources, not the instance's size, or it stays
Pending. Per instance type, for the EKS-optimised AMIs (Amazon Linux 2 `bootstrap.sh`, the same figures in
AL2023's `nodeadm`; https://github.com/awslabs/amazon-eks-ami, read 2026-12):

- kube-reserved memory = 255 MiB + 11 MiB x max pods, where max pods comes from the AMI's
  `eni-max-pods.txt` (ENIs x (IPv4 addresses per ENI - 1) + 2); the catalog stores it per type
  (`max_pods`, with its source);
- kube-reserved CPU = 6% of the first core + 1% of the second + 0.5% of the third and fourth + 0.25% of
  every core above four (the AMI computes it in whole millicores, as here);
- eviction threshold (evictionHard memory.available) = 100 MiB;
- no system-reserved (the AMI sets none).

Two figures are ours, not the AMI's:
- the instance's memory as the node sees it is below the EC2 figure (firmware, kernel): Karpenter's
  default `vmMemoryOverheadPercent`, 7.5%, is taken off the catalog's `memory_mb` first;
- a DaemonSet allowance per node (the VPC CNI `aws-node` 25m, `kube-proxy` 100m, inferpack's image
  pre-pull DaemonSet 100m CPU / 256 MiB, and room for a log or metrics agent): 250m CPU, 384 MiB by
  default (`PlanOptions.daemonset_cpu` / `daemonset_memory_mb`).

A catalog entry without `max_pods` (a custom type, `local`) is a plain machine: the whole instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inferpack.planner.catalog import InstanceType

KUBE_RESERVED_BASE_MB = 255
KUBE_RESERVED_PER_POD_MB = 11
EVICTION_HARD_MB = 100
VM_MEMORY_OVERHEAD = 0.075
DAEMONSET_CPU = 0.25
DAEMONSET_MEMORY_MB = 384.0
# (from millicores, to millicores, reserved share in hundredths of a percent), as the AMI's bootstrap.sh
_CPU_RANGES = ((0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, None, 25))


@dataclass(frozen=True)
class NodeShare:
    """CPU cores and MiB of memory: a node's allocatable, or what one server may request of it."""

    cpu: float
    memory_mb: float


def kube_reserved_cpu_millicores(vcpus: int) -> int:
    """The EKS AMI's kube-reserved CPU for an instance of `vcpus` cores, in millicores."""
    total = vcpus * 1000
    reserved = 0
    for start, end, hundredths in _CPU_RANGES:
        if total > start:
            reserved += (min(total, end or total) - start) * hundredths // 100 // 100
    return reserved


def kube_reserved_memory_mb(max_pods: int) -> int:
    """The EKS AMI's kube-reserved memory (MiB) for a node that runs at most `max_pods` pods."""
    return KUBE_RESERVED_BASE_MB + KUBE_RESERVED_PER_POD_MB * max_pods


def node_allocatable(inst: InstanceType) -> NodeShare:
    """The node's allocatable CPU and memory (what `kubectl describe node` would show), or the whole
    instance for a type without `max_pods`."""
    if inst.max_pods is None:
        return NodeShare(float(inst.vcpus), float(inst.memory_mb))
    cpu = (inst.vcpus * 1000 - kube_reserved_cpu_millicores(inst.vcpus)) / 1000
    capacity_mb = inst.memory_mb * (1 - VM_MEMORY_OVERHEAD)
    memory = capacity_mb - kube_reserved_memory_mb(inst.max_pods) - EVICTION_HARD_MB
    return NodeShare(cpu, memory)


def server_share(
    inst: InstanceType,
    *,
    daemonset_cpu: float = DAEMONSET_CPU,
    daemonset_memory_mb: float = DAEMONSET_MEMORY_MB,
) -> NodeShare:
    """What one server pod (one per node) may request: allocatable minus the DaemonSet allowance, rounded
    down to whole millicores and MiB (a plain machine: the whole instance)."""
    alloc = node_allocatable(inst)
    if inst.max_pods is None:
        return alloc
    cpu = math.floor((alloc.cpu - daemonset_cpu) * 1000 + 1e-6) / 1000
    memory = math.floor(alloc.memory_mb - daemonset_memory_mb)
    return NodeShare(max(cpu, 0.0), float(max(memory, 0)))
