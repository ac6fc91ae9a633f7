"""The fields that matter in rendered manifests, checked against the plan they came from."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.options import HpaOptions, RenderOptions, k8s_name
from inferpack.deploy.placement import plan_endpoints
from inferpack.deploy.render import (
    effective_repository,
    local_repository_note,
    render_bench_job,
    render_idle_bench_job,
    render_manifests,
    start_at_patch,
)
from inferpack.deploy.servers import server_object_name
from inferpack.errors import PlanError
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan, save_plan
from inferpack.settings import ServerSettings

Manifest = dict[str, Any]


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(c: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c["env"]}


def test_one_deployment_and_service_per_server_with_its_models(plan: Plan) -> None:
    manifests = render_manifests(plan, ServerSettings())
    deployments = by_kind(manifests, "Deployment")
    services = by_kind(manifests, "Service")
    for server in plan.servers():
        name = server_object_name(server.name)
        dep, svc = deployments[name], services[name]
        assert dep["spec"]["replicas"] == 1
        assert dep["metadata"]["annotations"]["inferpack.dev/models"] == ",".join(server.models)
        cmd = container(dep)["command"]
        assert cmd[:2] == ["inferpack", "serve"]
        assert cmd[cmd.index("--models") + 1] == ",".join(server.models)
        assert cmd[cmd.index("--repository") + 1] == "s3://models-bucket/prod/repo"
        assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
        # The Service selects exactly this server's pod.
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
        assert svc["spec"]["ports"][0]["port"] == 8080
    assert len(deployments) == len(plan.servers()) + 1  # + router


def test_node_selectors_resources_and_tolerations_follow_the_groups(plan: Plan) -> None:
    deployments = by_kind(render_manifests(plan, ServerSettings()), "Deployment")
    for group in plan.groups:
        for server in group.servers:
            dep = deployments[server_object_name(server.name)]
            spec = dep["spec"]["template"]["spec"]
            assert spec["nodeSelector"]["node.kubernetes.io/instance-type"] == group.instance_type
            assert spec["nodeSelector"]["kubernetes.io/arch"] == (
                "arm64" if group.architecture == "arm64" else "amd64"
            )
            res = container(dep)["resources"]
            # Guaranteed QoS; disk is requested (cache cap + scratch), never limited (a limit evicts the pod)
            disk = res["requests"].pop("ephemeral-storage")
            assert disk == f"{2 * group.resources.memory_mb + 1024}Mi"
            assert res["requests"] == res["limits"]
            assert res["requests"]["memory"] == f"{group.resources.memory_mb}Mi"
            gpu, neuron = res["limits"].get("nvidia.com/gpu"), res["limits"].get("aws.amazon.com/neuron")
            assert (gpu, neuron) == {
                "cpu": (None, None),
                "cuda": (str(group.resources.accelerators), None),
                "neuron": (None, str(group.resources.accelerators)),
            }[group.target]
            tolerated = {t["key"] for t in spec.get("tolerations", [])}
            assert tolerated == (
                {"nvidia.com/gpu"} if gpu else {"aws.amazon.com/neuron"} if neuron else {"inferpack.dev/role"}
            )
    cpu = container(deployments["srv-c7i-0"])["resources"]["requests"]["cpu"]
    assert cpu == "7500m"
    assert container(deployments["srv-g5-0"])["resources"]["requests"]["cpu"] == "3"


def test_probes_drain_and_security(plan: Plan) -> None:
    settings = ServerSettings(drain_timeout_s=45.5)
    options = RenderOptions(pre_stop_seconds=7)
    dep = by_kind(render_manifests(plan, settings, options), "Deployment")["srv-c7g-1"]
    c = container(dep)
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 7 + 45.5
    assert env_of(c)["INFERPACK_SERVER__DRAIN_TIMEOUT_S"] == "45.5"
    pod_sc = dep["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # A read-only root needs writable scratch: /tmp and the model cache are volumes.
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/var/cache/inferpack"} <= mounts
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"


def test_settings_reach_the_servers_as_env_overrides(plan: Plan) -> None:
    settings = ServerSettings.model_validate(
        {
            "dtype": "bf16",
            "intra_op_threads": 2,
            "batching": {"max_batch_size": 4, "max_queue": 9, "deadline_ms": 750},
        }
    )
    dep = by_kind(render_manifests(plan, settings), "Deployment")["srv-c7i-1"]
    env = env_of(container(dep))
    assert env["INFERPACK_SERVER__DTYPE"] == "bf16"
    assert env["INFERPACK_SERVER__INTRA_OP_THREADS"] == "2"
    assert env["INFERPACK_SERVER__BATCHING__MAX_BATCH_SIZE"] == "4"
    assert env["INFERPACK_SERVER__BATCHING__MAX_QUEUE"] == "9"
    assert env["INFERPACK_SERVER__BATCHING__DEADLINE_MS"] == "750.0"
    # inference threads default to the pod's whole cores (7.5 -> 7), not the node's.
    assert env["INFERPACK_SERVER__INFERENCE_THREADS"] == "7"
    assert env["INFERPACK_S3_CACHE_DIR"] == "/var/cache/inferpack"
    # on accelerators the device computes: the server's own default for it (two per GPU, one per core)
    gpu = env_of(container(by_kind(render_manifests(plan, settings), "Deployment")["srv-g5-0"]))
    assert gpu["INFERPACK_SERVER__INFERENCE_THREADS"] == "0"


def test_copies_of_a_model_spread_across_zones(plan: Plan) -> None:
    deployments = by_kind(render_manifests(plan, ServerSettings()), "Deployment")
    spread = deployments["srv-c7g-0"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    zone = next(c for c in spread if c["topologyKey"] == "topology.kubernetes.io/zone")
    expr = zone["labelSelector"]["matchExpressions"][0]
    assert expr["key"] == "inferpack.dev/server"
    # c7g-0 holds m-hot with c7i-0 and g5-0, so those three spread apart; c7g-1 shares nothing.
    assert expr["values"] == ["c7g-0", "c7i-0", "g5-0"]
    alone = deployments["srv-c7g-1"]["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert alone["labelSelector"]["matchExpressions"][0]["values"] == ["c7g-1"]
    inf = deployments["srv-inf2-0"]["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert inf["labelSelector"]["matchExpressions"][0]["values"] == ["inf2-0", "inf2-1"]


def test_router_placement_configmap_hpa_pdb_and_network_policy(plan: Plan) -> None:
    options = RenderOptions(namespace="serving", router_hpa=HpaOptions(min_replicas=3, max_replicas=9))
    manifests = render_manifests(plan, ServerSettings(), options)
    cm = by_kind(manifests, "ConfigMap")["inferpack-placement"]
    assert (
        Plan.model_validate_json(gzip.decompress(base64.b64decode(cm["binaryData"]["plan.json.gz"]))) == plan
    )
    endpoints = plan_endpoints(plan, "serving")
    assert endpoints.model_validate_json(cm["data"]["endpoints.json"]) == endpoints
    assert endpoints.servers["c7i-0"] == "http://srv-c7i-0.serving.svc.cluster.local:8080"
    endpoints.check_covers(plan)

    router = by_kind(manifests, "Deployment")["router"]
    # The HPA holds the count (minReplicas 3): no spec.replicas for `kubectl apply` to reset it to
    assert "replicas" not in router["spec"]
    assert container(router)["command"][:2] == ["inferpack", "router"]
    assert len(router["spec"]["template"]["metadata"]["annotations"]["inferpack.dev/placement-sha256"]) == 16
    hpa = by_kind(manifests, "HorizontalPodAutoscaler")["router"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    pdbs = by_kind(manifests, "PodDisruptionBudget")
    assert pdbs["router"]["spec"]["minAvailable"] == 1
    assert pdbs["servers"]["spec"]["maxUnavailable"] == 1
    assert pdbs["servers"]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/component": "server"}

    netpol = by_kind(manifests, "NetworkPolicy")["servers-ingress"]
    assert netpol["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "server"}
    allowed = netpol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert allowed == ["router", "bench"]
    assert all(m["metadata"].get("namespace", "serving") == "serving" for m in manifests)
    assert by_kind(manifests, "Namespace")["serving"]["metadata"]["labels"][
        "kubernetes.io/metadata.name"
    ] == ("serving")


def test_a_changed_plan_changes_the_router_checksum(plan: Plan) -> None:
    def checksum(p: Plan) -> str:
        router = by_kind(render_manifests(p, ServerSettings()), "Deployment")["router"]
        return str(router["spec"]["template"]["metadata"]["annotations"]["inferpack.dev/placement-sha256"])

    moved = plan.model_copy(deep=True)
    moved.groups[0].servers[1].models.append("m-new")
    assert checksum(plan) == checksum(plan.model_copy(deep=True))
    assert checksum(plan) != checksum(moved)


def test_service_account_irsa_and_prepull(plan: Plan) -> None:
    role = "arn:aws:iam::123456789012:role/inferpack-s3"
    manifests = render_manifests(plan, ServerSettings(), RenderOptions(role_arn=role))
    sa = by_kind(manifests, "ServiceAccount")["inferpack"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role
    assert (
        "annotations"
        not in by_kind(render_manifests(plan, ServerSettings()), "ServiceAccount")["inferpack"]["metadata"]
    )
    daemonsets = by_kind(manifests, "DaemonSet")
    types = sorted(
        d["spec"]["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
        for d in daemonsets.values()
    )
    assert types == sorted(g.instance_type for g in plan.groups)
    assert not by_kind(render_manifests(plan, ServerSettings(), RenderOptions(prepull=False)), "DaemonSet")


def test_accelerator_groups_get_their_own_images(plan: Plan) -> None:
    options = RenderOptions(
        image="r/inferpack:cpu", cuda_image="r/inferpack:cuda", neuron_image="r/inferpack:neuron"
    )
    manifests = render_manifests(plan, ServerSettings(), options)
    deployments = by_kind(manifests, "Deployment")
    assert container(deployments["srv-g5-0"])["image"] == "r/inferpack:cuda"
    assert container(deployments["srv-inf2-1"])["image"] == "r/inferpack:neuron"
    assert container(deployments["srv-c7g-0"])["image"] == "r/inferpack:cpu"
    assert container(deployments["router"])["image"] == "r/inferpack:cpu"
    pulls = {
        d["metadata"]["annotations"]["inferpack.dev/instance-type"]: d["spec"]["template"]["spec"][
            "initContainers"
        ][0]["image"]
        for d in by_kind(manifests, "DaemonSet").values()
    }
    assert pulls == {
        "c7i.2xlarge": "r/inferpack:cpu",
        "c7g.xlarge": "r/inferpack:cpu",
        "g5.xlarge": "r/inferpack:cuda",
        "inf2.xlarge": "r/inferpack:neuron",
    }
    assert container(deployments["srv-g5-0"])["image"] == "r/inferpack:cuda"


def test_local_repository_is_mounted_from_a_claim(plan: Plan) -> None:
    options = RenderOptions(repository="team/repo", repository_pvc="models-claim")
    dep = by_kind(render_manifests(plan, ServerSettings(), options), "Deployment")["srv-c7i-0"]
    cmd = container(dep)["command"]
    assert cmd[cmd.index("--repository") + 1] == "/models/team/repo"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models-claim", "readOnly": True}


def test_a_plans_local_repository_is_the_volume_root(plan: Plan) -> None:
    """A plan made from a local folder holds the host's absolute path, which no pod sees: the servers
    read the claim's root, and the note says to copy the folder there or push it to S3."""
    local = plan.model_copy(update={"repository": "/home/me/work/demo-repo"})
    dep = by_kind(render_manifests(local, ServerSettings(), RenderOptions()), "Deployment")["srv-c7i-0"]
    cmd = container(dep)["command"]
    assert cmd[cmd.index("--repository") + 1] == "/models"
    assert "home" not in " ".join(cmd)
    note = local_repository_note(local, ServerSettings(), RenderOptions(repository_pvc="models-claim"))
    assert note is not None
    assert "/home/me/work/demo-repo" in note and "'models-claim'" in note and "inferpack models push" in note
    # an explicit --repository is a path inside the volume (no note); S3 is left as it is (no note)
    assert local_repository_note(local, ServerSettings(), RenderOptions(repository="team/repo")) is None
    on_s3 = plan.model_copy(update={"repository": "s3://bucket/models"})
    assert effective_repository(on_s3, ServerSettings(), RenderOptions()) == "s3://bucket/models"
    assert local_repository_note(on_s3, ServerSettings(), RenderOptions()) is None


