"""The placement ConfigMap (`inferpack-placement`): the plan and the endpoints file for the router and the
load tests, sized for thousands of models.

The plan travels as compact JSON, gzip-compressed, in `binaryData` (`plan.json.gz`): the pretty-printed
`plan.json` of 3,000 models x 2 copies was ~200-330 KB, and client-side `kubectl apply` stores the whole
object again in its `last-applied-configuration` annotation, which may not pass 262,144 bytes (all
annotations of an object together); a ConfigMap's data may not pass 1 MiB. Readers need no change of
format: `inferpack.jsonfile` reads gzip-compressed JSON files as it reads plain ones. `endpoints.json`
(one URL per server) stays plain text in `data`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from typing import Any

from inferpack.deploy.options import CONFIG_MOUNT, RenderOptions
from inferpack.deploy.servers import Manifest, common_labels, server_url
from inferpack.endpoints import ServerEndpoints, endpoints_json
from inferpack.errors import PlanError
from inferpack.plan import Plan

PLACEMENT_CONFIGMAP = "inferpack-placement"
PLAN_KEY = "plan.json.gz"
ENDPOINTS_KEY = "endpoints.json"
PLAN_PATH = f"{CONFIG_MOUNT}/placement/{PLAN_KEY}"
ENDPOINTS_PATH = f"{CONFIG_MOUNT}/placement/{ENDPOINTS_KEY}"
# Kubernetes limits (apimachinery's TotalAnnotationSizeLimitB; the ConfigMap validation's MaxSecretSize).
ANNOTATIONS_LIMIT = 262_144
CONFIGMAP_DATA_LIMIT = 1_048_576
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def plan_endpoints(plan: Plan, namespace: str) -> ServerEndpoints:
    """Every plan server's in-cluster Service URL (the router's endpoints file)."""
    return ServerEndpoints(servers={s.name: server_url(s.name, namespace) for s in plan.servers()})


def compressed_plan(plan: Plan) -> bytes:
    """Compact plan JSON, gzip-compressed the same way every time (no timestamp: equal plans, equal bytes,
    so an unchanged placement does not roll the routers)."""
    return gzip.compress(plan.model_dump_json(exclude_none=True).encode(), compresslevel=9, mtime=0)


def render_placement_configmap(plan: Plan, options: RenderOptions, namespace: str | None = None) -> Manifest:
    """plan.json.gz + endpoints.json for the router and the load tests (format: `inferpack.endpoints`);
    `namespace` places a copy for load tests in their own namespace. A placement over the ConfigMap size
    limit is refused here rather than by the API server mid-apply."""
    configmap: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": PLACEMENT_CONFIGMAP,
            "namespace": namespace or options.namespace,
            "labels": common_labels("router", options),
        },
        "data": {ENDPOINTS_KEY: endpoints_json(plan_endpoints(plan, options.namespace))},
        "binaryData": {PLAN_KEY: base64.b64encode(compressed_plan(plan)).decode()},
    }
    size = data_bytes(configmap)
    if size > CONFIGMAP_DATA_LIMIT:
        raise PlanError(
            f"the placement of {len(plan.models())} models is {size} bytes compressed, over the "
            f"{CONFIGMAP_DATA_LIMIT}-byte ConfigMap limit",
            hint="split the models over several plans (one namespace each), or use shorter model ids",
        )
    return configmap


def placement_digest(configmap: Manifest) -> str:
    """A hash of the ConfigMap's contents, for the router's pod template (a new placement rolls them)."""
    contents = {**configmap.get("data", {}), **configmap.get("binaryData", {})}
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()[:16]


def data_bytes(configmap: Manifest) -> int:
    """What the ConfigMap size limit counts: the bytes of every `data` value and every decoded
    `binaryData` value (keys included, as the API server's validation does)."""
    data: dict[str, str] = configmap.get("data", {})
    binary: dict[str, str] = configmap.get("binaryData", {})
    return sum(len(k) + len(v.encode()) for k, v in data.items()) + sum(
        len(k) + len(base64.b64decode(v)) for k, v in binary.items()
    )


def applied_sizes(configmap: Manifest) -> dict[str, Any]:
    """Sizes after a client-side `kubectl apply`: the `last-applied-configuration` annotation (the object
    as compact JSON) and the whole object with that annotation, as JSON (etcd stores it as protobuf,
    about the same size for string-heavy objects)."""
    annotation = json.dumps(configmap, separators=(",", ":"), sort_keys=True)
    applied = json.loads(annotation)
    applied["metadata"].setdefault("annotations", {})[LAST_APPLIED] = annotation
    return {
        "annotation": len(annotation.encode()),
        "object": len(json.dumps(applied, separators=(",", ":")).encode()),
        "data": data_bytes(configmap),
    }
