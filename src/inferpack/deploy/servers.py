"""Per-server manifests: one Deployment (one pod, on a node of the group's instance type) and one Service.

A plan server is one pod. Copies of a model live on different servers, so the spread constraints say
"keep me away from the servers that share a model with me", across zones first and hosts second.
"""

from __future__ import annotations

import math
from typing import Any

from inferpack.deploy.options import (
    ANNOTATION_MODELS,
    ARCH_LABEL,
    CACHE_MOUNT,
    CONFIG_MOUNT,
    DEFAULT_PORT,
    HOSTNAME_LABEL,
    INSTANCE_TYPE_LABEL,
    LABEL_COMPONENT,
    LABEL_GROUP,
    LABEL_SERVER,
    MODELS_MOUNT,
    ROLE_LABEL,
    ZONE_LABEL,
    RenderOptions,
    image_for,
    k8s_name,
)
from inferpack.errors import PlanError
from inferpack.plan import Plan, ServerGroup, ServerPlan
from inferpack.runtime.targets import target_device
from inferpack.settings import ServerSettings, env_overrides

Manifest = dict[str, Any]
ACCELERATOR_RESOURCE = {"cuda": "nvidia.com/gpu", "neuron": "aws.amazon.com/neuron"}
RUN_AS = 10001  # the non-root user the Containerfile creates
ADMIN_TOKEN_KEY = "admin-token"  # the key of the admin Secret (`--admin-secret`)
METRICS_TOKEN_KEY = "metrics-token"  # optional key of the auth Secret (`--auth-secret`), for Prometheus
# Only servers read S3: their account carries the IRSA role; router and load tests get one without it.
SERVER_SERVICE_ACCOUNT = "inferpack"
CLIENT_SERVICE_ACCOUNT = "inferpack-client"


def server_object_name(server_name: str) -> str:
    """Deployment and Service name of a plan server (also its in-cluster DNS name)."""
    return k8s_name("srv", server_name)


def server_url(server_name: str, namespace: str) -> str:
    """In-cluster base URL of a server's Service."""
    return f"http://{server_object_name(server_name)}.{namespace}.svc.cluster.local:{DEFAULT_PORT}"


def common_labels(component: str, options: RenderOptions) -> dict[str, str]:
    """Labels on every object of a component; `extra_labels` let a team add its own (cost centre...)."""
    return {
        "app.kubernetes.io/name": "inferpack",
        "app.kubernetes.io/part-of": "inferpack",
        LABEL_COMPONENT: component,
        **options.extra_labels,
    }


def pod_security_context() -> Manifest:
    """Non-root, fixed ids (the image's user), RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    """Read-only root filesystem, no privilege escalation, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def writable_env() -> list[Manifest]:
    """With a read-only root, HOME and library caches must point at the writable /tmp volume."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/mpl"},
    ]


def cpu_quantity(cores: float) -> str:
    """Cores as a Kubernetes quantity: whole cores plain, fractions in millicores."""
    milli = round(cores * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def server_resources(group: ServerGroup, ephemeral_mb: int | None = None) -> Manifest:
    """Requests = limits (Guaranteed QoS: latency does not depend on neighbours), plus accelerators.

    `ephemeral_mb` is requested only, never limited: a limit evicts the pod when the disk use passes it,
    while the server keeps its cache under its own cap."""
    res = group.resources
    amounts: dict[str, str] = {"cpu": cpu_quantity(res.cpu), "memory": f"{res.memory_mb}Mi"}
    if group.target in ACCELERATOR_RESOURCE:
        if res.accelerators < 1:
            raise PlanError(
                f"group {group.name!r} targets {group.target} but asks for no accelerators",
                hint="set resources.accelerators >= 1 for cuda/neuron groups",
            )
        amounts[ACCELERATOR_RESOURCE[group.target]] = str(res.accelerators)
    requests = dict(amounts)
    if ephemeral_mb is not None:
        requests["ephemeral-storage"] = f"{ephemeral_mb}Mi"
    return {"requests": requests, "limits": dict(amounts)}


def node_selector(group: ServerGroup) -> dict[str, str]:
    """Pin to the plan's instance type and CPU architecture ("local" groups: architecture only)."""
    selector = {ARCH_LABEL: "arm64" if group.architecture == "arm64" else "amd64"}
    if group.instance_type != "local":
        selector[INSTANCE_TYPE_LABEL] = group.instance_type
    return selector


