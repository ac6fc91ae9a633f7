"""Every rendered manifest against the real Kubernetes schemas (strict, warnings are errors), and the
written base through the real `kubectl kustomize`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inferpack.deploy.kustomize import write_base
from inferpack.deploy.options import HpaOptions, RenderOptions
from inferpack.deploy.render import (
    render_bench_job,
    render_bench_namespace,
    render_idle_bench_job,
    render_manifests,
)
from inferpack.plan import Plan
from inferpack.settings import ServerSettings

VERSIONS = ["1.29.0", "1.33.0"]
FULL = RenderOptions(
    role_arn="arn:aws:iam::123456789012:role/inferpack-s3",
    router_hpa=HpaOptions(),
    metrics_namespace="monitoring",
    auth_secret="inferpack-tokens",
    admin_secret="inferpack-admin",
    model_cache_size_mb=20000,
    s3_endpoint_url="http://minio.storage:9000",
    aws_region="eu-west-1",
    # load tests in their own namespace, on their own nodes, in the reference's sequential mode
    bench_namespace="loadtest",
    bench_node_selector={"node.kubernetes.io/instance-type": "c7i.4xlarge", "team": "perf"},
    bench_args=("--mode", "seq"),
)
LOCAL_REPO = RenderOptions(repository="repo", router_replicas=1, prepull=False)


def _bench(plan: Plan, options: RenderOptions) -> list[dict[str, Any]]:
    return [
        render_bench_job(options),
        *render_bench_namespace(plan, options),
        render_idle_bench_job(options),
    ]


def _all(plan: Plan, options: RenderOptions) -> list[dict[str, Any]]:
    return [*render_manifests(plan, ServerSettings(), options), *_bench(plan, options)]


def _write(plan: Plan, out: Path, options: RenderOptions) -> list[dict[str, Any]]:
    manifests = render_manifests(plan, ServerSettings(), options)
    write_base(
        out,
        manifests,
        render_bench_job(options),
        render_bench_namespace(plan, options),
        render_idle_bench_job(options),
    )
    return manifests


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("options", [FULL, LOCAL_REPO], ids=["s3-hpa-auth", "pvc-minimal"])
def test_every_manifest_validates_strictly(plan: Plan, version: str, options: RenderOptions) -> None:
    manifests = _all(plan, options)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "ConfigMap", "Job", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    for manifest in manifests:
        # SchemaNotFoundError (the CLI's WARN) and ValidationError both raise: no warning passes silently.
        used = kubernetes_validate.validate(manifest, version, strict=True)
        assert used == version.rsplit(".", 1)[0], f"validated against {used}, not {version}"


@pytest.mark.parametrize("version", VERSIONS)
def test_strict_validation_catches_a_typo(plan: Plan, version: str) -> None:
    """The check is real: an unknown field fails it."""
    manifest = next(m for m in render_manifests(plan, ServerSettings()) if m["kind"] == "Deployment")
    manifest["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_written_files_pass_the_validator_cli_without_warnings(
    plan: Plan, tmp_path: Path, version: str
) -> None:
    _write(plan, tmp_path, FULL)
    files = sorted(str(p) for p in tmp_path.rglob("*.yaml") if p.name != "kustomization.yaml")
    cli = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run(
        [str(cli), "--strict", "-k", version, *files],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    bad = [line for line in lines if not line.startswith("INFO ")]
    assert proc.returncode == 0 and not bad, "\n".join(bad)
    # bench/ and bench-idle/ each carry the bench namespace's objects
    written = len(_all(plan, FULL)) + len(render_bench_namespace(plan, FULL))
    assert sum("passed" in line for line in lines) == written


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed here; `kubectl kustomize` cannot be checked")
    return path


def test_kubectl_kustomize_builds_the_base_and_the_bench_job(plan: Plan, tmp_path: Path) -> None:
    kubectl = _kubectl()
    manifests = _write(plan, tmp_path, FULL)
    built = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (m["kind"], m["metadata"]["name"]) for m in manifests
    )
    job = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "bench")], capture_output=True, text=True, check=False
    )
    assert job.returncode == 0, job.stderr
    # the bench namespace of its own comes first, with its copy of the placement ConfigMap
    bench_docs = [d for d in yaml.safe_load_all(job.stdout) if d]
    assert [d["kind"] for d in bench_docs] == ["Namespace", "ConfigMap", "Job"]
    assert {d["metadata"].get("namespace", "loadtest") for d in bench_docs} == {"loadtest"}
    idle = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "bench-idle")], capture_output=True, text=True, check=False
    )
    assert idle.returncode == 0, idle.stderr
    idle_job = [d for d in yaml.safe_load_all(idle.stdout) if d][-1]
    assert idle_job["kind"] == "Job" and idle_job["spec"]["parallelism"] == 1
    for doc in [*bench_docs, idle_job]:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_an_overlay_can_patch_the_base(plan: Plan, tmp_path: Path) -> None:
    """What docs/kubernetes.md tells platform teams to do: a patch in an overlay, the base untouched."""
    kubectl = _kubectl()
    write_base(tmp_path / "base", render_manifests(plan, ServerSettings(), FULL))
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../base"],
                "images": [
                    {
                        "name": "inferpack",  # the image name without its tag, as docs/kubernetes.md shows
                        "newName": "123.dkr.ecr.eu-west-1.amazonaws.com/inferpack",
                        "newTag": "1.2",
                    }
                ],
                "patches": [
                    {
                        "target": {"kind": "Deployment", "name": "router"},
                        "patch": "- op: replace\n  path: /spec/replicas\n  value: 5\n",
                    }
                ],
            }
        )
    )
    built = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built.stdout) if d}
    assert docs[("Deployment", "router")]["spec"]["replicas"] == 5
    image = docs[("Deployment", "srv-c7i-0")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "123.dkr.ecr.eu-west-1.amazonaws.com/inferpack:1.2"
    for doc in docs.values():
        if doc["kind"] in ("Deployment", "Job", "DaemonSet"):
            kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_rerender_removes_files_of_servers_that_left_the_plan(plan: Plan, tmp_path: Path) -> None:
    write_base(tmp_path, render_manifests(plan, ServerSettings()))
    assert (tmp_path / "servers" / "c7g-1.yaml").is_file()
    smaller = plan.model_copy(deep=True)
    del smaller.groups[1].servers[1]
    (tmp_path / "servers" / "mine.yaml").write_text("# a user's own file, not ours\n")
    write_base(tmp_path, render_manifests(smaller, ServerSettings()))
    assert not (tmp_path / "servers" / "c7g-1.yaml").exists()
    assert (tmp_path / "servers" / "mine.yaml").exists()
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    assert "servers/c7g-1.yaml" not in kustomization["resources"]
    assert "servers/c7g-0.yaml" in kustomization["resources"]
