"""A GPU server against its bare loop: same models, same request, one run on one machine.

1. Makes N unique demo QA models (`--arch bert-base` by default: the 110M-parameter class the planner
   places on g4dn/g5), once, in bench/results/gpu-repo.
2. The bare loop: the models loaded on the GPU in this process (`load_model(..., device="cuda:0")`, the
   server's dtype), tokenise + forward + decode of the same request, round-robin over the models, on as
   many threads as the server runs (two per GPU), at batch 1 and at the server's largest batch; the better
   one is the limit. A forward-only timing (CUDA-synchronised) says how much of a request is the GPU.
3. The server: `inferpack serve --device cuda:0` on those models, driven by closed-loop HTTP clients in
   separate processes (so the client's own CPU does not share the GIL with the server's), at several
   concurrencies, against the seed API (`/predictions/{model}`), a random model per request.
Prints req/s, P50/P90/P99, and server / limit per concurrency.

    .venv/bin/python bench/bench_gpu.py [--models 4] [--arch bert-base] [--duration 10]
        [--concurrency 1,4,16,64] [--max-wait-ms 2] [--dtype auto]

Needs a CUDA build of PyTorch and an NVIDIA GPU; elsewhere it exits with status 2 and says what is
missing. Compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import torch
from bench_server import CONTEXT, QUESTION, ROOT  # the same request and results folder as the CPU bench

from inferpack.errors import DeviceUnavailable
from inferpack.processes import free_port, server_command, wait_ready
from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.devices import THREADS_PER_GPU, ResolvedDevice, open_device
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.runtime.tasks import TextInput
from inferpack.settings import DTypeChoice

CLIENT_PROCESSES = 4
Arch = Literal["minilm", "bert-base", "tiny"]


@dataclass(frozen=True)
class Measured:
    """Throughput and latency percentiles (ms) of one measurement."""

    rps: float
    p50: float
    p90: float
    p99: float
    errors: int = 0


def percentiles(latencies_s: list[float], rps: float, errors: int = 0) -> Measured:
    """Measured figures from per-request latencies in seconds."""
    if not latencies_s:
        return Measured(rps, float("nan"), float("nan"), float("nan"), errors)
    cuts = statistics.quantiles([x * 1000 for x in latencies_s], n=100, method="inclusive")
    return Measured(rps, cuts[49], cuts[89], cuts[98], errors)


def forward_ms(model: LoadedModel, batch: int, repeats: int = 50) -> float:
    """Median GPU time of one forward (no tokenising or decoding), synchronised around each call."""
    encoded = model.tokenizer.encode([TextInput(QUESTION, CONTEXT)] * batch)
    times = []
    for _ in range(repeats + 5):
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.forward(encoded)  # ends with a copy to the host, which waits for the kernels
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[5:]) * 1000


def bare_loop(models: list[LoadedModel], threads: int, batch: int, seconds: float) -> Measured:
    """Requests/s of tokenise + forward + decode alone, `threads` threads, `batch` requests per call."""
    items = [TextInput(QUESTION, CONTEXT)] * batch
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            started = time.perf_counter()
            models[i % len(models)].predict(items)
            latencies[k].append(time.perf_counter() - started)
            i += 1

    for m in models:
        m.predict(items)  # warm-up outside the timed window
    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    flat = [x for per in latencies for x in per]
    return percentiles(flat, len(flat) * batch / elapsed)


def _client(url: str, ids: list[str], users: int, seconds: float, seed: int) -> tuple[list[float], int]:
    """One client process: `users` closed-loop threads with keep-alive connections; latencies, errors."""
    params = {"seq_0": QUESTION, "seq_1": CONTEXT}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def user(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        mine: list[float] = []
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = client.get(f"/predictions/{rng.choice(ids)}", params=params)
                if response.status_code == 200:
                    mine.append(time.perf_counter() - started)
                else:
                    with lock:
                        errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0]


def load_server(url: str, ids: list[str], concurrency: int, seconds: float) -> Measured:
    """Closed-loop load from up to CLIENT_PROCESSES processes sharing `concurrency` users."""
    processes = min(CLIENT_PROCESSES, concurrency)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        started = time.perf_counter()
        futures = [pool.submit(_client, url, ids, n, seconds, i) for i, n in enumerate(shares)]
        parts = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
    latencies = [x for part, _ in parts for x in part]
    return percentiles(latencies, len(latencies) / elapsed, sum(e for _, e in parts))


def start_server(repo: Path, dtype: str, max_wait_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    """`inferpack serve --device cuda:0` on the repository; returns the process and its URL once ready."""
    port = free_port()
    env = {**os.environ, "INFERPACK_SERVER__BATCHING__MAX_WAIT_MS": str(max_wait_ms)}
    cmd = server_command(
        repository=str(repo),
        models=None,
        port=port,
        threads=None,  # the server's default on a GPU: two per GPU
        device="cuda:0",
        log_level="warning",
        extra_args=["--dtype", dtype],
    )
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout_s=600)
    return proc, url


def gpu_or_exit() -> ResolvedDevice:
    """The first GPU, or exit with status 2 and the server's own message about what is missing."""
    try:
        return open_device("cuda:0")
    except DeviceUnavailable as exc:
        print(f"bench_gpu needs a CUDA GPU: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"next: {exc.hint}", file=sys.stderr)
        sys.exit(2)


def row(label: str, m: Measured, limit: float) -> str:
    """One printed line of figures."""
    return (
        f"{label:<22} {m.rps:8.1f} req/s  P50 {m.p50:7.2f} ms  P90 {m.p90:7.2f} ms  P99 {m.p99:7.2f} ms  "
        f"errors {m.errors}  ratio to limit {m.rps / limit:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=4, help="unique demo models")
    parser.add_argument("--arch", choices=["bert-base", "minilm", "tiny"], default="bert-base")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,4,16,64", help="closed-loop users to try")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="server batching top-up wait")
    parser.add_argument("--batch", type=int, default=8, help="the server's largest batch (its default)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    args = parser.parse_args()
    device = gpu_or_exit()
    print(f"device: {device.describe()}; torch {torch.__version__}", flush=True)
    arch: Arch = args.arch
    dtype: DTypeChoice = args.dtype
    repo_dir = ROOT / f"gpu-repo-{arch}"
    ids = make_demo_models(repo_dir, args.models, arch=arch, prefix=f"gpu-{arch}")
    repo = LocalRepository(repo_dir)

    models = [load_model(repo, m, dtype=dtype, device="cuda:0") for m in ids]
    print(f"{len(models)} {arch} models on cuda:0 in {models[0].dtype}", flush=True)
    for batch in (1, args.batch):
        print(f"forward only, batch {batch}: {forward_ms(models[0], batch):.2f} ms (median, synchronised)")
    threads = min(os.cpu_count() or 1, THREADS_PER_GPU)
    bare = {b: bare_loop(models, threads, b, args.duration) for b in (1, args.batch)}
    limit = max(m.rps for m in bare.values())
    for b, m in bare.items():
        print(row(f"bare loop batch {b}", m, limit), flush=True)
    del models
    torch.cuda.empty_cache()  # the server process needs the GPU memory

    proc, url = start_server(repo_dir, dtype, args.max_wait_ms)
    results = []
    try:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            load_server(url, ids, concurrency, 2.0)  # warm-up
            measured = load_server(url, ids, concurrency, args.duration)
            results.append((concurrency, measured))
            print(row(f"server c={concurrency}", measured, limit), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    best_c, best = max(results, key=lambda r: r[1].rps)
    share = best.rps / limit
    print(f"\nbest: {best.rps:.1f} req/s at c={best_c} = {share:.2f} of the bare limit {limit:.1f} req/s")


if __name__ == "__main__":
    main()
