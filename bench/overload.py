"""Overload that stays useful: one server at 3x its capacity, with and without deadlines, in one run.

1. Starts `inferpack serve` on 6 MiniLM QA demo models (bench/results/repo, shared with bench_server.py).
2. Unloaded: one connection in a closed loop -> P50/P90 (what "normal latency" means below).
3. Capacity: `--connections` connections in a closed loop -> req/s.
4. Overload, twice: an open loop at `--factor` x capacity for `--duration` s, every request with a client
   timeout (`--timeout`, like wrk's), a random model per request:
   - "no deadline": each request says `inferpack-deadline-ms: 3600000` (an hour), so only full queues shed:
     what the server did before admission by deadline;
   - "deadline": each request says `inferpack-deadline-ms: D`, once with D = 2 x unloaded P90 (the goal
     for admitted requests) and once with D = the P90 measured at capacity (what batching to capacity
     costs in latency on this machine); `--deadline-ms` replaces both with one value.
   When the load stops, the generator drops its outstanding requests (closes their connections, as wrk
   does at its end), then probes one request at a time: time back to normal = until a probe answers
   within 2 x unloaded P90.
Prints, per overload run: goodput (answers 200 within the client timeout per s) / capacity (goal >= 0.9),
P90 of the admitted (200) requests / unloaded P90 (goal <= 2), sheds (503), time-outs, 504s, time back to
normal (goal < 1 s), and the server's dropped-disconnected and shed counters.

    PYTHONPATH=src .venv/bin/python bench/overload.py [--duration 10] [--factor 3] [--deadline-ms D]

The load generator (aiohttp, one process) shares the machine's cores with the server: compare the ratios
within one run, and note the contention next to any figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from bench_server import CONTEXT, QUESTION, ROOT  # the same request and results folder as the server bench

from inferpack.processes import free_port, server_command, wait_ready
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.hardware import cpu_model, usable_cores

NO_DEADLINE_MS = 3_600_000


@dataclass
class Outcome:
    """One request: when it was sent (s since the phase began), its status (0: client time-out or error),
    and its latency."""

    sent: float
    status: int
    latency: float


@dataclass
class Phase:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def latencies(self, status: int = 200) -> np.ndarray:
        return np.array([o.latency for o in self.outcomes if o.status == status])

    def count(self, status: int) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return ",".join(sorted(set(re.findall(r"\b(avx2|avx512_bf16|amx_bf16)\b", text)))) or "none"


async def one(
    session: aiohttp.ClientSession, url: str, model: str, deadline_ms: float | None, timeout: float
) -> tuple[int, float]:
    headers = {} if deadline_ms is None else {"inferpack-deadline-ms": f"{deadline_ms:.0f}"}
    started = time.perf_counter()
    try:
        async with session.get(
            f"{url}/predictions/{model}",
            params={"seq_0": QUESTION, "seq_1": CONTEXT},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError):
        status = 0
    return status, time.perf_counter() - started


async def closed_loop(
    url: str, models: list[str], connections: int, seconds: float, deadline_ms: float | None
) -> Phase:
    phase = Phase()
    rng = random.Random(1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        begin = time.perf_counter()
        stop = begin + seconds

        async def user() -> None:
            while time.perf_counter() < stop:
                sent = time.perf_counter() - begin
                status, latency = await one(session, url, rng.choice(models), deadline_ms, 60.0)
                phase.outcomes.append(Outcome(sent, status, latency))

        await asyncio.gather(*(user() for _ in range(connections)))
        phase.seconds = time.perf_counter() - begin
    return phase


async def open_loop(
    url: str,
    models: list[str],
    rate: float,
    seconds: float,
    deadline_ms: float,
    timeout: float,
    normal: float,
) -> tuple[Phase, float, list[float]]:
    """Requests at `rate` per second for `seconds`; then drop what is outstanding and probe until a request
    answers within `normal` seconds. Returns the phase, the time back to normal and the probes' latencies."""
    phase = Phase()
    rng = random.Random(2)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        begin = time.perf_counter()

        async def request(sent: float) -> None:
            status, latency = await one(session, url, rng.choice(models), deadline_ms, timeout)
            phase.outcomes.append(Outcome(sent, status, latency))

        n = 0
        while (now := time.perf_counter()) < begin + seconds:
            due = begin + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(request(due - begin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        phase.seconds = time.perf_counter() - begin
        stopped = time.perf_counter()
        for task in list(tasks):  # the clients go away, as wrk's do when it ends
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    probes: list[float] = []
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - stopped < 30:
            status, latency = await one(session, url, rng.choice(models), None, 60.0)
            probes.append(latency)
            if status == 200 and latency <= normal:
                return phase, time.perf_counter() - stopped, probes
    return phase, float("inf"), probes


def server_counters(url: str) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(
            ("inferpack_requests_shed_total", "inferpack_requests_dropped_disconnected_total")
        ):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--models", type=int, default=6, help="MiniLM QA demo models on the server")
    parser.add_argument("--connections", type=int, default=16, help="closed-loop connections for capacity")
    parser.add_argument("--factor", type=float, default=3.0, help="overload: this many times capacity")
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout per request (s)")
    parser.add_argument(
        "--deadline-ms", type=float, default=None, help="deadline header (default: 2 x unloaded P90)"
    )
    parser.add_argument("--threads", type=int, default=None, help="server inference threads (default: cores)")
    args = parser.parse_args()

    repo_dir = ROOT / "repo"
    ids = make_demo_models(repo_dir, 10, prefix="bench-qa")[: args.models]
    print(f"machine: {cpu_model()}, {usable_cores()} cores, CPU flags {cpu_flags()}")
    port = free_port()
    cmd = server_command(
        repository=str(repo_dir), models=ids, port=port, threads=args.threads, log_level="warning"
    )
    proc = subprocess.Popen(cmd, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=300)
        asyncio.run(closed_loop(url, ids, 4, 2.0, None))  # warm-up
        unloaded = asyncio.run(closed_loop(url, ids, 1, args.duration, None))
        p50, p90 = pct(unloaded.latencies(), 50), pct(unloaded.latencies(), 90)
        print(
            f"unloaded (1 connection): {len(unloaded.outcomes) / unloaded.seconds:.1f} req/s, "
            f"P50 {p50:.1f} ms, P90 {p90:.1f} ms"
        )
        cap_phase = asyncio.run(closed_loop(url, ids, args.connections, args.duration, None))
        capacity = cap_phase.count(200) / cap_phase.seconds
        print(
            f"capacity ({args.connections} connections, closed loop): {capacity:.1f} req/s, "
            f"P90 {pct(cap_phase.latencies(), 90):.1f} ms"
        )
        cap_p90 = pct(cap_phase.latencies(), 90)
        deadlines = [args.deadline_ms] if args.deadline_ms else [2 * p90, cap_p90]
        normal = 2 * p90 / 1000
        rate = args.factor * capacity
        runs = [("no deadline", float(NO_DEADLINE_MS))] + [(f"deadline {d:.0f} ms", d) for d in deadlines]
        for label, header in runs:
            before = server_counters(url)
            phase, recovery, probes = asyncio.run(
                open_loop(url, ids, rate, args.duration, header, args.timeout, normal)
            )
            after = server_counters(url)
            ok = [o for o in phase.outcomes if o.status == 200 and o.latency <= args.timeout]
            goodput = len(ok) / phase.seconds
            admitted_p90 = pct(phase.latencies(), 90)
            delta = {k.split("_total")[-1] or k: after.get(k, 0) - before.get(k, 0) for k in after}
            print(
                f"overload {args.factor:g}x ({rate:.0f} req/s offered, {label}): "
                f"goodput {goodput:.1f} req/s = {goodput / capacity:.2f} x capacity; "
                f"admitted P50 {pct(phase.latencies(), 50):.0f} ms, P90 {admitted_p90:.0f} ms = "
                f"{admitted_p90 / p90:.1f} x unloaded P90; 200: {phase.count(200)}, 503: {phase.count(503)}, "
                f"504: {phase.count(504)}, time-outs/errors: {phase.count(0)}, unanswered at the end: "
                f"{round(rate * args.duration) - len(phase.outcomes)}; "
                f"back to normal (<= {normal * 1000:.0f} ms) {recovery:.2f} s after the load stopped "
                f"(probes {', '.join(f'{x * 1000:.0f}' for x in probes[:6])} ms)"
            )
            print(f"  server counters during the run: {delta}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
