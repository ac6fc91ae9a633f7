"""The request overhead of a real server: end-to-end time through HTTP minus the bare forward.

`inferpack profile` times the bare forward of a tokenised batch; a request through the server also pays
HTTP parsing, JSON, tokenising, the batcher's hand-off to a worker thread and the answer's decoding.
This starts a real server process (`inferpack serve`, one inference thread, the profiled dtype, on a
free loopback port), sends it requests one at a time (so nothing queues) with the same text the
profiler times, and reports the end-to-end median and P90 and their excess over the bare forward's.
That excess is the profile's `request_overhead_ms`, which the planner adds to every request's
service time (`plan --request-overhead-ms` overrides it).

The client runs in this process; its own share (building and reading a request with httpx, ~0.3 ms
here) is counted in the overhead, as a router's or load balancer's hop would be in production.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

from inferpack.errors import InferpackError
from inferpack.planner.profiles import ModelProfile, ProfileFile
from inferpack.processes import child_env, free_port, server_command, spawn, terminate, wait_ready
from inferpack.repository.local import ModelRepository
from inferpack.runtime.tasks import TextInput


@dataclass(frozen=True)
class ServerTiming:
    """End-to-end times of sequential requests through a real server (ms)."""

    median_ms: float
    p90_ms: float
    requests: int
    # The bare forward timed in this process right after each request (same window, same contention):
    forward_median_ms: float | None = None
    forward_p90_ms: float | None = None
    paired_excess_ms: float | None = None  # median of (request - forward) over the pairs


@dataclass(frozen=True)
class Overhead:
    """A server's per-request time beyond the bare forward (ms), and what it was measured from."""

    median_ms: float
    p90_ms: float
    end_to_end: ServerTiming


def overhead_of(end_to_end: ServerTiming, forward_median_ms: float, forward_p90_ms: float) -> Overhead:
    """The excess of the end-to-end times over the bare forward's (never negative): over the forwards
    paired with the requests when there are some (robust to contention that drifts), else over the
    given figures (the profile's)."""
    if end_to_end.paired_excess_ms is not None and end_to_end.forward_p90_ms is not None:
        median, p90 = end_to_end.paired_excess_ms, end_to_end.p90_ms - end_to_end.forward_p90_ms
    else:
        median, p90 = end_to_end.median_ms - forward_median_ms, end_to_end.p90_ms - forward_p90_ms
    return Overhead(median_ms=max(0.0, median), p90_ms=max(0.0, p90), end_to_end=end_to_end)


def seed_body(item: TextInput) -> dict[str, str]:
    """The seed API's JSON body for one request item."""
    body = {"seq_0": item.text}
    if item.text_pair is not None:
        body["seq_1"] = item.text_pair
    return body


def time_requests(
    client: httpx.Client,
    url: str,
    body: dict[str, str],
    requests: int,
    *,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    forward: Callable[[], float] | None = None,
) -> ServerTiming:
    """Send `warmup` then `requests` POSTs one after another; the median and P90 of the timed ones.
    With `forward` (a bare forward, returning its ms), one runs after each request, so both are timed
    under the same contention and their paired difference is the overhead."""
    times: list[float] = []
    forwards: list[float] = []
    for k in range(warmup + requests):
        start = clock()
        response = client.post(url, json=body)
        elapsed = (clock() - start) * 1000.0
        if response.status_code != 200:
            raise InferpackError(
                f"the profiling server answered {response.status_code} to {url}: {response.text[:200]}"
            )
        bare = forward() if forward is not None else None
        if k >= warmup:
            times.append(elapsed)
            if bare is not None:
                forwards.append(bare)
    if not forwards:
        return ServerTiming(float(statistics.median(times)), float(np.quantile(times, 0.9)), len(times))
    return ServerTiming(
        median_ms=float(statistics.median(times)),
        p90_ms=float(np.quantile(times, 0.9)),
        requests=len(times),
        forward_median_ms=float(statistics.median(forwards)),
        forward_p90_ms=float(np.quantile(forwards, 0.9)),
        paired_excess_ms=float(statistics.median(np.subtract(times, forwards).tolist())),
    )


def measure_server_timing(
    repository: str | Path,
    model_id: str,
    item: TextInput,
    *,
    dtype: str,
    intra_op_threads: int,
    requests: int,
    log_path: Path,
    start_timeout_s: float = 180.0,
    forward: Callable[[], float] | None = None,
) -> ServerTiming:
    """Start `inferpack serve` with `model_id` only (one inference thread), time `requests` sequential
    requests, stop it. The server's log goes to `log_path`."""
    port = free_port()
    cmd = server_command(
        repository=str(repository),
        models=[model_id],
        port=port,
        threads=1,
        device="cpu",
        log_level="warning",
        extra_args=["--dtype", dtype],
    )
    env = child_env(threads=1)
    env["INFERPACK_SERVER__INTRA_OP_THREADS"] = str(intra_op_threads)
    env["INFERPACK_SERVER__BATCHING__MAX_BATCH_SIZE"] = "1"
    url = f"http://127.0.0.1:{port}"
    proc = spawn(cmd, log_path, env)
    try:
        try:
            wait_ready(url, proc, timeout_s=start_timeout_s)
        except RuntimeError as exc:
            raise InferpackError(f"{exc} (log: {log_path})") from exc
        with httpx.Client(timeout=60.0, trust_env=False) as client:
            url = f"{url}/predictions/{model_id}"
            return time_requests(client, url, seed_body(item), requests, forward=forward)
    finally:
        terminate([psutil.Process(proc.pid)], timeout_s=15.0)
        proc.wait(timeout=30)


