"""The request overhead of a real server: its service time under load, minus the bare forward.

`inferpack profile` times the bare forward of a tokenised batch; a request through the server also pays
HTTP parsing, JSON, tokenising, the batcher's hand-off to a worker thread and the answer's decoding, and
under load it shares the cores with the other requests' HTTP work, the client and the idle gaps between
arrivals. This starts a real server process (`inferpack serve`, one inference thread, the profiled dtype,
the eager engine without traced graphs (the runtime of the bare forward), batches of 1, up to
`SERVER_MODELS` models of the architecture taken in turn, on a free loopback port), and sends it:

1. a few sequential requests (warm-up, and a first estimate of the service time);
2. `requests` requests as Poisson arrivals at `utilisation` of that estimate (`underload`): each one's
   service time (from the later of its send and the previous answer to its answer), their median and
   P90, is the service time under load.

Bare forwards of the same model and text are timed in the profiling process just before and just after
the load (same minute, same contention). The excess of the service time under load over them (median
over median, P90 over P90) is the profile's `request_overhead_ms` / `request_overhead_p90_ms`, which the
planner adds to every request's service time (`plan --request-overhead-ms` overrides it). The sequential
figures and the server's own mean timings (compute, queue wait) are recorded in the profile's source.

The client runs in this process; its own share (~0.2-0.4 ms of CPU per request with aiohttp,
docs/benchmarks.md) is counted in the overhead, as a router's or load balancer's hop would be in
production.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import numpy as np
import psutil

from inferpack.errors import InferpackError
from inferpack.planner.profiles import ModelProfile, ProfileFile
from inferpack.planner.underload import ServiceUnderLoad, mean_timings, measure_under_load, read_timers
from inferpack.processes import (
    child_env,
    free_port,
    metric_sum,
    server_command,
    spawn,
    terminate,
    wait_ready,
)
from inferpack.repository.local import ModelRepository
from inferpack.runtime.tasks import TextInput

SERVER_MODELS = 4  # models of the architecture the profiling server holds and the requests rotate over
SEQUENTIAL_REQUESTS = 10  # timed one after another, after 3 warm-ups: the first service estimate
FORWARDS = 10  # bare forwards timed just before and again just after the load
DEFAULT_UTILISATION = 0.5


@dataclass(frozen=True)
class ServerTiming:
    """Requests through a real server (ms): under open-loop load, sequentially, and the bare forward timed
    in this process around the load (None when no forward was given)."""

    under_load: ServiceUnderLoad
    sequential_median_ms: float
    sequential_p90_ms: float
    sequential_server_ms: dict[str, float]  # the server's own mean timings over the sequential requests
    models: int  # models the server held (requests rotated over them)
    forward_median_ms: float | None = None
    forward_p90_ms: float | None = None
    # fast runtimes that took over during the measurement (traced graphs, sessions): 0, one runtime throughout
    runtime_swaps: float = 0.0


@dataclass(frozen=True)
class Overhead:
    """A server's per-request time beyond the bare forward (ms), and what it was measured from."""

    median_ms: float
    p90_ms: float
    end_to_end: ServerTiming


def overhead_of(timing: ServerTiming, forward_median_ms: float, forward_p90_ms: float) -> Overhead:
    """The excess of the service time under load over the bare forward's, median over median and P90 over
    P90 (never negative): over the forwards timed around the load when there are some (robust to
    contention that drifts), else over the given figures (the profile's)."""
    load = timing.under_load
    if timing.forward_median_ms is not None and timing.forward_p90_ms is not None:
        forward_median_ms, forward_p90_ms = timing.forward_median_ms, timing.forward_p90_ms
    return Overhead(
        median_ms=max(0.0, load.median_ms - forward_median_ms),
        p90_ms=max(0.0, load.p90_ms - forward_p90_ms),
        end_to_end=timing,
    )


def seed_url(base_url: str, model_id: str, item: TextInput) -> str:
    """The seed API's GET URL for one request item (what the load generator sends)."""
    query = {"seq_0": item.text} | ({"seq_1": item.text_pair} if item.text_pair is not None else {})
    return f"{base_url}/predictions/{quote(model_id, safe='')}?{urlencode(query)}"


