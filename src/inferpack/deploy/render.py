"""Pure rendering: plan + server settings + options -> Kubernetes manifests (a list of dicts). No I/O.

`render_manifests` gives the base that `inferpack k8s render` writes as a kustomize folder;
`render_bench_job` gives the load-test Job, kept apart so applying the base never starts a load test.
"""

from __future__ import annotations

from typing import Any

from inferpack.deploy.options import (
    CONFIG_MOUNT,
    DEFAULT_PORT,
    LABEL_COMPONENT,
    MODELS_MOUNT,
    RenderOptions,
    bench_namespace,
    image_for,
    k8s_name,
)
from inferpack.deploy.placement import (
    ENDPOINTS_PATH,
    PLACEMENT_CONFIGMAP,
    PLAN_PATH,
    placement_digest,
    render_placement_configmap,
)
from inferpack.deploy.servers import (
    CLIENT_SERVICE_ACCOUNT,
    SERVER_SERVICE_ACCOUNT,
    Manifest,
    auth_env,
    auth_volume,
    common_labels,
    container_security_context,
    http_probe,
    model_peers,
    node_selector,
    pod_security_context,
    render_server,
    tolerations,
    writable_env,
)
from inferpack.errors import PlanError
from inferpack.plan import Plan, served_settings
from inferpack.settings import RouterSettings, ServerSettings, env_overrides

ROUTER = "router"
BENCH_JOB = "inferpack-bench"


def _meta(
    name: str, component: str, options: RenderOptions, *, namespace: str | None = None, **extra: Any
) -> Manifest:
    return {
        "name": name,
        "namespace": namespace or options.namespace,
        "labels": common_labels(component, options),
        **extra,
    }


def effective_repository(plan: Plan, settings: ServerSettings, options: RenderOptions) -> str:
    """The repository the pods use: the option, else the plan's, else the settings'.

    The option is a path inside the repository volume (or an S3 URI). The plan's and the settings' are
    where the repository lies on the machine that planned, which a pod cannot see: a local one of those
    is rendered as the volume's root (`/models`), where that folder must be copied (see
    `local_repository_note`)."""
    if options.repository:
        return options.repository
    found = plan.repository or str(settings.repository)
    return found if found.startswith("s3://") else "."


def local_repository_note(plan: Plan, settings: ServerSettings, options: RenderOptions) -> str | None:
    """What the user must do when the pods read the plan's (or the settings') local repository from the
    volume; None for S3 or an explicit --repository (a path the user chose inside the volume)."""
    if options.repository or effective_repository(plan, settings, options).startswith("s3://"):
        return None
    source = plan.repository or str(settings.repository)
    return (
        f"the repository {source} is a folder on this machine, which no pod can see: the servers read "
        f"{MODELS_MOUNT}, the root of the PersistentVolumeClaim {options.repository_pvc!r}, so copy that "
        "folder's contents there (or bake them into an image built FROM the server image). Simpler: "
        f"`inferpack models push s3://BUCKET/PREFIX --repository {source}` and render with "
        "--repository s3://BUCKET/PREFIX"
    )


def render_namespace(options: RenderOptions, name: str | None = None) -> Manifest:
    """The Namespace (default: the servers'), labelled for the restricted Pod Security Standard that the
    pods meet."""
    name = name or options.namespace
    labels = {
        **common_labels("namespace", options),
        "kubernetes.io/metadata.name": name,
        "pod-security.kubernetes.io/enforce": "restricted",
    }
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }


def render_service_accounts(options: RenderOptions) -> list[Manifest]:
    """The pods' identities: the servers' (with `role_arn`, IRSA gives it that IAM role: S3 read access)
    and the router's and load tests', which never carries the role (they have no business in S3)."""
    out = []
    for name in (SERVER_SERVICE_ACCOUNT, CLIENT_SERVICE_ACCOUNT):
        meta = _meta(name, "identity", options)
        if options.role_arn and name == SERVER_SERVICE_ACCOUNT:
            meta["annotations"] = {"eks.amazonaws.com/role-arn": options.role_arn}
        # The pods never call the Kubernetes API; IRSA injects its own projected token regardless.
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": meta,
                "automountServiceAccountToken": False,
            }
        )
    return out