def group_taint(group: ServerGroup) -> Manifest:
    """The one taint on a server group's nodes (managed node group or Karpenter pool), which keeps every
    pod but the group's servers (and their image pre-pull) off them.

    CPU groups: `inferpack.dev/role=server`. Accelerator groups: the device resource name
    (`nvidia.com/gpu`, `aws.amazon.com/neuron`), which the vendors' device-plugin DaemonSets already
    tolerate; a second taint of our own would keep those plugins, and so the device, off the node.
    """
    if group.target in ACCELERATOR_RESOURCE:
        return {"key": ACCELERATOR_RESOURCE[group.target], "value": "true", "effect": "NoSchedule"}
    return {"key": ROLE_LABEL, "value": "server", "effect": "NoSchedule"}


def tolerations(group: ServerGroup) -> list[Manifest]:
    """Tolerate exactly the group's taint (key, value and effect), nothing broader."""
    taint = group_taint(group)
    return [{"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": taint["effect"]}]


def model_peers(plan: Plan) -> dict[str, list[str]]:
    """Server name -> sorted names of the servers sharing at least one model with it (itself included)."""
    peers: dict[str, set[str]] = {s.name: {s.name} for s in plan.servers()}
    for holders in plan.placement().values():
        for name in holders:
            peers[name].update(holders)
    return {name: sorted(group) for name, group in peers.items()}


def spread_constraints(peers: list[str]) -> list[Manifest]:
    """Spread the servers that hold copies of the same models across zones, then hosts.

    ScheduleAnyway: a cluster with fewer zones than copies must still run every server.
    """
    selector = {"matchExpressions": [{"key": LABEL_SERVER, "operator": "In", "values": peers}]}
    return [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector}
        for key in (ZONE_LABEL, HOSTNAME_LABEL)
    ]


# Server settings a pod gets another way, or that mean nothing in a pod: the command line sets the
# repository, models, address and device; `auth_env` the auth section (Secrets, never literal tokens); an
# access statistics file named on the rendering machine is no path in a pod (the default lies in HOME); a pod
# holds one server, so there is no process to share packed weights' files with (rendered off, below).
POD_SKIPPED = (
    "repository", "models", "host", "port", "device", "auth", "access_stats_file",
    "share_packed_weights", "packed_weights_dir", "packed_weights_max_bytes",
)  # fmt: skip


def server_env(settings: ServerSettings, group: ServerGroup, options: RenderOptions) -> list[Manifest]:
    """The server's settings as INFERPACK_SERVER__* overrides (the server reads them at start).

    `settings` are what the plan's server runs (`plan.served_settings`: the configuration, the group's
    execution as costed, a configured latency objective): the threads, dtype, engine and batching limits
    always, and every other setting that differs from its default (`settings.env_overrides`, the one
    spelling of settings as variables), as a local server reads them from the configuration file.
    Without an execution (format 1 or hand-written plans): CPU pods one inference thread per whole core
    of the pod; accelerator pods 0, the server's default for its device (two per GPU, one per
    NeuronCore), since there the device, not the cores, computes."""
    threads = max(1, math.floor(group.resources.cpu)) if group.target == "cpu" else 0
    values: dict[str, str] = {
        "INFERPACK_SERVER__DRAIN_TIMEOUT_S": str(settings.drain_timeout_s),
        "INFERPACK_SERVER__INFERENCE_THREADS": str(settings.inference_threads or threads),
        "INFERPACK_SERVER__INTRA_OP_THREADS": str(settings.intra_op_threads),
        "INFERPACK_SERVER__DTYPE": settings.dtype,
        "INFERPACK_SERVER__ENGINE": settings.engine,
        "INFERPACK_SERVER__MAX_BODY_BYTES": str(settings.max_body_bytes),
        "INFERPACK_SERVER__METRICS_TOP_K": str(settings.metrics_top_k),
        "INFERPACK_SERVER__BATCHING__MAX_BATCH_SIZE": str(settings.batching.max_batch_size),
        "INFERPACK_SERVER__BATCHING__MAX_BATCH_LATENCY_MS": str(settings.batching.max_batch_latency_ms),
        "INFERPACK_SERVER__BATCHING__MAX_WAIT_MS": str(settings.batching.max_wait_ms),
        "INFERPACK_SERVER__BATCHING__MAX_QUEUE": str(settings.batching.max_queue),
        "INFERPACK_SERVER__BATCHING__DEADLINE_FACTOR": str(settings.batching.deadline_factor),
        "INFERPACK_SERVER__LAZY_LOAD": str(settings.lazy_load).lower(),
        # one server per pod: no other process to share packed weights' files with, and the files would
        # take the pod's ephemeral storage (its request holds the model cache and scratch only)
        "INFERPACK_SERVER__SHARE_PACKED_WEIGHTS": "false",
        # torch sizes its pools from the host's cores unless told: tell it the pod's share.
        "OMP_NUM_THREADS": str(settings.intra_op_threads),
    }
    for key, value in env_overrides(settings, "server", skip=POD_SKIPPED).items():
        values.setdefault(key, value)  # the pod's threads above win over a configured 0
    env: list[Manifest] = [{"name": k, "value": v} for k, v in values.items()]
    env += auth_env(options, settings)
    env += s3_env(options)
    env.append({"name": "INFERPACK_S3_CACHE_MAX_MB", "value": str(cache_cap_mb(group, options))})
    return env + writable_env()