def time_requests(
    client: httpx.Client,
    urls: Sequence[str],
    *,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """GET `urls` one after another (the first `warmup` untimed); their times (ms)."""
    times: list[float] = []
    for k, url in enumerate(urls):
        start = clock()
        response = client.get(url)
        elapsed = (clock() - start) * 1000.0
        if response.status_code != 200:
            raise InferpackError(
                f"the profiling server answered {response.status_code} to {url.split('?')[0]}: "
                f"{response.text[:200]}"
            )
        if k >= warmup:
            times.append(elapsed)
    return times


def _rotating(urls: Sequence[str], count: int) -> list[str]:
    return [urls[k % len(urls)] for k in range(count)]


def measure_server_timing(
    repository: str | Path,
    items: dict[str, TextInput],
    *,
    dtype: str,
    intra_op_threads: int,
    requests: int,
    utilisation: float = DEFAULT_UTILISATION,
    log_path: Path,
    start_timeout_s: float = 180.0,
    forward: Callable[[], float] | None = None,
) -> ServerTiming:
    """Start `inferpack serve` with the models of `items` (model id -> its request; one inference thread,
    batches of 1), time sequential requests, then `requests` under open-loop load at `utilisation`, with
    `forward` (a bare forward in this process, returning its ms) timed just before and after the load;
    stop it. The server's log goes to `log_path`."""
    port = free_port()
    cmd = server_command(
        repository=str(repository),
        models=list(items),
        port=port,
        threads=1,
        device="cpu",
        log_level="warning",
        extra_args=[
            *("--dtype", dtype, "--intra-op-threads", str(intra_op_threads), "--max-batch-size", "1"),
            *("--engine", "eager"),  # the runtime of the bare forward it is compared with
        ],
    )
    base = f"http://127.0.0.1:{port}"
    env = child_env(threads=1, intra_op_threads=intra_op_threads)
    # nor traced graphs (server.trace_after_batches): a hot model's graph mid-measurement would make the
    # service time a mix of two runtimes, and the bare forward it is compared with is eager
    env["INFERPACK_SERVER__TRACE_AFTER_BATCHES"] = "0"
    proc = spawn(cmd, log_path, env)
    try:
        try:
            wait_ready(base, proc, timeout_s=start_timeout_s)
        except RuntimeError as exc:
            raise InferpackError(f"{exc} (log: {log_path})") from exc
        urls = [seed_url(base, model_id, item) for model_id, item in items.items()]
        with httpx.Client(timeout=60.0, trust_env=False) as client:
            warm = _rotating(urls, max(3, len(urls)))  # every model answers once before the timing
            time_requests(client, warm, warmup=len(warm))
            before = read_timers(client, base)
            sequential = time_requests(client, _rotating(urls, SEQUENTIAL_REQUESTS), warmup=0)
            sequential_server_ms = mean_timings(before, read_timers(client, base))
        seq_median = float(statistics.median(sequential))
        forwards = [forward() for _ in range(FORWARDS)] if forward is not None else []
        load = measure_under_load(
            base, _rotating(urls, requests), service_ms=seq_median, utilisation=utilisation
        )
        forwards += [forward() for _ in range(FORWARDS)] if forward is not None else []
        metrics = httpx.get(f"{base}/metrics", timeout=30.0, trust_env=False).text
        swaps = metric_sum(metrics, "inferpack_runtime_swaps_total")
    finally:
        if proc.poll() is None:  # a server that died is reaped already: the error above is the one to see
            terminate([psutil.Process(proc.pid)], timeout_s=15.0)
        proc.wait(timeout=30)
    return ServerTiming(
        under_load=load,
        sequential_median_ms=seq_median,
        sequential_p90_ms=float(np.quantile(sequential, 0.9)),
        sequential_server_ms=sequential_server_ms,
        models=len(items),
        forward_median_ms=float(statistics.median(forwards)) if forwards else None,
        forward_p90_ms=float(np.quantile(forwards, 0.9)) if forwards else None,
        runtime_swaps=swaps,
    )


def forward_reference(profile: ModelProfile) -> tuple[float, float, int, str]:
    """The bare-forward point a one-thread-worker server at batch 1 runs: (median ms, P90 ms, intra-op
    threads, dtype) of the batch-1 point with the fewest threads (of the first dtype measured), on the eager
    forward: the server it is compared with does not trace."""
    first = profile.points[0].dtype
    ones = [p for p in profile.points if p.batch_size == 1 and p.dtype == first and not p.traced]
    if not ones:
        raise InferpackError(
            f"profile {profile.model_class} has no batch-1 point to compare the server with",
            hint="include 1 in --batch-sizes",
        )
    point = min(ones, key=lambda p: p.threads)
    return point.latency_ms, point.latency_p90_ms or point.latency_ms, point.threads, point.dtype


def with_overhead(profile: ModelProfile, overhead: Overhead) -> ModelProfile:
    """The profile with its measured request overhead, and its source saying how it was measured."""
    t = overhead.end_to_end
    load = t.under_load
    forward = (
        f"the bare forward timed here around the load ({t.forward_median_ms:.1f} ms, "
        f"P90 {t.forward_p90_ms:.1f})"
        if t.forward_median_ms is not None
        else "the profiled bare forward"
    )

    def means(timings: dict[str, float]) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v:.1f} ms" for k, v in sorted(timings.items())) or "none"

    note = (
        f"; request overhead = service time under Poisson load through `inferpack serve` ({t.models} "
        f"model(s), {load.rate_rps:.2f} req/s for utilisation {load.utilisation:g}, measured busy "
        f"{load.busy:.2f}; {load.sent} requests, {load.waited} waited; service from the later of send and "
        f"the previous answer to the answer: {load.median_ms:.1f} ms, P90 {load.p90_ms:.1f} ms) minus "
        f"{forward}; sequential requests {t.sequential_median_ms:.1f} ms (P90 {t.sequential_p90_ms:.1f}); "
        f"the server's means under load: {means(load.server_ms)}; sequential: {means(t.sequential_server_ms)}"
    )
    return profile.model_copy(
        update={
            "request_overhead_ms": round(overhead.median_ms, 3),
            "request_overhead_p90_ms": round(overhead.p90_ms, 3),
            "source": profile.source + note,
        }
    )