def default_router_command() -> list[str]:
    """The router's command line when `router_command` is not given."""
    return [
        "inferpack", "router",
        "--plan", PLAN_PATH,
        "--endpoints", ENDPOINTS_PATH,
        "--host", "0.0.0.0", "--port", str(DEFAULT_PORT),
    ]  # fmt: skip


def render_router(
    plan: Plan,
    options: RenderOptions,
    placement: Manifest,
    settings: ServerSettings | None = None,
    router: RouterSettings | None = None,
) -> list[Manifest]:
    """Router Deployment + Service (+ HPA, + PDB when it has more than one replica). The router gets the
    servers' auth settings (it checks tokens and scopes itself before it looks a model up) and every
    [router] setting that differs from its default, as INFERPACK_ROUTER__* variables (the local fleet's
    router reads the same from the configuration file)."""
    router_env = [
        {"name": k, "value": v} for k, v in env_overrides(router or RouterSettings(), "router").items()
    ]
    auth_volumes, auth_mounts = auth_volume(options)
    selector = {LABEL_COMPONENT: ROUTER}
    labels = common_labels(ROUTER, options)
    # A changed placement must roll the routers: hash the ConfigMap into the pod template.
    digest = placement_digest(placement)
    amounts = {"cpu": options.router_cpu, "memory": options.router_memory}
    container: Manifest = {
        "name": ROUTER,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": list(options.router_command or default_router_command()),
        "ports": [{"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "env": router_env + auth_env(options, settings or ServerSettings()) + writable_env(),
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "readinessProbe": http_probe("/v2/health/ready", 5, 3),
        "livenessProbe": http_probe("/v2/health/live", 10, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(options.pre_stop_seconds)]}}},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "placement", "mountPath": f"{CONFIG_MOUNT}/placement", "readOnly": True},
            *auth_mounts,
        ],
    }
    replicas = options.router_hpa.min_replicas if options.router_hpa else options.router_replicas
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(ROUTER, ROUTER, options),
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "inferpack.dev/placement-sha256": digest,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(DEFAULT_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": CLIENT_SERVICE_ACCOUNT,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": options.pre_stop_seconds + 30,
                    **_system_selector(options.system_node_selector),
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector},
                        }
                    ],
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "placement", "configMap": {"name": PLACEMENT_CONFIGMAP}},
                        *auth_volumes,
                    ],
                },
            },
        },
    }
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ROUTER, ROUTER, options),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": DEFAULT_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    out = [deployment, service]
    if options.router_hpa is None:
        # Without an HPA the Deployment holds the count; with one, the HPA does (its minReplicas): a
        # `spec.replicas` here would make every `kubectl apply` reset the HPA's scale.
        deployment["spec"] = {"replicas": replicas, **deployment["spec"]}
    if options.router_hpa:
        hpa = options.router_hpa
        out.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": _meta(ROUTER, ROUTER, options),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ROUTER},
                    "minReplicas": hpa.min_replicas,
                    "maxReplicas": hpa.max_replicas,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": hpa.cpu_utilization},
                            },
                        }
                    ],
                },
            }
        )
    if replicas > 1:
        out.append(_pdb(ROUTER, selector, options, {"minAvailable": 1}))
    return out


def _system_selector(selector: dict[str, str]) -> Manifest:
    """A `nodeSelector` entry for a pod spec, or nothing when the selector is empty."""
    return {"nodeSelector": dict(selector)} if selector else {}


