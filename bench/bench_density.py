"""Density: thousands of unique models on one server under a memory budget, Zipf traffic.

Makes N unique MiniLM-class tenant models that share one base (each with its own top layer and head;
`--no-share-base` for fully unique models, `--arch tiny` for small ones), starts one lazy-loading server
with a memory budget, drives it with `inferpack bench run` (open loop, Zipf over the models in a shuffled
popularity order), and prints P50/P90/P99 overall and split by cold/warm, the cold-load rate and time, the
hit ratio, and the server's peak RSS against the budget.

    .venv/bin/python bench/bench_density.py --models 3000 --budget-mb 2048 --rate 30 --duration 60
    .venv/bin/python bench/bench_density.py --models 1000 --arch tiny --no-share-base --budget-mb 2048

Cores here are shared: compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
from pathlib import Path

import httpx

from inferpack.loadtest import histograms as H
from inferpack.loadtest.result import load_result
from inferpack.processes import free_port, metric_sum, python_cli, server_command, wait_ready
from inferpack.progress import counting_progress
from inferpack.repository.demo import make_demo_models

ROOT = Path(__file__).resolve().parent / "results"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=3000)
    parser.add_argument("--arch", default="minilm", choices=["minilm", "tiny"])
    parser.add_argument("--share-base", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--budget-mb", type=float, default=2048)
    parser.add_argument("--rate", type=float, default=30.0, help="open-loop arrivals per second")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    args = parser.parse_args()

    kind = f"{args.arch}-{'shared' if args.share_base else 'unique'}"
    repo = ROOT / f"density-{kind}"
    with counting_progress() as bar:
        task = bar.add_task(f"making {args.models} {kind} models", total=args.models)
        ids = make_demo_models(
            repo,
            args.models,
            arch=args.arch,
            prefix=f"tenant-{kind}",
            share_base=args.share_base,
            progress=lambda _m: bar.advance(task),
        )
    order = list(ids)
    random.Random(7).shuffle(order)  # popularity rank unrelated to id order
    models_file = ROOT / f"density-{kind}-popularity.txt"
    models_file.write_text("\n".join(order) + "\n")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        server_command(
            repository=str(repo),
            models=None,
            port=port,
            threads=None,
            log_level="warning",
            extra_args=["--lazy", "--memory-budget-mb", str(args.budget_mb)],
        )
    )
    try:
        wait_ready(url, server)
        out_dir = ROOT / f"density-{kind}-run"
        subprocess.run(
            [
                *python_cli(),
                "bench",
                "run",
                "--url",
                url,
                "--models-file",
                str(models_file),
                "--traffic",
                "zipf",
                "--zipf-s",
                str(args.zipf_s),
                "--rate",
                str(args.rate),
                "--arrivals",
                "poisson",
                "--duration",
                str(args.duration),
                "--warmup",
                str(args.warmup),
                "--out",
                str(out_dir),
                "--no-report",
            ],
            check=True,
        )
        text = httpx.get(f"{url}/metrics").text
        peak = peak_rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    result = load_result(out_dir / "result.json")
    overall = result.latency()
    cold = H.summarize(H.decode(result.histograms.cold))
    warm = H.summarize(H.decode(result.histograms.warm))
    hits = metric_sum(text, "inferpack_model_cache_hits_total")
    misses = metric_sum(text, "inferpack_model_cache_misses_total")
    loads = metric_sum(text, "inferpack_model_load_seconds_count")
    load_sum = metric_sum(text, "inferpack_model_load_seconds_sum")
    evictions = metric_sum(text, "inferpack_model_evictions_total", {"reason": "budget"})
    model_mem = metric_sum(text, "inferpack_model_memory_bytes") / 2**20
    print(
        f"\n{args.models} {kind} models, budget {args.budget_mb:.0f} MiB, Zipf s={args.zipf_s}, "
        f"{args.rate:g} req/s offered for {args.duration:g} s (+{args.warmup:g} s warm-up)"
    )
    print(f"throughput {result.throughput():.1f} req/s, errors {result.error_count()}")
    for name, s in (("all", overall), ("warm", warm), ("cold", cold)):
        print(
            f"  {name:4s} n={s.count:6d}  P50 {s.p50_ms:7.1f} ms  P90 {s.p90_ms:7.1f} ms  "
            f"P99 {s.p99_ms:7.1f} ms"
        )
    hit_ratio = hits / max(1.0, hits + misses)
    print(f"hit ratio {hit_ratio:.3f} ({hits:.0f} hits, {misses:.0f} misses over the whole run)")
    mean_load_ms = 1000 * load_sum / max(1.0, loads)
    print(
        f"cold loads {loads:.0f} ({loads / (args.duration + args.warmup):.1f}/s), "
        f"mean load {mean_load_ms:.1f} ms, evictions {evictions:.0f}"
    )
    print(
        f"model memory at end {model_mem:.0f} MiB; server peak RSS {peak:.0f} MiB "
        f"(budget {args.budget_mb:.0f} MiB for models)"
    )
    summary = {
        "models": args.models,
        "kind": kind,
        "budget_mb": args.budget_mb,
        "rate": args.rate,
        "throughput": result.throughput(),
        "errors": result.error_count(),
        "all": overall.as_dict(),
        "warm": warm.as_dict(),
        "cold": cold.as_dict(),
        "hit_ratio": hit_ratio,
        "loads": loads,
        "mean_load_ms": mean_load_ms,
        "evictions": evictions,
        "peak_rss_mb": peak,
        "model_memory_mb": model_mem,
    }
    (ROOT / f"density-{kind}-summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
