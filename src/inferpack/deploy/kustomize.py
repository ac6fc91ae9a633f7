"""Write rendered manifests as a kustomize base (the only I/O of rendering).

Layout of `--out DIR`:

    DIR/kustomization.yaml        resources: every file below (the base a team overlays)
    DIR/00-namespace.yaml, 01-serviceaccount.yaml, servers/<server>.yaml, servers-policy.yaml,
    DIR/router.yaml, prepull.yaml
    DIR/bench/kustomization.yaml  the load-test Job, apart so that applying the base starts no test
    DIR/bench/job.yaml
    DIR/bench/namespace.yaml      with a bench namespace of its own: that Namespace + the placement copy
    DIR/bench-idle/...            the same for the idle test pod (`inferpack k8s bench --idle`)

Files are rewritten whole; a file of an earlier render that this one no longer makes (a server that left
the plan) is removed, so `kubectl apply -k` never resurrects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from inferpack.deploy.options import LABEL_COMPONENT, LABEL_SERVER

Manifest = dict[str, Any]
HEADER = "# Rendered by `inferpack k8s render`; patch it with an overlay rather than editing it.\n"


def file_for(manifest: Manifest) -> str:
    """The base-relative file a manifest belongs in."""
    kind = manifest["kind"]
    labels = manifest["metadata"].get("labels", {})
    component = labels.get(LABEL_COMPONENT)
    if kind == "Namespace":
        return "00-namespace.yaml"
    if kind == "ServiceAccount":
        return "01-serviceaccount.yaml"
    if component == "server" and LABEL_SERVER in labels:
        return f"servers/{labels[LABEL_SERVER]}.yaml"
    if component == "server":
        return "servers-policy.yaml"
    if component == "router":
        return "router.yaml"
    if component == "prepull":
        return "prepull.yaml"
    if component == "bench":
        return "bench/job.yaml"
    return "other.yaml"


def dump_documents(manifests: list[Manifest]) -> str:
    """Manifests as one multi-document YAML text (key order kept as rendered, for readable review)."""
    return HEADER + "".join(
        "---\n" + yaml.safe_dump(m, sort_keys=False, default_flow_style=False, width=120) for m in manifests
    )


def kustomization(resources: list[str]) -> Manifest:
    """A kustomization listing `resources`."""
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources}


START_AT_FILE = "start-at.yaml"


def _bench_folder(
    folder: str, job: Manifest, extra: list[Manifest], start_at: Manifest | None = None
) -> dict[str, str]:
    """A kustomization of one Job (and the objects of its own namespace, applied with it), with the patch
    of its workers' common start time when given (`bench/start-at.yaml`, rewritten by `k8s bench`)."""
    files = {f"{folder}/job.yaml": dump_documents([job])}
    if extra:
        files[f"{folder}/namespace.yaml"] = dump_documents(extra)
    names = sorted(path.split("/", 1)[1] for path in files)
    # The Job needs the base's ConfigMap (or its copy in namespace.yaml), so the base is applied first.
    kust = kustomization(names)
    if start_at is not None:
        files[f"{folder}/{START_AT_FILE}"] = dump_documents([start_at])
        kust["patches"] = [{"path": START_AT_FILE}]
    files[f"{folder}/kustomization.yaml"] = HEADER + yaml.safe_dump(kust, sort_keys=False)
    return files


def set_start_at(folder: Path, start_at: float) -> Path | None:
    """Set the common start time (Unix seconds) in a rendered bench folder's patch (`k8s bench`, just
    before applying the Job); None when the folder was rendered without one."""
    path = folder / START_AT_FILE
    if not path.is_file():
        return None
    patch = next(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    key = next(iter(annotations))
    annotations[key] = f"{start_at:.3f}"
    path.write_text(dump_documents([patch]))
    return path


def layout(
    base: list[Manifest],
    bench_job: Manifest | None,
    bench_extra: list[Manifest] | None = None,
    idle_job: Manifest | None = None,
    start_at: Manifest | None = None,
) -> dict[str, str]:
    """Relative path -> file text for the whole output folder (pure; `write_base` writes it)."""
    files: dict[str, list[Manifest]] = {}
    for manifest in base:
        files.setdefault(file_for(manifest), []).append(manifest)
    texts = {path: dump_documents(items) for path, items in files.items()}
    texts["kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization(sorted(files)), sort_keys=False)
    if bench_job is not None:
        texts.update(_bench_folder("bench", bench_job, bench_extra or [], start_at))
    if idle_job is not None:
        texts.update(_bench_folder("bench-idle", idle_job, bench_extra or []))
    return texts


def write_base(
    out: Path,
    base: list[Manifest],
    bench_job: Manifest | None = None,
    bench_extra: list[Manifest] | None = None,
    idle_job: Manifest | None = None,
    start_at: Manifest | None = None,
) -> list[Path]:
    """Write the folder; remove YAML files an earlier render left that this one did not make."""
    texts = layout(base, bench_job, bench_extra, idle_job, start_at)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for relative, text in sorted(texts.items()):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    for stale in out.rglob("*.yaml"):
        relative = stale.relative_to(out).as_posix()
        if relative not in texts and stale.read_text().startswith(HEADER):
            stale.unlink()
    return written


def _rendered_bench_job(out: Path) -> dict[str, Any] | None:
    path = out / "bench" / "job.yaml"
    if not path.is_file():
        return None
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "Job":
            return doc
    return None


def rendered_bench_namespace(out: Path) -> str | None:
    """The namespace the rendered load-test Job runs in (None when the folder has no bench Job)."""
    job = _rendered_bench_job(out)
    namespace = (job or {}).get("metadata", {}).get("namespace")
    return str(namespace) if namespace else None


def rendered_bench_secret(out: Path) -> str | None:
    """The token Secret the rendered load-test workers mount (`--auth-secret`), or None."""
    job = _rendered_bench_job(out) or {}
    for volume in job.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
        if isinstance(volume, dict) and "secret" in volume:
            return str(volume["secret"]["secretName"])
    return None