def auth_env(options: RenderOptions, settings: ServerSettings) -> list[Manifest]:
    """The auth settings of the servers, and of the router, which checks the same rules (docs/security.md):
    the tokens file of `--auth-secret` (and its optional `metrics-token` key, for Prometheus), the admin
    token of `--admin-secret`. Secrets reach the pods as files or secretKeyRefs, never as literals."""
    # The load/unload API changes what a server holds: off unless an admin Secret guards it.
    repository_api = bool(options.admin_secret) and settings.auth.repository_api
    env: list[Manifest] = [
        {"name": "INFERPACK_SERVER__AUTH__REPOSITORY_API", "value": str(repository_api).lower()}
    ]
    if options.auth_secret:
        env += [
            {"name": "INFERPACK_SERVER__AUTH__TOKENS_FILE", "value": f"{CONFIG_MOUNT}/auth/tokens"},
            {
                "name": "INFERPACK_SERVER__AUTH__METRICS_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": options.auth_secret, "key": METRICS_TOKEN_KEY, "optional": True}
                },
            },
        ]
    if repository_api:
        env.append(
            {
                "name": "INFERPACK_SERVER__AUTH__ADMIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": options.admin_secret, "key": ADMIN_TOKEN_KEY}},
            }
        )
    return env


def auth_volume(options: RenderOptions) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, mounts) of the `--auth-secret` Secret (the tokens file), for servers and the router."""
    if not options.auth_secret:
        return [], []
    volume = {"name": "auth", "secret": {"secretName": options.auth_secret}}
    return [volume], [{"name": "auth", "mountPath": f"{CONFIG_MOUNT}/auth", "readOnly": True}]


def s3_env(options: RenderOptions) -> list[Manifest]:
    """Where the S3 backend caches and which endpoint/region it talks to (credentials come from IRSA)."""
    env = [{"name": "INFERPACK_S3_CACHE_DIR", "value": CACHE_MOUNT}]
    if options.s3_endpoint_url:
        env.append({"name": "INFERPACK_S3_ENDPOINT_URL", "value": options.s3_endpoint_url})
    if options.aws_region:
        env.append({"name": "AWS_REGION", "value": options.aws_region})
    return env


def repository_arg(repository: str) -> str:
    """The `--repository` the container gets: S3 URIs as they are, local paths under the volume mount."""
    if repository.startswith("s3://"):
        return repository
    relative = repository.strip("/")
    return MODELS_MOUNT if relative in ("", ".") else f"{MODELS_MOUNT}/{relative}"


# Room on the node's disk for /tmp, logs and the writable layer, besides the model cache.
SCRATCH_MB = 1024


def cache_cap_mb(group: ServerGroup, options: RenderOptions) -> int:
    """The S3 cache cap of a group's servers: `--cache-size-mb`, else twice the server's memory.

    Every model of a plan server is loaded at start, so its weights fit in `memory_mb`; files on disk may
    be up to twice their size in memory (fp32 weights served in bf16/fp16), hence the factor 2.
    """
    return options.model_cache_size_mb or 2 * group.resources.memory_mb


def ephemeral_request_mb(group: ServerGroup, options: RenderOptions, repository: str) -> int:
    """The pod's ephemeral-storage request: the cache cap (S3 repositories) plus scratch room."""
    return (cache_cap_mb(group, options) if repository.startswith("s3://") else 0) + SCRATCH_MB