def _pdb(name: str, selector: dict[str, str], options: RenderOptions, budget: Manifest) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, selector[LABEL_COMPONENT], options),
        # AlwaysAllow: a pod that is not ready (crash-looping, a model that fails to load) must not block
        # node drains; the default only lets a not-ready pod go when the budget is otherwise met.
        "spec": {
            **budget,
            "selector": {"matchLabels": selector},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_network_policy(options: RenderOptions) -> Manifest:
    """Only the router and load-test pods (and Prometheus, when named) may reach the servers."""
    sources: list[Manifest] = [
        {
            "podSelector": {
                "matchExpressions": [{"key": LABEL_COMPONENT, "operator": "In", "values": [ROUTER, "bench"]}]
            }
        }
    ]
    if bench_namespace(options) != options.namespace:
        # A podSelector alone means "this namespace": load tests elsewhere need their namespace named too.
        sources.append(
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": bench_namespace(options)}
                },
                "podSelector": {"matchLabels": {LABEL_COMPONENT: "bench"}},
            }
        )
    if options.metrics_namespace:
        sources.append(
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": options.metrics_namespace}}}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta("servers-ingress", "server", options),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_COMPONENT: "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": sources, "ports": [{"protocol": "TCP", "port": DEFAULT_PORT}]}],
        },
    }


