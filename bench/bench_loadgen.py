"""The load generator's own ceiling: requests/s one worker sustains against a trivial endpoint, and
the CPU it spends per request. Never part of the test run; figures go to docs/benchmarks.md.

    .venv/bin/python bench/bench_loadgen.py [--duration 5] [--users 1,8,32,128] [--rates 500,1000,...]

The trivial server (a raw ASGI app on uvicorn with httptools and uvloop) runs in its own process, so
the generator and the server do not share a GIL; on a 2-core machine each gets about one core.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from multiprocessing.context import SpawnProcess
from typing import Any

from inferpack.loadtest.config import BenchConfig
from inferpack.loadtest.result import BenchResult
from inferpack.loadtest.runner import run_worker
from inferpack.loadtest.shapes import ClosedLoop, LoadShape, OpenLoop, Step
from inferpack.loadtest.targets import LoadTarget
from inferpack.loadtest.traffic import numbered_models
from inferpack.processes import free_port, wait_ready


async def _trivial_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"x-inferpack-model-load", b"warm")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"detail": "ok"}'})


def _serve(port: int) -> None:
    import uvicorn

    uvicorn.run(
        _trivial_app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
        http="httptools", loop="uvloop", access_log=False,
    )  # fmt: skip


def _start_server() -> tuple[SpawnProcess, str]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout_s=20)  # the trivial app answers 200 on every path, readiness included
    return proc, url


def _measure(url: str, shape: LoadShape, duration: float) -> BenchResult:
    config = BenchConfig(
        target=LoadTarget(urls=[url]),
        models=numbered_models("m", 1000),
        shape=shape,
        duration_s=duration,
        warmup_s=1.0,
    )
    return run_worker(config)


def _row(label: str, r: BenchResult) -> dict[str, Any]:
    w = r.workers[0]
    s = r.compute_summary()
    return {
        "load": label,
        "req_s": round(r.throughput(), 1),
        "loop_cpu_share": round(w.cpu_s / w.wall_s, 3),
        "cpu_us_per_req": round(1e6 * w.cpu_s / max(w.requests + w.warmup_requests, 1), 1),
        "p50_ms": round(s["latency_ms"]["p50_ms"], 3),
        "p99_ms": round(s["latency_ms"]["p99_ms"], 3),
        "sched_lag_p99_ms": round(s["schedule_lag_ms"]["p99_ms"], 3),
        "errors": s["errors"],
    }


def main() -> None:
    """Run the measurements and print one JSON line per load, then a summary."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--users", default="1,8,32,128")
    ap.add_argument("--rates", default="500,1000,1500,2000,3000")
    args = ap.parse_args()
    proc, url = _start_server()
    rows = []
    try:
        for users in (int(u) for u in args.users.split(",") if u):
            rows.append(_row(f"closed {users} users", _measure(url, ClosedLoop(users=users), args.duration)))
            print(json.dumps(rows[-1]), flush=True)
        for rate in (float(x) for x in args.rates.split(",") if x):
            shape = OpenLoop(steps=[Step(rate=rate)], max_in_flight=256)
            rows.append(_row(f"open {rate:g}/s", _measure(url, shape, args.duration)))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.join(5)
    best = max(rows, key=lambda r: r["req_s"])
    print(f"ceiling: {best['req_s']:.0f} req/s per worker ({best['load']}), "
          f"{best['cpu_us_per_req']:.0f} µs of CPU per request")  # fmt: skip


if __name__ == "__main__":
    main()
