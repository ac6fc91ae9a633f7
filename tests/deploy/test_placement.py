"""The placement ConfigMap at the target scale: thousands of models x 2 copies on 10 servers.

A pretty-printed plan.json in `data` was ~200 KB (3,000 models) to ~660 KB (10,000); client-side
`kubectl apply` stores the object again in its last-applied annotation (262,144 bytes for all annotations
of an object) and a ConfigMap holds 1 MiB. The plan now travels as gzip-compressed compact JSON in
`binaryData`, and the router and load-test workers read the mounted file as before.
"""

from __future__ import annotations

import base64
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

import inferpack.fleet.router
from inferpack.deploy.kubectl import Kubectl
from inferpack.deploy.options import CONFIG_MOUNT, RenderOptions
from inferpack.deploy.placement import (
    ANNOTATIONS_LIMIT,
    CONFIGMAP_DATA_LIMIT,
    ENDPOINTS_PATH,
    PLAN_PATH,
    applied_sizes,
    render_placement_configmap,
)
from inferpack.deploy.render import default_bench_command, default_router_command
from inferpack.errors import PlanError
from inferpack.fleet.cli import router_command
from inferpack.loadtest.targets import resolve_target
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan

SERVERS = 10
MIB = 1_048_576


def big_plan(ids: list[str], copies: int = 2) -> Plan:
    """Each model on `copies` of 10 c7g.xlarge servers (neighbouring servers share models)."""
    servers = [
        ServerPlan(name=f"c7g-{s}", models=[m for i, m in enumerate(ids) if (s - i) % SERVERS < copies])
        for s in range(SERVERS)
    ]
    group = ServerGroup(
        name="c7g", instance_type="c7g.xlarge", resources=Resources(cpu=4, memory_mb=8192), servers=servers
    )
    return Plan(created_by="test", groups=[group])


def demo_ids(n: int) -> list[str]:
    return [f"minilm-qa-{i:05d}" for i in range(n)]


def random_ids(n: int) -> list[str]:
    """Tenant ids that compress badly: random UUIDs (36 characters)."""
    rng = random.Random(0)
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]


def pretty_configmap_bytes(plan: Plan) -> int:
    """The old layout's size: pretty-printed plan.json in `data` (for the comparison in the docs)."""
    return len(plan.model_dump_json(indent=2, exclude_none=True)) + 1


@pytest.mark.parametrize("models", [3_000, 10_000])
def test_the_placement_fits_client_side_apply_at_the_target_scale(models: int) -> None:
    plan = big_plan(demo_ids(models))
    assert sum(len(s.models) for s in plan.servers()) == 2 * models
    sizes: dict[str, Any] = applied_sizes(render_placement_configmap(plan, RenderOptions()))
    assert sizes["annotation"] < ANNOTATIONS_LIMIT
    assert sizes["object"] < MIB
    assert sizes["data"] < CONFIGMAP_DATA_LIMIT
    assert sizes["data"] * 5 < pretty_configmap_bytes(plan)  # what the old layout carried


@pytest.mark.parametrize("models", [3_000, 10_000])
def test_random_ids_fit_the_configmap_and_server_side_apply(models: int) -> None:
    """UUID ids compress ~2x only: at 10,000 models the last-applied annotation of a client-side apply
    would pass the limit, so `inferpack k8s apply` applies server-side (no such annotation)."""
    sizes = applied_sizes(render_placement_configmap(big_plan(random_ids(models)), RenderOptions()))
    assert sizes["data"] < CONFIGMAP_DATA_LIMIT
    assert sizes["annotation"] < MIB  # the object as a server-side apply stores it (no annotation)
    if models == 3_000:
        assert sizes["annotation"] < ANNOTATIONS_LIMIT  # a client-side apply still fits here
    apply = Kubectl(namespace="ns").apply(Path("k8s"))[0]
    assert "--server-side" in apply and "--force-conflicts" in apply


def test_a_placement_over_the_configmap_limit_is_refused_at_render_time() -> None:
    with pytest.raises(PlanError, match="ConfigMap limit"):
        render_placement_configmap(big_plan(random_ids(30_000), copies=3), RenderOptions())


def mount(configmap: dict[str, Any], folder: Path) -> None:
    """Write the ConfigMap's keys as a configMap volume shows them: `data` as text, `binaryData` decoded."""
    folder.mkdir(parents=True)
    for key, text in configmap.get("data", {}).items():
        (folder / key).write_text(text)
    for key, encoded in configmap.get("binaryData", {}).items():
        (folder / key).write_bytes(base64.b64decode(encoded))


def test_router_and_load_tests_read_the_mounted_placement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = big_plan(demo_ids(300))
    mount(render_placement_configmap(plan, RenderOptions(namespace="serving")), tmp_path / "placement")

    def local(path: str) -> Path:
        return tmp_path / Path(path).relative_to(CONFIG_MOUNT)

    router = default_router_command()
    plan_file = local(router[router.index("--plan") + 1])
    endpoints_file = local(router[router.index("--endpoints") + 1])
    assert (plan_file, endpoints_file) == (local(PLAN_PATH), local(ENDPOINTS_PATH))
    started: dict[str, Any] = {}
    monkeypatch.setattr(
        inferpack.fleet.router, "serve_router", lambda p, urls, **kw: started.update(plan=p, urls=urls)
    )
    router_command(plan=plan_file, endpoints_file=endpoints_file, host="0.0.0.0", port=8080)
    assert started["plan"] == plan
    assert started["urls"]["c7g-0"] == "http://srv-c7g-0.serving.svc.cluster.local:8080"
    bench = default_bench_command(RenderOptions(bench_args=("--mode", "seq")))
    target, models = resolve_target(
        [], local(bench[bench.index("--plan") + 1]), local(bench[bench.index("--endpoints") + 1])
    )
    assert models == plan.models() and len(target.pairs(models)) == 600