def forward_reference(profile: ModelProfile) -> tuple[float, float, int, str]:
    """The bare-forward point a one-thread-worker server at batch 1 runs: (median ms, P90 ms, intra-op
    threads, dtype) of the batch-1 point with the fewest threads (of the first dtype measured)."""
    ones = [p for p in profile.points if p.batch_size == 1 and p.dtype == profile.points[0].dtype]
    if not ones:
        raise InferpackError(
            f"profile {profile.model_class} has no batch-1 point to compare the server with",
            hint="include 1 in --batch-sizes",
        )
    point = min(ones, key=lambda p: p.threads)
    return point.latency_ms, point.latency_p90_ms or point.latency_ms, point.threads, point.dtype


def with_overhead(profile: ModelProfile, overhead: Overhead) -> ModelProfile:
    """The profile with its measured request overhead, and its source saying how it was measured."""
    e2e = overhead.end_to_end
    paired = (
        f"the bare forward timed after each ({e2e.forward_median_ms:.1f} ms, P90 {e2e.forward_p90_ms:.1f})"
        if e2e.forward_median_ms is not None
        else "the profiled bare forward"
    )
    note = (
        f"; request overhead = {e2e.requests} sequential requests through `inferpack serve` "
        f"({e2e.median_ms:.1f} ms, P90 {e2e.p90_ms:.1f} ms) minus {paired}"
    )
    return profile.model_copy(
        update={
            "request_overhead_ms": round(overhead.median_ms, 3),
            "request_overhead_p90_ms": round(overhead.p90_ms, 3),
            "source": profile.source + note,
        }
    )


def add_request_overheads(
    profile_file: ProfileFile,
    repository: str | Path,
    model_of_class: dict[str, str],
    item_of_class: dict[str, TextInput],
    *,
    requests: int,
    log_dir: Path,
    forward_of_class: dict[str, Callable[[], float]] | None = None,
) -> ProfileFile:
    """Measure the request overhead of each profiled class through a real server (one model of the
    class, `model_of_class`) and return the file with it. `forward_of_class` times a bare forward of
    the same model and input in this process, paired with each request (else the profile's figure)."""
    profiles = []
    for prof in profile_file.profiles:
        median, p90, threads, dtype = forward_reference(prof)
        timing = measure_server_timing(
            repository,
            model_of_class[prof.model_class],
            item_of_class[prof.model_class],
            dtype=dtype,
            intra_op_threads=threads,
            requests=requests,
            log_path=log_dir / f"profile-server-{prof.model_class}.log",
            forward=(forward_of_class or {}).get(prof.model_class),
        )
        profiles.append(with_overhead(prof, overhead_of(timing, median, p90)))
    return profile_file.model_copy(update={"profiles": profiles})


def overheads_for_repository(
    profile_file: ProfileFile,
    root: str | Path,
    repository: ModelRepository,
    model_ids: list[str],
    failed: dict[str, str],
    *,
    requests: int,
    log_dir: Path,
) -> ProfileFile:
    """`add_request_overheads` for a profile of `model_ids`: each architecture is timed with its first
    model that loaded (`failed`: the profiler's failures), using the profiler's request text, with
    that model's bare forward timed in this process after each request."""
    from inferpack.planner.profiler import group_by_architecture, request_item

    models: dict[str, str] = {}
    items: dict[str, TextInput] = {}
    for key, ids in group_by_architecture(repository, model_ids).items():
        ok = [m for m in ids if m not in failed]
        if ok:
            models[key] = ok[0]
            items[key] = request_item(repository.manifest(ok[0], repository.versions(ok[0])[-1]))
    out = profile_file
    for prof in profile_file.profiles:  # one architecture at a time: one model loaded here at once
        _, _, threads, dtype = forward_reference(prof)
        with bare_forward(repository, models[prof.model_class], items[prof.model_class], dtype, threads) as f:
            one = profile_file.model_copy(update={"profiles": [prof]})
            timed = add_request_overheads(
                one, root, models, items, requests=requests, log_dir=log_dir.resolve(),
                forward_of_class={prof.model_class: f},
            )  # fmt: skip
        out = out.model_copy(
            update={"profiles": [timed.profiles[0] if p is prof else p for p in out.profiles]}
        )
    return out


@contextlib.contextmanager
def bare_forward(
    repository: ModelRepository, model_id: str, item: TextInput, dtype: str, threads: int
) -> Iterator[Callable[[], float]]:
    """A function timing one bare forward (ms) of `item` on `model_id`, loaded here for the duration."""
    import torch

    from inferpack.planner.profiler import default_loader

    model = default_loader(repository, model_id, "bf16" if dtype == "bf16" else "fp32")
    encoded = model.tokenizer.encode([item])
    old = torch.get_num_threads()

    def forward() -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        model.forward(encoded)
        return (time.perf_counter() - start) * 1000.0

    try:
        yield forward
    finally:
        torch.set_num_threads(old)
