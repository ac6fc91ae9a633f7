"""`inferpack k8s collect`: fetch every load-test worker's log and merge their results exactly.

Each worker (`inferpack bench worker --out -`) prints its result, histograms included, as the last JSON
line of its stdout; the merge adds histogram counts (never averages percentiles), via the load-test
package's own `aggregate`.
"""

from __future__ import annotations

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
    """Save each worker pod's log under `out_dir/logs/`, merge them, write `out_dir/result.json`."""
    listing = run([kubectl.bench_pods()], runner=runner, echo=echo, capture=True)[0]
    pods = sorted(line.strip() for line in listing.splitlines() if line.strip())
    if not pods:
        raise KubectlError("the load-test Job has no pods", hint="run `inferpack k8s bench` first")
    if expected_workers is not None and len(pods) != expected_workers:
        raise KubectlError(
            f"found {len(pods)} load-test pods, expected {expected_workers}",
            hint="a worker was retried or deleted; rerun `inferpack k8s bench`",
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
    result_path = out_dir / "result.json"
    save_result(merged, result_path)
    return merged, result_path
