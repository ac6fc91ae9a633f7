"""A Kubernetes Job that runs `inferpack profile` on one node of an instance family, so the planner costs
that family with figures measured on it instead of the reference estimates.

The pod is placed like a server of that family (the instance type's node selector and taint, the server
image, the same security context, repository volume and S3 settings) and takes the server's share of the
node, so the other pods of the node do not disturb the timings. It prints the profile JSON, and nothing
else, to its log (`inferpack profile --out -`): `kubectl logs job/NAME > FAMILY.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferpack.deploy.options import RenderOptions, image_for, k8s_name
from inferpack.deploy.servers import (
    SERVER_SERVICE_ACCOUNT,
    common_labels,
    container_security_context,
    node_selector,
    pod_security_context,
    repository_arg,
    s3_env,
    server_resources,
    server_volumes,
    tolerations,
    writable_env,
)
from inferpack.errors import ConfigError
from inferpack.plan import Resources, ServerGroup
from inferpack.planner.catalog import InstanceType

Manifest = dict[str, Any]


def profile_job_name(instance_type: str) -> str:
    """The Job's name: `profile-<instance type>` as a DNS label."""
    return k8s_name("profile", instance_type.replace(".", "-"))


def profile_command(
    instance_type: InstanceType, repository: str, extra_args: Sequence[str] = ()
) -> list[str]:
    """`inferpack profile` for this family: the measured figures stand for every size of it (`c7g.*`),
    written to stdout. Thread counts default to 1, 2, 4 ... up to the node's physical cores."""
    threads, n = [], 1
    while n <= instance_type.physical_cores:
        threads.append(str(n))
        n *= 2
    command = ["inferpack", "profile", "--repository", repository_arg(repository)]
    command += ["--instance-type", f"{instance_type.family}.*", "--out", "-"]
    if "--threads" not in extra_args:
        command += ["--threads", ",".join(threads)]
    return [*command, *extra_args]


def render_profile_job(
    instance_type: InstanceType,
    resources: Resources,
    repository: str,
    options: RenderOptions,
    extra_args: Sequence[str] = (),
) -> Manifest:
    """The Job (one pod, no retries: a failed measurement is re-run by hand, not silently). CPU families
    only: the profiler times forwards on the CPU, which on a GPU or Inferentia node is not what serves."""
    if instance_type.target != "cpu":
        raise ConfigError(
            f"{instance_type.name} computes on {instance_type.target}; `inferpack profile` measures CPU "
            "latencies only",
            hint="keep the reference figures for accelerator families, or write a profile file by hand "
            "from your own measurements (docs/planner.md)",
        )
    group = ServerGroup(
        name=k8s_name("profile", instance_type.family),
        instance_type=instance_type.name,
        target=instance_type.target,
        architecture=instance_type.architecture,
        resources=resources,
        servers=[],
    )
    volumes, mounts = server_volumes(repository, options)
    labels = {**common_labels("profile", options), "inferpack.dev/profiled-type": instance_type.name}
    container: Manifest = {
        "name": "profile",
        "image": image_for(group.target, options),
        "imagePullPolicy": options.image_pull_policy,
        "command": profile_command(instance_type, repository, extra_args),
        "env": [*s3_env(options), *writable_env()],
        "resources": server_resources(group),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": profile_job_name(instance_type.name),
            "namespace": options.namespace,
            "labels": labels,
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": SERVER_SERVICE_ACCOUNT,
                    "securityContext": pod_security_context(),
                    "nodeSelector": node_selector(group),
                    "tolerations": tolerations(group),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