def test_bench_job_is_indexed_with_n_parallel_workers() -> None:
    job = render_bench_job(RenderOptions(bench_workers=6, namespace="serving", bench_args=("--rate", "50")))
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 6, 6)
    c = spec["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["inferpack", "bench", "worker"]
    assert c["command"][c["command"].index("--url") + 1] == "http://router.serving.svc.cluster.local:8080"
    assert c["command"][-2:] == ["--rate", "50"]
    assert c["command"][c["command"].index("--out") + 1] == "-"
    index = next(e for e in c["env"] if e["name"] == "INFERPACK_BENCH_WORKER_INDEX")
    assert "job-completion-index" in index["valueFrom"]["fieldRef"]["fieldPath"]
    assert {"name": "INFERPACK_BENCH_WORKERS", "value": "6"} in c["env"]
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "bench"
    default = render_bench_job(RenderOptions(bench_workers=3))["spec"]["template"]["spec"]["containers"][0]
    # --users is a total over the workers: every worker gets some, so `bench worker` accepts the shape
    assert default["command"][default["command"].index("--users") + 1] == "12"
    custom = render_bench_job(RenderOptions(bench_command=("my-worker", "--x")))
    assert custom["spec"]["template"]["spec"]["containers"][0]["command"] == ["my-worker", "--x"]


def test_accelerator_group_without_accelerators_is_refused() -> None:
    bad = Plan(
        created_by="t",
        groups=[
            ServerGroup(
                name="g",
                instance_type="g5.xlarge",
                target="cuda",
                resources=Resources(cpu=2, memory_mb=1000),
                servers=[ServerPlan(name="s", models=["a"])],
            )
        ],
    )
    with pytest.raises(PlanError, match="accelerators"):
        render_manifests(bad, ServerSettings())


def test_names_stay_valid_dns_labels() -> None:
    long = "a" * 63
    name = k8s_name("srv", long)
    assert len(name) <= 63 and name.startswith("srv-")
    assert k8s_name("srv", long) != k8s_name("srv", "a" * 62 + "b")
    assert server_object_name("0abc") == "srv-0abc"


def test_rendering_is_deterministic(plan: Plan) -> None:
    assert render_manifests(plan, ServerSettings()) == render_manifests(plan, ServerSettings())


def test_bench_pods_get_the_servers_auth_token(plan: Plan) -> None:
    """`--auth-secret` made every load-test request fail with 401: the workers now read the same Secret."""
    options = RenderOptions(auth_secret="inferpack-tokens")
    deployments = by_kind(render_manifests(plan, ServerSettings(), options), "Deployment").values()
    servers = [
        env_of(container(d))
        for d in deployments
        if "INFERPACK_SERVER__AUTH__TOKENS_FILE" in env_of(container(d))
    ]
    assert servers
    server_volumes = [
        v for d in deployments for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth"
    ]
    for opts in (options, RenderOptions(auth_secret="inferpack-tokens", bench_namespace="loadtest")):
        pod = render_bench_job(opts)["spec"]["template"]["spec"]
        worker = pod["containers"][0]
        token_file = env_of(worker)["INFERPACK_BENCH_TOKEN_FILE"]
        assert token_file == servers[0]["INFERPACK_SERVER__AUTH__TOKENS_FILE"]  # same mount, same key
        mount = next(m for m in worker["volumeMounts"] if m["name"] == "auth")
        assert token_file == f"{mount['mountPath']}/tokens" and mount["readOnly"]
        assert next(v for v in pod["volumes"] if v["name"] == "auth") == server_volumes[0]
        assert not any("token" in arg for arg in worker["command"])  # an env variable, never in argv
    plain = render_bench_job(RenderOptions())["spec"]["template"]["spec"]
    assert "INFERPACK_BENCH_TOKEN_FILE" not in env_of(plain["containers"][0])
    assert all(v["name"] != "auth" for v in plain["volumes"])


def test_cli_render_notes_a_local_repository(plan: Plan, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    save_plan(plan.model_copy(update={"repository": "/srv/models/demo"}), plan_file)
    args = ["k8s", "render", "--plan", str(plan_file), "--out", str(tmp_path / "k8s"), "--image", "r/i:1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "/srv/models/demo is a folder on this machine" in text and "inferpack models push" in text
    on_s3 = CliRunner().invoke(app, [*args, "--repository", "s3://b/m"])
    assert on_s3.exit_code == 0 and "models push" not in on_s3.output


def test_router_replicas_only_without_hpa(plan: Plan) -> None:
    fixed = by_kind(render_manifests(plan, ServerSettings(), RenderOptions(router_replicas=3)), "Deployment")
    assert fixed["router"]["spec"]["replicas"] == 3
    scaled = RenderOptions(router_hpa=HpaOptions(min_replicas=2, max_replicas=4))
    assert (
        "replicas"
        not in by_kind(render_manifests(plan, ServerSettings(), scaled), "Deployment")["router"]["spec"]
    )


def test_bench_workers_share_one_start_time_from_the_pod_annotation() -> None:
    job = render_bench_job(RenderOptions(bench_namespace="loadtest"))
    template = job["spec"]["template"]
    assert template["metadata"]["annotations"] == {"inferpack.dev/start-at": "0"}  # 0: at once
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert env["INFERPACK_BENCH_START_AT"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['inferpack.dev/start-at']"}
    }
    patch = start_at_patch(RenderOptions(bench_namespace="loadtest"), 1700000000.25)
    assert patch["metadata"] == {"name": "inferpack-bench", "namespace": "loadtest"}
    assert patch["spec"]["template"]["metadata"]["annotations"] == {
        "inferpack.dev/start-at": "1700000000.250"
    }
    # the idle pod runs no load test: no start time
    idle = render_idle_bench_job(RenderOptions())["spec"]["template"]
    assert "annotations" not in idle["metadata"]
    assert all(e["name"] != "INFERPACK_BENCH_START_AT" for e in idle["spec"]["containers"][0]["env"])