def render_prepull(plan: Plan, options: RenderOptions) -> list[Manifest]:
    """One DaemonSet per instance type that pulls the image on every such node before a server lands there.

    The init container only runs `inferpack version` (proving the image starts); the pause container keeps
    the pod alive at near-zero cost so new nodes of the type pull the image as soon as they join.
    """
    out: list[Manifest] = []
    seen: set[tuple[str, str, str]] = set()
    for group in plan.groups:
        key = (group.instance_type, group.architecture, group.target)
        if key in seen:
            continue
        seen.add(key)
        name = k8s_name(
            "prepull",
            group.instance_type.replace(".", "-") + f"-{group.architecture.replace('_', '-')}-{group.target}",
        )
        selector = {LABEL_COMPONENT: "prepull", "inferpack.dev/prepull": name}
        small = {"cpu": "10m", "memory": "32Mi"}
        tiny = {"requests": dict(small), "limits": dict(small)}
        spec: Manifest = {
            "securityContext": pod_security_context(),
            "nodeSelector": node_selector(group),
            "automountServiceAccountToken": False,
            "initContainers": [
                {
                    "name": "pull",
                    "image": image_for(group.target, options),
                    "imagePullPolicy": options.image_pull_policy,
                    "command": ["inferpack", "version"],
                    "env": writable_env(),
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "512Mi"},
                    },
                    "securityContext": container_security_context(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "containers": [
                {
                    "name": "pause",
                    "image": options.pause_image,
                    "resources": tiny,
                    "securityContext": container_security_context(),
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        }
        # The only non-server pod that tolerates a server group's taint: it must pull on those nodes.
        spec["tolerations"] = tolerations(group)
        labels = {**common_labels("prepull", options), "inferpack.dev/prepull": name}
        meta = _meta(name, "prepull", options)
        meta["labels"] = labels
        meta["annotations"] = {"inferpack.dev/instance-type": group.instance_type}
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": meta,
                "spec": {
                    "selector": {"matchLabels": selector},
                    "template": {"metadata": {"labels": labels}, "spec": spec},
                },
            }
        )
    return out


def render_manifests(
    plan: Plan,
    settings: ServerSettings,
    options: RenderOptions | None = None,
    router: RouterSettings | None = None,
) -> list[Manifest]:
    """The base: Namespace, ServiceAccount, per-server Deployment+Service, server PDB and NetworkPolicy,
    router (ConfigMap, Deployment, Service, optional HPA, PDB), and image pre-pull DaemonSets.

    Each server runs `served_settings` of its group (the configuration `settings`, the group's execution,
    the objective `Plan.server_objective_ms` passes on); the router its `router` settings (default: the
    defaults)."""
    options = options or RenderOptions()
    if not plan.servers():
        raise PlanError("the plan has no servers to render")
    repository = effective_repository(plan, settings, options)
    peers = model_peers(plan)
    out: list[Manifest] = [render_namespace(options), *render_service_accounts(options)]
    for group in plan.groups:
        served = served_settings(group, settings)
        for server in group.servers:
            out += render_server(server, group, peers[server.name], repository, served, options)
    out.append(
        _pdb(
            "servers",
            {LABEL_COMPONENT: "server"},
            options,
            {"maxUnavailable": options.server_max_unavailable},
        )
    )
    out.append(render_network_policy(options))
    placement = render_placement_configmap(plan, options)
    out.append(placement)
    out += render_router(plan, options, placement, settings, router)
    if options.prepull:
        out += render_prepull(plan, options)
    return out


START_AT_ANNOTATION = "inferpack.dev/start-at"


def router_url(options: RenderOptions) -> str:
    """The router Service's in-cluster URL (fully qualified: load tests may run in another namespace)."""
    return f"http://{ROUTER}.{options.namespace}.svc.cluster.local:{DEFAULT_PORT}"


def is_seq_mode(args: tuple[str, ...]) -> bool:
    """True when `bench worker` arguments ask for `--mode seq`."""
    pairs = zip(args, (*args[1:], ""), strict=True)
    return "--mode=seq" in args or any(a == "--mode" and b == "seq" for a, b in pairs)


def default_bench_command(options: RenderOptions) -> list[str]:
    """The worker's command line when `bench_command` is not given: `bench_args` appended.

    The worker reads its index and the worker count from INFERPACK_BENCH_WORKER_INDEX / _WORKERS (set on
    the container from the Job's completion index) and prints its result as one JSON line (`--out -`).
    In `seq` mode (the reference's sequential test) the workers visit every server directly through its
    own Service (the endpoints file of the placement ConfigMap) instead of going through the router.
    """
    # --users is a total over all workers: give each worker 4 unless the caller chose a load shape
    shape = (
        [] if {"--users", "--rate"} & set(options.bench_args) else ["--users", str(4 * options.bench_workers)]
    )
    if is_seq_mode(options.bench_args):
        target = ["--endpoints", ENDPOINTS_PATH]
    else:
        target = ["--url", router_url(options)]
    return [
        "inferpack", "bench", "worker",
        *target,
        "--plan", PLAN_PATH,
        "--out", "-", "--progress", "text",
        *shape,
        *options.bench_args,
    ]  # fmt: skip


def render_bench_namespace(plan: Plan, options: RenderOptions) -> list[Manifest]:
    """What load tests in their own namespace need there: the Namespace and a copy of the placement
    ConfigMap (a pod mounts ConfigMaps of its own namespace only). Nothing when they share the servers'."""
    name = bench_namespace(options)
    if name == options.namespace:
        return []
    return [render_namespace(options, name), render_placement_configmap(plan, options, name)]


def _bench_pod_spec(options: RenderOptions, container: Manifest) -> Manifest:
    spec: Manifest = {"restartPolicy": "Never"}
    if bench_namespace(options) == options.namespace:
        spec["serviceAccountName"] = CLIENT_SERVICE_ACCOUNT
    else:
        spec["automountServiceAccountToken"] = False  # the namespace's default account, without a token
    spec["securityContext"] = pod_security_context()
    # Load tests on their own nodes when told, else on the system group with the router, never on servers.
    spec.update(_system_selector(options.bench_node_selector or options.system_node_selector))
    spec["containers"] = [container]
    spec["volumes"] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "placement", "configMap": {"name": PLACEMENT_CONFIGMAP}},
    ]
    if options.auth_secret:  # the servers' Secret: a Secret of another namespace cannot be mounted
        spec["volumes"].append({"name": "auth", "secret": {"secretName": options.auth_secret}})
    return spec


