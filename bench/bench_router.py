"""Router overhead: the same load sent straight to a server and through the router, in one run.

    .venv/bin/python bench/bench_router.py [--models 4] [--users 4] [--duration 10] [--rounds 2]

One real server process (`inferpack serve`, MiniLM demo models) and one router process in front of it
(`inferpack router`). Two loads, each alternated direct/router for `--rounds` rounds so that drift of the
shared cores hits both sides alike:
- inference: the seed API (`GET /predictions/{model}`), closed loop, through the loadtest package's engine;
- forward only: `GET /v2/models/{model}/ready`, which the server answers without inference, so that what
  the router adds per request is not hidden by the ~35 ms of a MiniLM forward.
Prints a table and writes JSON (--out). Never part of the test run; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from inferpack import processes as P
from inferpack.endpoints import ServerEndpoints, save_endpoints
from inferpack.loadtest.config import BenchConfig
from inferpack.loadtest.runner import run_worker
from inferpack.loadtest.shapes import ClosedLoop
from inferpack.loadtest.targets import LoadTarget
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan, save_plan
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.hardware import usable_cores


def inference_load(url: str, models: list[str], users: int, duration_s: float) -> dict[str, float]:
    """Closed-loop seed inference for `duration_s`: throughput and latency percentiles."""
    config = BenchConfig(
        mode="bmk",
        api="seed",
        target=LoadTarget(urls=[url], description=url),
        models=models,
        shape=ClosedLoop(users=users),
        duration_s=duration_s,
        warmup_s=1.0,
    )
    result = run_worker(config)
    lat = result.latency()
    return {
        "requests": float(result.total_requests()),
        "errors": float(result.error_count()),
        "throughput_rps": result.throughput(),
        "p50_ms": lat.p50_ms,
        "p90_ms": lat.p90_ms,
        "p99_ms": lat.p99_ms,
    }


async def _forward_only(url: str, models: list[str], users: int, duration_s: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10, trust_env=False) as client:
        for m in models:  # open the connections before measuring
            await client.get(f"/v2/models/{m}/ready")
        start = time.perf_counter()
        end = start + duration_s

        async def user(k: int) -> None:
            nonlocal errors
            i = k
            while (sent := time.perf_counter()) < end:
                resp = await client.get(f"/v2/models/{models[i % len(models)]}/ready")
                latencies.append(time.perf_counter() - sent)
                errors += resp.status_code != 200
                i += 1

        await asyncio.gather(*(user(k) for k in range(users)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000.0
    return {
        "requests": float(len(ms)),
        "errors": float(errors),
        "throughput_rps": len(ms) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def forward_only_load(url: str, models: list[str], users: int, duration_s: float) -> dict[str, float]:
    """Closed-loop `GET /v2/models/{m}/ready` (no inference) for `duration_s`."""
    return asyncio.run(_forward_only(url, models, users, duration_s))


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _merge(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Rounds combined: summed counts, throughput over the rounds, median of each percentile."""
    out = {k: float(np.median([r[k] for r in rounds])) for k in ("p50_ms", "p90_ms", "p99_ms")}
    out["requests"] = sum(r["requests"] for r in rounds)
    out["errors"] = sum(r["errors"] for r in rounds)
    out["throughput_rps"] = float(np.mean([r["throughput_rps"] for r in rounds]))
    for k in ("server_cpu_ms_per_request", "router_cpu_ms_per_request"):
        out[k] = float(np.median([r[k] for r in rounds]))
    return out


def main() -> None:
    """Run both loads direct and via the router, alternating, and print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0, help="Seconds per phase.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--server-threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/results/router.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    repo = work / "repo"
    models = make_demo_models(repo, args.models)
    server_port, router_port = P.free_port(), P.free_port()
    direct, routed = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{router_port}"
    plan = Plan(
        created_by="bench",
        repository=str(repo),
        groups=[
            ServerGroup(
                name="local",
                resources=Resources(cpu=1, memory_mb=4000),
                servers=[ServerPlan(name="server-0", models=models)],
            )
        ],
    )
    save_plan(plan, work / "plan.json")
    save_endpoints(ServerEndpoints(servers={"server-0": direct}), work / "endpoints.json")
    procs = []
    try:
        server = P.spawn(
            P.server_command(
                repository=str(repo),
                models=models,
                port=server_port,
                threads=args.server_threads,
                log_level="warning",
            ),
            work / "server.log",
            P.child_env(args.server_threads),
        )
        procs.append(server)
        router = P.spawn(
            P.router_command(
                plan=work / "plan.json",
                endpoints=work / "endpoints.json",
                port=router_port,
                upstream_timeout_s=60,
                log_level="warning",
            ),
            work / "router.log",
            P.child_env(),
        )
        procs.append(router)
        P.wait_ready(direct, server, timeout_s=300)
        P.wait_ready(routed, router, timeout_s=300)
        results: dict[str, dict[str, list[dict[str, float]]]] = {
            "inference": {"direct": [], "router": []},
            "forward_only": {"direct": [], "router": []},
        }
        watched = {"server": psutil.Process(server.pid), "router": psutil.Process(router.pid)}
        loads = (("inference", inference_load), ("forward_only", forward_only_load))
        for r in range(args.rounds):
            for name, url in (("direct", direct), ("router", routed)):
                for load, run in loads:
                    print(f"round {r + 1}/{args.rounds}: {load} {name}", flush=True)
                    before = {k: _cpu(p) for k, p in watched.items()}
                    figures = run(url, models, args.users, args.duration)
                    # CPU seconds each process spent per request: robust to other load on shared cores.
                    for k, proc in watched.items():
                        used = _cpu(proc) - before[k]
                        figures[f"{k}_cpu_ms_per_request"] = 1000.0 * used / max(figures["requests"], 1.0)
                    results[load][name].append(figures)
        summary: dict[str, Any] = {}
        head = (
            f"{'load':<13} {'path':<7} {'req/s':>8} {'P50 ms':>8} {'P90 ms':>8} {'P99 ms':>8} {'errors':>6}"
        )
        print(f"\n{head} {'server CPU ms/req':>17} {'router CPU ms/req':>17}")
        for load, sides in results.items():
            merged = {side: _merge(rounds) for side, rounds in sides.items()}
            for side, m in merged.items():
                print(
                    f"{load:<13} {side:<7} {m['throughput_rps']:8.1f} {m['p50_ms']:8.2f} {m['p90_ms']:8.2f} "
                    f"{m['p99_ms']:8.2f} {m['errors']:6.0f} {m['server_cpu_ms_per_request']:17.3f} "
                    f"{m['router_cpu_ms_per_request']:17.3f}"
                )
            d, v = merged["direct"], merged["router"]
            summary[load] = {
                **merged,
                "throughput_ratio": v["throughput_rps"] / d["throughput_rps"],
                "p50_added_ms": v["p50_ms"] - d["p50_ms"],
            }
            print(
                f"{load:<13} router/direct throughput {summary[load]['throughput_ratio']:.3f}, "
                f"P50 added {summary[load]['p50_added_ms']:+.2f} ms"
            )
        summary["config"] = {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpus": usable_cores(),
            "rounds_raw": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    finally:
        P.terminate([psutil.Process(p.pid) for p in procs if p.poll() is None], 10.0)
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)  # the demo models are ~90 MB each


if __name__ == "__main__":
    main()
