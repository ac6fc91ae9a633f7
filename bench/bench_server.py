"""Server throughput vs the hardware limit, fp32 and bf16, in one run on the same cores.

1. Makes 10 unique MiniLM QA demo models (once, in bench/results/repo).
2. The limit: the bare model's forward loop (tokenise + forward + decode, the same request as the load test)
   on one thread per core with one intra-op thread each, round-robin over the 10 models, at batch 1 and at
   batch 8 (the server's largest batch); the limit is the better of the two.
3. The server: `inferpack serve` on those models, driven by wrk (an external HTTP load generator) with a Lua
   script picking a random model per request, at several concurrencies.
Prints req/s, P50/P90/P99 and server / limit per dtype, the P90 against the batch-1 loop's per-request
P50 and P90 (issue 12's 2-connection goal), CPU per request against the loop's (less moved by other loads
on shared cores than req/s), and bf16's agreement with fp32. The demo models
share their base (all but the top layer and head), so the server runs once with cross-tenant batching
(the default: a batch mixes models, their shared layers run once) and once without (`--cross-tenant`).

    .venv/bin/python bench/bench_server.py [--duration 10] [--concurrency 1,2,4,8,16] [--cross-tenant on,off]

Needs `wrk` (Debian: apt-get install wrk). Compare ratios within one run; cores here are shared.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psutil
import torch

from inferpack.processes import free_port, server_command, wait_ready
from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.hardware import cpu_model, usable_cores
from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput

QUESTION = "Which bridge did the engineers repair first?"
CONTEXT = (
    "After the spring floods the city engineers inspected every crossing on the river. They repaired the "
    "old stone bridge near the mill first, because the school buses used it, and then moved on to the rail "
    "bridge."
)
ROOT = Path(__file__).resolve().parent / "results"


def bare_limit(
    repo: LocalRepository, ids: list[str], dtype: str, seconds: float, batch: int = 1
) -> tuple[float, list[float], float]:
    """Requests/s of the forward loop alone (tokenise + forward + decode of `batch` requests at a time):
    one thread per core, one intra-op thread each; the seconds each call took (all threads); and the CPU
    seconds its threads spent per request (which, unlike req/s, other loads on the cores barely move)."""
    models = [load_model(repo, m, dtype=dtype) for m in ids]  # type: ignore[arg-type]
    item = [TextInput(QUESTION, CONTEXT)] * batch
    counts = [0] * usable_cores()
    took: list[list[float]] = [[] for _ in counts]
    cpu = [0.0] * len(counts)

    def loop(k: int) -> None:
        torch.set_num_threads(1)
        i = k
        cpu[k] = -time.thread_time()
        while (begun := time.perf_counter()) < stop:
            models[i % len(models)].predict(item)
            took[k].append(time.perf_counter() - begun)
            i += 1
            counts[k] += batch
        cpu[k] += time.thread_time()

    for m in models:  # warm-up outside the timed window
        m.predict(item)
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(counts))]
    started = time.perf_counter()
    stop = started + seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = time.perf_counter() - started
    return sum(counts) / done, [s for t in took for s in t], sum(cpu) / sum(counts)


def agreement(repo: LocalRepository, ids: list[str]) -> tuple[float, float]:
    """bf16 vs fp32: share of identical QA answers and the max difference of answer scores."""
    texts = [
        TextInput(QUESTION, CONTEXT),
        TextInput("Who used the bridge?", CONTEXT),
        TextInput("What happened in spring?", CONTEXT),
        TextInput("Where is the mill?", "The mill stands by the river, two miles north of the town centre."),
    ]
    same, diffs = 0, []
    for m in ids:
        a = load_model(repo, m, dtype="fp32").predict(texts)
        b = load_model(repo, m, dtype="bf16").predict(texts)
        for x, y in zip(a, b, strict=True):
            same += x["answer"] == y["answer"]
            diffs.append(abs(x["score"] - y["score"]))
    return same / (len(ids) * len(texts)), max(diffs)


def wrk(url: str, ids: list[str], connections: int, seconds: float) -> dict[str, float]:
    """Run wrk with a random model per request; parse req/s and latency percentiles (ms)."""
    path = f"?seq_0={quote(QUESTION)}&seq_1={quote(CONTEXT)}"
    script = (
        "math.randomseed(42)\nlocal models = {" + ",".join(f'"{m}"' for m in ids) + "}\n"
        "request = function()\n  local m = models[math.random(#models)]\n"
        f'  return wrk.format("GET", "/predictions/" .. m .. "{path}")\nend\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            fh.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(fh.name)

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "requests": done,
        "p50": ms("50"),
        "p90": ms("90"),
        "p99": ms("99"),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_server(repo: Path, dtype: str, cross_tenant: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    """`inferpack serve` on every model of `repo` in `dtype`, once it is ready."""
    port = free_port()
    cmd = server_command(
        repository=str(repo),
        models=None,
        port=port,
        threads=None,
        log_level="warning",
        extra_args=["--dtype", dtype],
    )
    env = {**os.environ, "INFERPACK_SERVER__BATCHING__CROSS_TENANT": str(cross_tenant).lower()}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout_s=180)
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="wrk connections to try")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="serve this repository of 10 QA models instead (e.g. after `inferpack compile --all`: "
        "servers and the bare loop then run each model's TorchScript version)",
    )
    parser.add_argument(
        "--bf16-concurrency", default="1,2,4", help="bf16 is slow where the CPU lacks it natively"
    )
    parser.add_argument(
        "--cross-tenant", default="on,off", help="server runs with cross-tenant batching on and/or off"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    repo_dir = args.repository or ROOT / "repo"
    ids = make_demo_models(repo_dir, 10, prefix="bench-qa")  # existing models are kept as they are
    repo = LocalRepository(repo_dir)
    print(f"machine: {cpu_model()}, {usable_cores()} cores, torch {torch.__version__}")
    same, score_diff = agreement(repo, ids)
    print(
        f"bf16 vs fp32 over {len(ids)} models x 4 inputs: identical answers {same:.0%}, "
        f"max score diff {score_diff:.4f}"
    )
    rows = []
    for dtype in args.dtypes.split(","):
        limit1, took, loop_cpu = bare_limit(repo, ids, dtype, args.duration)
        limit8, _, _ = bare_limit(repo, ids, dtype, args.duration, batch=8)
        limit = max(limit1, limit8)
        loop_p50, loop_p90 = (float(np.percentile(took, q)) * 1000 for q in (50, 90))
        print(
            f"{dtype}: bare forward loop {limit1:.1f} req/s at batch 1 (per request P50 {loop_p50:.1f} ms, "
            f"P90 {loop_p90:.1f} ms, CPU {loop_cpu * 1000:.1f} ms), {limit8:.1f} req/s at batch 8 -> limit "
            f"{limit:.1f}",
            flush=True,
        )
        for mode in args.cross_tenant.split(","):
            proc, url = run_server(repo_dir, dtype, cross_tenant=mode == "on")
            label = f"{dtype}/xt-{mode}"
            try:
                levels = args.bf16_concurrency if dtype == "bf16" else args.concurrency
                for c in (int(x) for x in levels.split(",")):
                    wrk(url, ids, c, 2)  # warm-up
                    cpu_before = cpu_seconds(proc.pid)
                    r = wrk(url, ids, c, args.duration)
                    cpu_per_request = (cpu_seconds(proc.pid) - cpu_before) / max(1.0, r["requests"])
                    rows.append((label, c, r, limit, limit1, limit8))
                    print(
                        f"{label:12s} c={c:<3d} {r['rps']:7.1f} req/s  "
                        f"P50 {r['p50']:6.1f} ms  P90 {r['p90']:6.1f} ms  P99 {r['p99']:6.1f} ms  "
                        f"errors {int(r['errors'])}  limit {limit:6.1f} req/s  "
                        f"ratio {r['rps'] / limit:.2f}  P90 / loop P50 {r['p90'] / loop_p50:.2f}  "
                        f"P90 / loop P90 {r['p90'] / loop_p90:.2f}  CPU/request {cpu_per_request * 1000:.1f} "
                        f"ms = {cpu_per_request / loop_cpu:.2f} x the loop's",
                        flush=True,
                    )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    print("\nbest per server setting:")
    for label in dict.fromkeys(r[0] for r in rows):
        best = max((r for r in rows if r[0] == label), key=lambda r: r[2]["rps"])
        rps = best[2]["rps"]
        print(
            f"  {label}: {rps:.1f} req/s at c={best[1]} = {rps / best[4]:.2f} of the batch-1 loop "
            f"({best[4]:.1f}), {rps / best[5]:.2f} of the batch-8 loop ({best[5]:.1f})"
        )
    np.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
