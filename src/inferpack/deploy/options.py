"""What a render needs besides the plan and the server settings: image, namespace, sizes, switches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from inferpack import __version__

PART_OF = "inferpack"
DEFAULT_PORT = 8080
CONFIG_MOUNT = "/etc/inferpack"
CACHE_MOUNT = "/var/cache/inferpack"
MODELS_MOUNT = "/models"
# Labels every object carries; selectors use `component` plus the server name.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_SERVER = "inferpack.dev/server"
LABEL_GROUP = "inferpack.dev/group"
ANNOTATION_MODELS = "inferpack.dev/models"
ANNOTATION_ROLE_ARN = "eks.amazonaws.com/role-arn"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
ARCH_LABEL = "kubernetes.io/arch"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Node roles: `eks cluster-config` labels its node groups with them; the system group holds the router,
# the load tests and the cluster add-ons, server groups hold servers only (tainted, see servers.group_taint).
ROLE_LABEL = "inferpack.dev/role"
SYSTEM_NODE_SELECTOR = {ROLE_LABEL: "system", ARCH_LABEL: "amd64"}


@dataclass(frozen=True)
class HpaOptions:
    """Autoscale the router on CPU utilisation (the servers are sized by the plan, not autoscaled)."""

    min_replicas: int = 2
    max_replicas: int = 10
    cpu_utilization: int = 70


@dataclass(frozen=True)
class RenderOptions:
    """Everything about a render that is not in the plan or the server settings.

    `repository` overrides the plan's and the settings' repository; an `s3://` repository is pulled by each
    server into an emptyDir cache, anything else is read from the PersistentVolumeClaim `repository_pvc`
    mounted read-only at /models (the path is then taken relative to the volume's root).
    """

    image: str = f"inferpack:{__version__}"
    cuda_image: str | None = None
    neuron_image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    namespace: str = "inferpack"
    repository: str | None = None
    repository_pvc: str = "inferpack-models"
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    role_arn: str | None = None
    model_cache_size_mb: int | None = None
    router_replicas: int = 2
    router_cpu: str = "1"
    router_memory: str = "512Mi"
    router_command: tuple[str, ...] | None = None
    router_hpa: HpaOptions | None = None
    server_max_unavailable: int = 1
    pre_stop_seconds: int = 5
    prepull: bool = True
    pause_image: str = "registry.k8s.io/pause:3.10"
    auth_secret: str | None = None
    # Secret (key `admin-token`) that switches the repository load/unload API on for servers; None: off.
    admin_secret: str | None = None
    metrics_namespace: str | None = None
    bench_workers: int = 4
    bench_command: tuple[str, ...] | None = None
    bench_args: tuple[str, ...] = ("--duration", "60")
    bench_cpu: str = "1"
    bench_memory: str = "1Gi"
    # Load tests in their own namespace (None: `namespace`) and on their own nodes (empty: anywhere).
    bench_namespace: str | None = None
    bench_node_selector: dict[str, str] = field(default_factory=dict)
    # Where the router (and the load tests, without `bench_node_selector`) run: the system node group and
    # its architecture (a single-arch image fails on the other). Empty: anywhere untainted.
    system_node_selector: dict[str, str] = field(default_factory=lambda: dict(SYSTEM_NODE_SELECTOR))
    # How long the idle test pod (`inferpack k8s bench --idle`) waits before it ends by itself.
    bench_idle_seconds: int = 86400
    extra_labels: dict[str, str] = field(default_factory=dict)


def bench_namespace(options: RenderOptions) -> str:
    """The namespace of the load-test pods: their own, or the servers'."""
    return options.bench_namespace or options.namespace


def image_for(target: str, options: RenderOptions) -> str:
    """The image of a target: servers on GPUs need the CUDA build of torch, Neuron the Neuron SDK's;
    CPU servers (x86_64 and Graviton, through a multi-arch tag), the router and load tests use `image`."""
    if target == "cuda" and options.cuda_image:
        return options.cuda_image
    if target == "neuron" and options.neuron_image:
        return options.neuron_image
    return options.image


def k8s_name(prefix: str, name: str) -> str:
    """`prefix-name` as a DNS-1035 label (<= 63 chars, starts with a letter).

    Plan names are DNS-1123 labels that may start with a digit and may be 63 long, so a prefix is needed to
    make Service names valid; when the result is too long, the tail is replaced by a short hash so two
    long names never collide.
    """
    full = f"{prefix}-{name}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = full[: 63 - 9].rstrip("-")
    return f"{head}-{digest}"
