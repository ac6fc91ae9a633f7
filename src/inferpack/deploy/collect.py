"""`inferpack k8s collect`: fetch every load-test worker's log and merge their results exactly.

Each worker (`inferpack bench worker --out -`) prints its result, histograms included, as the last JSON
line of its stdout; the merge adds histogram counts (never averages percentiles), via the load-test
package's own `aggregate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from inferpack.deploy.kubectl import Kubectl, KubectlError, Runner, run
from inferpack.loadtest.result import BenchResult, aggregate, load_result, save_result


def merge_worker_logs(logs: list[Path]) -> BenchResult:
    """Merge the results found in worker log files (the last result line of each)."""
    if not logs:
        raise KubectlError("no load-test worker logs to merge", hint="run `inferpack k8s bench` first")
    return aggregate([load_result(path) for path in logs])


def collect(
    kubectl: Kubectl,
    out_dir: Path,
    *,
    expected_workers: int | None = None,
    runner: Runner | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[BenchResult, Path]:
    """Save each worker pod's log under `out_dir/logs/`, merge them, write `out_dir/result.json`.

    The pods are those of the current Job (selected by its uid: never a same-named earlier run's), and
    every worker must be there: fewer results than the Job's completions (`expected_workers` overrides
    it) is refused rather than merged into an understated throughput."""
    job = json.loads(run([kubectl.bench_job()], runner=runner, echo=echo, capture=True)[0])
    uid = str(job.get("metadata", {}).get("uid", ""))
    if not uid:
        raise KubectlError("the load-test Job has no uid", hint="run `inferpack k8s bench` first")
    expected = (
        expected_workers if expected_workers is not None else int(job.get("spec", {}).get("completions", 1))
    )
    listing = json.loads(run([kubectl.job_pods(uid)], runner=runner, echo=echo, capture=True)[0] or "{}")
    pods = sorted(
        p["metadata"]["name"]
        for p in listing.get("items", [])
        if p.get("status", {}).get("phase") == "Succeeded"
    )
    if len(pods) < expected:
        raise KubectlError(
            f"found {len(pods)} finished load-test workers of the Job, expected {expected}",
            hint="a worker failed, was deleted or still runs: see `inferpack k8s logs --component bench`, "
            "then rerun `inferpack k8s bench`",
        )
    logs_dir = out_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for pod, text in zip(
        pods, run([kubectl.pod_log(p) for p in pods], runner=runner, echo=echo, capture=True), strict=True
    ):
        path = logs_dir / f"{pod}.log"
        path.write_text(text)
        paths.append(path)
    merged = merge_worker_logs(paths)
    indices = {w.index for w in merged.workers}
    if len(indices) < expected:
        raise KubectlError(
            f"the logs hold results of {len(indices)} distinct workers, expected {expected}",
            hint="rerun `inferpack k8s bench`",
        )
    result_path = out_dir / "result.json"
    save_result(merged, result_path)
    return merged, result_path