def overheads_for_repository(
    profile_file: ProfileFile,
    root: str | Path,
    repository: ModelRepository,
    model_ids: list[str],
    failed: dict[str, str],
    *,
    requests: int,
    log_dir: Path,
    utilisation: float = DEFAULT_UTILISATION,
) -> ProfileFile:
    """The profile of `model_ids` with each architecture's request overhead measured through a real server
    (`measure_server_timing`) holding up to SERVER_MODELS of its models that loaded (`failed`: the
    profiler's failures), with the profiler's request text, and the first one's bare forward timed in
    this process around the load. `root` is the repository as the server opens it (folder or s3://)."""
    from inferpack.planner.profiler import group_by_architecture, request_item

    groups = group_by_architecture(repository, model_ids)
    measured = [ids for key, ids in groups.items() if key not in failed]  # the profiles' order
    profiles: list[ModelProfile] = []
    for prof, ids in zip(profile_file.profiles, measured, strict=True):
        ok = [m for m in ids if m not in failed][:SERVER_MODELS]
        items = {m: request_item(repository.manifest(m, repository.versions(m)[-1])) for m in ok}
        median, p90, threads, dtype = forward_reference(prof)
        # one model loaded here at once
        with bare_forward(repository, ok[0], items[ok[0]], dtype, threads) as forward:
            timing = measure_server_timing(
                root,
                items,
                dtype=dtype,
                intra_op_threads=threads,
                requests=requests,
                utilisation=utilisation,
                log_path=log_dir.resolve() / f"profile-server-{prof.model_class}.log",
                forward=forward,
            )
        profiles.append(with_overhead(prof, overhead_of(timing, median, p90)))
    return profile_file.model_copy(update={"profiles": profiles})


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