def server_volumes(repository: str, options: RenderOptions) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, mounts): writable /tmp and cache, the repository volume when not S3, auth tokens.

    The cache's emptyDir has no sizeLimit: passing one evicts the whole pod. The server keeps the cache
    under its cap itself (INFERPACK_S3_CACHE_MAX_MB, least-recently-used versions go first).
    """
    cache: Manifest = {"name": "model-cache", "emptyDir": {}}
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}, cache]
    mounts: list[Manifest] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "model-cache", "mountPath": CACHE_MOUNT},
    ]
    if not repository.startswith("s3://"):
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": options.repository_pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
    auth_volumes, auth_mounts = auth_volume(options)
    return volumes + auth_volumes, mounts + auth_mounts


def http_probe(path: str, period: int, failures: int) -> Manifest:
    """An HTTP GET probe on the named container port."""
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def grace_period_seconds(settings: ServerSettings, options: RenderOptions) -> int:
    """Longer than preStop + drain, so the kubelet never SIGKILLs a server that is still draining."""
    return options.pre_stop_seconds + math.ceil(settings.drain_timeout_s) + 10


def render_server(
    server: ServerPlan,
    group: ServerGroup,
    peers: list[str],
    repository: str,
    settings: ServerSettings,
    options: RenderOptions,
) -> list[Manifest]:
    """The Deployment and Service of one plan server."""
    name = server_object_name(server.name)
    labels = common_labels("server", options)
    selector = {LABEL_COMPONENT: "server", LABEL_SERVER: server.name}
    pod_labels = {**labels, LABEL_SERVER: server.name, LABEL_GROUP: group.name}
    annotations = {
        ANNOTATION_MODELS: ",".join(server.models),
        "inferpack.dev/instance-type": group.instance_type,
        "inferpack.dev/target": group.target,
    }
    volumes, mounts = server_volumes(repository, options)
    command = ["inferpack", "serve", "--repository", repository_arg(repository)]
    command += ["--models", ",".join(server.models), "--host", "0.0.0.0", "--port", str(DEFAULT_PORT)]
    # The plan's processor, explicitly: a GPU pod whose GPU is missing fails at start instead of serving on
    # its CPU (auto would), so the failure shows in the rollout.
    command += ["--device", target_device(group.target)]
    container: Manifest = {
        "name": "server",
        "image": image_for(group.target, options),
        "imagePullPolicy": options.image_pull_policy,
        "command": command,
        "ports": [{"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "env": server_env(settings, group, options),
        "resources": server_resources(group, ephemeral_request_mb(group, options, repository)),
        # Start-up pulls and loads every model (minutes on a cold cache); the startup probe holds the
        # liveness probe back until then, and readiness says "all models loaded".
        "startupProbe": http_probe("/v2/health/live", 5, 120),
        "readinessProbe": http_probe("/v2/health/ready", 5, 3),
        "livenessProbe": http_probe("/v2/health/live", 10, 3),
        # The endpoints controller removes a terminating pod asynchronously; wait before SIGTERM so no new
        # request is routed to a server that has begun to drain.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(options.pre_stop_seconds)]}}},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    pod_spec: Manifest = {
        "serviceAccountName": SERVER_SERVICE_ACCOUNT,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": grace_period_seconds(settings, options),
        "nodeSelector": node_selector(group),
        "topologySpreadConstraints": spread_constraints(peers),
        "containers": [container],
        "volumes": volumes,
    }
    pod_spec["tolerations"] = tolerations(group)
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": options.namespace,
            "labels": {**labels, LABEL_SERVER: server.name, LABEL_GROUP: group.name},
            "annotations": annotations,
        },
        "spec": {
            "replicas": 1,
            # One pod per server: never run two copies of a server at once (memory is sized for one), so
            # replace rather than surge; the copies on other servers keep the models served.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        **annotations,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(DEFAULT_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": options.namespace,
            "labels": {**labels, LABEL_SERVER: server.name},
            "annotations": {ANNOTATION_MODELS: ",".join(server.models)},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": DEFAULT_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [deployment, service]