def _bench_container(options: RenderOptions, command: list[str], workers: int) -> Manifest:
    amounts = {"cpu": options.bench_cpu, "memory": options.bench_memory}
    index_ref = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # With --auth-secret the workers send the first token of the servers' own Secret (an env variable,
    # so a custom --bench-command running `bench worker` gets it too); never on the command line.
    auth: list[Manifest] = []
    auth_mounts: list[Manifest] = []
    if options.auth_secret:
        auth = [{"name": "INFERPACK_BENCH_TOKEN_FILE", "value": f"{CONFIG_MOUNT}/auth/tokens"}]
        auth_mounts = [{"name": "auth", "mountPath": f"{CONFIG_MOUNT}/auth", "readOnly": True}]
    return {
        "name": "worker",
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": command,
        "env": [
            {"name": "INFERPACK_BENCH_WORKER_INDEX", "valueFrom": {"fieldRef": {"fieldPath": index_ref}}},
            {"name": "INFERPACK_BENCH_WORKERS", "value": str(workers)},
            {"name": "INFERPACK_ROUTER_URL", "value": router_url(options)},
            *writable_env(),
            *auth,
        ],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "placement", "mountPath": f"{CONFIG_MOUNT}/placement", "readOnly": True},
            *auth_mounts,
        ],
    }


def _bench_job(options: RenderOptions, container: Manifest, workers: int) -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(BENCH_JOB, "bench", options, namespace=bench_namespace(options)),
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            # All workers at once: the offered load is the sum of theirs.
            "parallelism": workers,
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": common_labels("bench", options)},
                "spec": _bench_pod_spec(options, container),
            },
        },
    }


def start_at_patch(options: RenderOptions | None = None, start_at: float = 0) -> Manifest:
    """A kustomize patch of the load-test Job that sets its workers' common start time (Unix seconds;
    0: at once). `inferpack k8s bench` rewrites it (`bench/start-at.yaml`) just before applying the Job."""
    options = options or RenderOptions()
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": BENCH_JOB, "namespace": bench_namespace(options)},
        "spec": {"template": {"metadata": {"annotations": {START_AT_ANNOTATION: f"{start_at:.3f}"}}}},
    }


def render_bench_job(options: RenderOptions | None = None) -> Manifest:
    """An Indexed Job of `bench_workers` load-test workers, all started together against the router.

    Pods are scheduled and pull the image at different moments: each waits until the common start time
    of the pod annotation `inferpack.dev/start-at` (INFERPACK_BENCH_START_AT, `bench worker --start-at`),
    which `inferpack k8s bench` sets, so their loads overlap for the whole run.
    Each worker prints its result (histograms included) to its log; `inferpack k8s collect` merges them.
    """
    options = options or RenderOptions()
    command = list(options.bench_command or default_bench_command(options))
    container = _bench_container(options, command, options.bench_workers)
    start_ref = f"metadata.annotations['{START_AT_ANNOTATION}']"
    container["env"].insert(
        2, {"name": "INFERPACK_BENCH_START_AT", "valueFrom": {"fieldRef": {"fieldPath": start_ref}}}
    )
    job = _bench_job(options, container, options.bench_workers)
    job["spec"]["template"]["metadata"]["annotations"] = {START_AT_ANNOTATION: "0"}
    return job


def render_idle_bench_job(options: RenderOptions | None = None) -> Manifest:
    """The same Job with one pod that only waits (`bench_idle_seconds`): a place inside the cluster, with
    the image, the placement files and the load-test pods' network access, to send requests from by hand
    (`inferpack k8s bench --idle`, then `inferpack k8s exec bench-0`). Same name as the load-test Job, so
    `inferpack k8s bench --stop` and the next load test replace it."""
    options = options or RenderOptions()
    command = ["sleep", str(options.bench_idle_seconds)]
    return _bench_job(options, _bench_container(options, command, 1), 1)
