"""Overload that stays useful: one server at 3x its capacity, with and without deadlines, in one run.

1. Starts `inferpack serve` on 6 MiniLM QA demo models (bench/results/repo, shared with bench_server.py).
2. Unloaded: one connection in a closed loop -> P50/P90 (what "normal latency" means below).
3. Capacity: `--connections` connections in a closed loop -> req/s.
4. Overload, once per deadline: an open loop at `--factor` x capacity for `--duration` s, every request
   with a client timeout (`--timeout`, like wrk's), a random model per request:
   - "no deadline": each request says `inferpack-deadline-ms: 3600000` (an hour), so only full queues
     shed: what the server did before admission by deadline;
   - "server default": no header: the server's `batching.deadline_ms` applies (out of the box);
   - "deadline D": each request says `inferpack-deadline-ms: D`, D = 2 x unloaded P90 (the goal for
     admitted requests), or the multiples `--deadline-multiples` gives (e.g. 2,3,4: the trade-off between
     goodput and admitted latency), or the values `--deadline-ms` gives.
   When the load stops, the generator drops its outstanding requests (closes their connections, as wrk
   does at its end), then probes one request at a time: time back to normal = until a probe answers
   within 2 x unloaded P90.
Prints, per overload run: goodput (answers 200 within the request's deadline, or the client timeout where
it sends none, per s) / capacity (goal >= 0.9), P90 of the admitted (200) requests / unloaded P90 (goal
<= 2), sheds (503), time-outs, 504s, time back to normal (goal < 1 s), the server's shed and
dropped-disconnected counters, and the CPU the generator and the server used; then the three goal
ratios of every run in one table.

    PYTHONPATH=src:bench .venv/bin/python bench/overload.py [--duration 10] [--factor 3] [--deadline-ms D]
        [--server-cpus 0 --generator-cpus 1] [--admission-log] [--capacity-at-deadline]
        [--compare-src OTHER/src --rounds N]

`--compare-src` starts a second server from another source tree (e.g. `git archive main src | tar -x -C
/tmp/base`) and runs every phase on both, alternating round by round, so contention on a shared machine
hits both alike; the side-by-side table at the end gives each round's ratios and their means.

The generator (bench/loadgen_raw.py: pre-encoded requests on keep-alive connections, callbacks, no
per-request task) shares the machine's cores with the server unless `--server-cpus`/`--generator-cpus`
pin them apart; capacity and overload are always measured under the same pinning in the same run, so
the ratios are honest either way. `--admission-log` runs the server with the admission calibration log
(DEBUG) and sums up, per run, the estimate at admission against the wait + compute each request got.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from bench_server import (  # the same request and results folder as the server bench
    CONTEXT,
    QUESTION,
    ROOT,
    settle,
)
from loadgen_raw import Pool, cpu_seconds, encode_get, process_cpu_seconds

from inferpack.processes import free_port, server_command, wait_ready
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.hardware import cpu_model, usable_cores

NO_DEADLINE_MS = 3_600_000
ADMITTED = re.compile(
    rb"admitted model=\S+ est_wait_ms=([\d.]+) est_service_ms=([\d.]+) wait_ms=([\d.]+) service_ms=([\d.]+)"
    rb" batch=(\d+)"
)


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
    generator_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    unanswered: int = 0

    def latencies(self, status: int = 200) -> np.ndarray:
        return np.array([o.latency for o in self.outcomes if o.status == status])

    def count(self, status: int) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def cpu(self) -> str:
        n = max(len(self.outcomes) + self.unanswered, 1)
        return (
            f"generator CPU {self.generator_cpu_s / self.seconds * 100:.0f}% of a core "
            f"({self.generator_cpu_s / n * 1e6:.0f} us per request), server CPU "
            f"{self.server_cpu_s / self.seconds * 100:.0f}% of a core"
        )


@dataclass
class Target:
    """The server under load: where it is, its models, its pid (for its CPU time)."""

    host: str
    port: int
    models: list[str]
    pid: int

    def requests(self, deadline_ms: float | None) -> list[bytes]:
        ms = None if deadline_ms is None else f"{deadline_ms:.3f}".rstrip("0").rstrip(".")
        headers = {} if ms is None else {"inferpack-deadline-ms": ms}
        query = f"?seq_0={quote(QUESTION)}&seq_1={quote(CONTEXT)}"
        return [encode_get(self.host, f"/predictions/{m}{query}", headers) for m in self.models]


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return ",".join(sorted(set(re.findall(r"\b(avx2|avx512_bf16|amx_bf16)\b", text)))) or "none"


async def closed_loop(target: Target, connections: int, seconds: float) -> Phase:
    """`connections` clients, each sending its next request when the last one is answered."""
    phase, rng = Phase(), random.Random(1)
    requests = target.requests(None)
    pool = Pool(target.host, target.port, asyncio.get_running_loop())
    await pool.warm(connections)
    finished = asyncio.Event()
    running = connections
    cpu0, server0 = cpu_seconds(), process_cpu_seconds(target.pid)
    begin = time.perf_counter()
    stop = begin + seconds

    def user() -> None:
        sent = time.perf_counter()

        def done(status: int, latency: float) -> None:
            nonlocal running
            phase.outcomes.append(Outcome(sent - begin, status, latency))
            if time.perf_counter() < stop:
                user()
            else:
                running -= 1
                if not running:
                    finished.set()

        pool.request(rng.choice(requests), done, 60.0)

    for _ in range(connections):
        user()
    await finished.wait()
    phase.seconds = time.perf_counter() - begin
    phase.generator_cpu_s = cpu_seconds() - cpu0
    phase.server_cpu_s = process_cpu_seconds(target.pid) - server0
    pool.close()
    return phase


async def open_loop(
    target: Target, rate: float, seconds: float, deadline_ms: float | None, timeout: float, normal: float
) -> tuple[Phase, float, list[float]]:
    """Requests at `rate` per second for `seconds`; then drop what is outstanding and probe until a request
    answers within `normal` seconds. Returns the phase, the time back to normal and the probes' latencies."""
    phase, rng = Phase(), random.Random(2)
    requests = target.requests(deadline_ms)
    loop = asyncio.get_running_loop()
    pool = Pool(target.host, target.port, loop)
    await pool.warm(int(rate * 0.2) + 8)
    cpu0, server0 = cpu_seconds(), process_cpu_seconds(target.pid)
    begin = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) < begin + seconds:
        due = begin + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        sent = due - begin

        def done(status: int, latency: float, sent: float = sent) -> None:
            phase.outcomes.append(Outcome(sent, status, latency))

        pool.request(rng.choice(requests), done, timeout)
        n += 1
    phase.seconds = time.perf_counter() - begin
    phase.unanswered = pool.drop_outstanding()  # the clients go away, as wrk's do when it ends
    stopped = time.perf_counter()
    phase.generator_cpu_s = cpu_seconds() - cpu0
    phase.server_cpu_s = process_cpu_seconds(target.pid) - server0
    pool.close()
    probes: list[float] = []
    probe = Pool(target.host, target.port, loop)
    try:
        while time.perf_counter() - stopped < 30:
            answer: asyncio.Future[tuple[int, float]] = loop.create_future()

            def answered(
                status: int, latency: float, answer: asyncio.Future[tuple[int, float]] = answer
            ) -> None:
                answer.set_result((status, latency))

            probe.request(rng.choice(target.requests(None)), answered, 60.0)
            status, latency = await answer
            probes.append(latency)
            if status == 200 and latency <= normal:
                return phase, time.perf_counter() - stopped, probes
    finally:
        probe.close()
    return phase, float("inf"), probes


def server_counters(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(
            ("inferpack_requests_shed_total", "inferpack_requests_dropped_disconnected_total")
        ):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def admission_summary(log: Path, start: int, seconds: float, threads: int) -> str:
    """The calibration lines the server logged since byte `start`: estimate against what requests got,
    and how busy the inference threads were (batch time over `threads` x `seconds`) at which batch sizes."""
    rows = np.array([[float(x) for x in m.groups()] for m in ADMITTED.finditer(log.read_bytes()[start:])])
    if not len(rows):
        return "no admitted requests logged"
    est, got = rows[:, 0] + rows[:, 1], rows[:, 2] + rows[:, 3]
    err = got - est
    busy_s = float(np.sum(rows[:, 3] / rows[:, 4])) / 1000  # each batch logs one line per item
    sizes, counts = np.unique(rows[:, 4].astype(int), return_counts=True)
    mix = ", ".join(f"{s}: {c // s}" for s, c in zip(sizes, counts, strict=True))
    return (
        f"{len(rows)} admitted: estimate P50 {np.median(est):.1f} ms, got P50 {np.median(got):.1f} ms, "
        f"P90 {np.percentile(got, 90):.1f} ms; got - estimate P10/P50/P90 {np.percentile(err, 10):.1f} / "
        f"{np.median(err):.1f} / {np.percentile(err, 90):.1f} ms; wait estimate P50 "
        f"{np.median(rows[:, 0]):.1f} ms vs got {np.median(rows[:, 2]):.1f} (P90 "
        f"{np.percentile(rows[:, 0], 90):.1f} vs {np.percentile(rows[:, 2], 90):.1f}); service estimate "
        f"P50 {np.median(rows[:, 1]):.1f} ms vs got {np.median(rows[:, 3]):.1f}; inference threads busy "
        f"{busy_s / (threads * seconds) * 100:.0f}% (wall time; includes the drain after the load), "
        f"batches by size {{{mix}}}"
    )


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU seconds per second process `pid` uses over the next `seconds` with no load offered."""
    cpu0, t0 = process_cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (process_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def cpus(text: str | None) -> set[int] | None:
    return None if text is None else {int(c) for c in text.split(",")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--models", type=int, default=6, help="MiniLM QA demo models on the server")
    parser.add_argument("--connections", type=int, default=16, help="closed-loop connections for capacity")
    parser.add_argument("--factor", type=float, default=3.0, help="overload: this many times capacity")
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout per request (s)")
    parser.add_argument(
        "--deadline-ms",
        type=float,
        action="append",
        help="deadline header of a run (repeatable; default: 2 x unloaded P90)",
    )
    parser.add_argument(
        "--deadline-multiples",
        default="2",
        help="deadline header runs at these multiples of the unloaded P90, comma-separated (default 2: "
        "the goal)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-deadline and default runs")
    parser.add_argument("--threads", type=int, default=None, help="server inference threads (default: cores)")
    parser.add_argument("--server-cpus", default=None, help="pin the server to these CPUs, e.g. 0")
    parser.add_argument("--generator-cpus", default=None, help="pin the load generator to these CPUs, e.g. 1")
    parser.add_argument(
        "--admission-log", action="store_true", help="server logs estimate vs actual per admitted request"
    )
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument")
    parser.add_argument(
        "--compare-src",
        default=None,
        help="also run a second server from this source tree's src folder (e.g. an older commit's, from "
        "`git archive`), alternating with this tree's round by round, so that contention hits both alike",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every phase (per server)")
    parser.add_argument(
        "--compare-server-arg",
        action="append",
        default=[],
        help="extra `serve` argument of the compared server only (repeatable; alone: a second server from "
        "this tree with these arguments, e.g. --compare-server-arg=--threads --compare-server-arg=1)",
    )
    parser.add_argument(
        "--capacity-at-deadline",
        action="store_true",
        help="also measure, per deadline run, the most a closed loop gets with its P90 within the deadline "
        "(a second denominator, printed beside the goal's)",
    )
    parser.add_argument(
        "--shed-cost",
        action="store_true",
        help="also measure the server's CPU per shed request (a run of hopeless requests at capacity)",
    )
    return parser.parse_args()


@dataclass
class Server:
    """One server under test: its name in the output, process, address and log."""

    name: str
    proc: subprocess.Popen[bytes]
    target: Target
    url: str
    log_path: Path


def start_server(
    name: str, src: str | None, args: argparse.Namespace, repo_dir: Path, ids: list[str], more: list[str]
) -> Server:
    """Start `inferpack serve` on the bench models, from `src` (a source tree's `src` folder, put first on
    the server's PYTHONPATH: an older commit for a side-by-side comparison) or from this tree."""
    port = free_port()
    cmd = server_command(
        repository=str(repo_dir),
        models=ids,
        port=port,
        threads=args.threads,
        log_level="debug" if args.admission_log else "warning",
        extra_args=[*args.server_arg, *more],
    )
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")])
    log_path = ROOT / f"overload-server-{name.replace(' ', '-')}.log"
    mine = os.sched_getaffinity(0)
    if args.server_cpus:
        os.sched_setaffinity(0, cpus(args.server_cpus) or mine)  # the server inherits it
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stderr=log if args.admission_log else None)
    os.sched_setaffinity(0, mine)
    url = f"http://127.0.0.1:{port}"
    return Server(name, proc, Target("127.0.0.1", port, ids, proc.pid), url, log_path)


Row = tuple[
    str, float, float, float
]  # run label, goodput / capacity, admitted P90 / unloaded P90, recovery s


def capacity_within(
    target: Target, deadline_ms: float, unloaded: Phase, args: argparse.Namespace, tag: str
) -> float:
    """The most req/s a closed loop gets with its P90 within `deadline_ms`: 1, 2, 3, 4, 6, ... connections
    until the P90 passes the deadline (the 1-connection figure is the unloaded phase's). A second
    denominator for tight deadlines: `capacity` is measured with full batches at a P90 far above them."""
    best = len(unloaded.outcomes) / unloaded.seconds if pct(unloaded.latencies(), 90) <= deadline_ms else 0.0
    for connections in (2, 3, 4, 6, 8, 12, 16):
        if connections > args.connections:
            break
        phase = asyncio.run(closed_loop(target, connections, args.duration))
        rate, p90 = phase.count(200) / phase.seconds, pct(phase.latencies(), 90)
        print(f"{tag}  closed loop, {connections} connections: {rate:.1f} req/s, P90 {p90:.1f} ms")
        if p90 > deadline_ms:
            break
        best = max(best, rate)
    print(f"{tag}capacity within {deadline_ms:.0f} ms (P90): {best:.1f} req/s")
    return best


def measure(server: Server, args: argparse.Namespace, shed_costs: list[float]) -> list[Row]:
    """One round on one server: unloaded, capacity, then each overload run; prints as it goes. With
    `--shed-cost`, appends the server CPU per shed (us) to `shed_costs`."""
    target, url, log_path, tag = server.target, server.url, server.log_path, f"[{server.name}] "
    # the capacity level's load until hot models' graphs and trunks are made: measured before, the
    # unloaded and capacity phases met models still running eager
    settle(url, lambda: asyncio.run(closed_loop(target, args.connections, 2.0)))
    unloaded = asyncio.run(closed_loop(target, 1, args.duration))
    p50, p90 = pct(unloaded.latencies(), 50), pct(unloaded.latencies(), 90)
    print(
        f"{tag}unloaded (1 connection): {len(unloaded.outcomes) / unloaded.seconds:.1f} req/s, "
        f"P50 {p50:.1f} ms, P90 {p90:.1f} ms; {unloaded.cpu()}"
    )
    cap_phase = asyncio.run(closed_loop(target, args.connections, args.duration))
    capacity = cap_phase.count(200) / cap_phase.seconds
    print(
        f"{tag}capacity ({args.connections} connections, closed loop): {capacity:.1f} req/s, "
        f"P50 {pct(cap_phase.latencies(), 50):.1f} ms, P90 {pct(cap_phase.latencies(), 90):.1f} ms; "
        f"{cap_phase.cpu()}"
    )
    normal = 2 * p90 / 1000
    if args.shed_cost:  # every request hopeless (a 1 us deadline): what one shed costs the server
        # the server's idle CPU, 2 s before and 2 s after: the lesser, since background work (a model's
        # trace upgrade, a collection) lands in one window at times and would be charged to the sheds
        idle_before = idle_cpu(server.proc.pid, 2.0)
        shed_rate = args.factor * capacity
        shed, _, _ = asyncio.run(open_loop(target, shed_rate, args.duration, 0.001, args.timeout, 60.0))
        idle_after = idle_cpu(server.proc.pid, 2.0)
        idle = min(idle_before, idle_after)
        n = max(len(shed.outcomes), 1)
        cost_us = (shed.server_cpu_s - idle * shed.seconds) / n * 1e6
        shed_costs.append(cost_us)
        print(
            f"{tag}shed cost: {shed.count(503)} of {len(shed.outcomes)} shed (503) at {shed_rate:.0f} "
            f"req/s; server CPU {cost_us:.0f} us per request (less its idle {idle * 100:.1f}% of a core: "
            f"{idle_before * 100:.1f}% before, {idle_after * 100:.1f}% after); {shed.cpu()}"
        )
    rate = args.factor * capacity
    runs: list[tuple[str, float | None]] = []
    if not args.no_baseline:
        runs += [("no deadline", float(NO_DEADLINE_MS)), ("server default deadline", None)]
    multiples = [float(m) for m in args.deadline_multiples.split(",") if m]
    if args.deadline_ms:
        runs += [(f"deadline {d:.0f} ms", d) for d in args.deadline_ms]
    else:
        runs += [(f"deadline {m:g}x unloaded P90", m * p90) for m in multiples]
    at_deadline: dict[float, float] = {}
    if args.capacity_at_deadline:
        for _, header in runs:
            if header is not None and header < NO_DEADLINE_MS:
                at_deadline[header] = capacity_within(target, header, unloaded, args, tag)
    table: list[Row] = []
    for label, header in runs:
        before = server_counters(url)
        log_start = log_path.stat().st_size
        phase, recovery, probes = asyncio.run(
            open_loop(target, rate, args.duration, header, args.timeout, normal)
        )
        after = server_counters(url)
        limit = args.timeout if header is None or header >= NO_DEADLINE_MS else header / 1000
        good = sum(1 for o in phase.outcomes if o.status == 200 and o.latency <= limit)
        goodput = good / phase.seconds
        admitted_p90 = pct(phase.latencies(), 90)
        delta = {k.split("_total")[-1] or k: after.get(k, 0) - before.get(k, 0) for k in after}
        print(
            f"{tag}overload {args.factor:g}x ({rate:.0f} req/s offered, {label}, "
            f"{limit * 1000:.0f} ms): goodput {goodput:.1f} req/s = {goodput / capacity:.2f} x capacity; "
            f"admitted P50 {pct(phase.latencies(), 50):.0f} ms, P90 {admitted_p90:.0f} ms = "
            f"{admitted_p90 / p90:.1f} x unloaded P90; 200: {phase.count(200)} ({good} within "
            f"{limit * 1000:.0f} ms), 503: {phase.count(503)}, 504: {phase.count(504)}, "
            f"time-outs/errors: {phase.count(0)}, unanswered at the end: {phase.unanswered}; "
            f"back to normal (<= {normal * 1000:.0f} ms) {recovery:.2f} s after the load stopped "
            f"(probes {', '.join(f'{x * 1000:.0f}' for x in probes[:6])} ms)"
        )
        if header in at_deadline and at_deadline[header] > 0:
            print(
                f"  goodput / capacity within this deadline ({at_deadline[header]:.1f} req/s): "
                f"{goodput / at_deadline[header]:.2f}"
            )
        print(f"  {phase.cpu()}; server counters: {delta}")
        if args.admission_log:
            threads = args.threads or usable_cores()
            print(f"  admission estimate: {admission_summary(log_path, log_start, phase.seconds, threads)}")
        table.append((label, goodput / capacity, admitted_p90 / p90, recovery))
    print(f"{tag}GOALS (capacity {capacity:.1f} req/s, unloaded P90 {p90:.1f} ms, {args.factor:g}x load):")
    print(
        f"  {'run':<28} {'goodput/capacity (>=0.9)':>26} {'admitted P90/unloaded (<=2)':>29} "
        f"{'back to normal (<1 s)':>23}"
    )
    for label, ratio, tail, recovery in table:
        met = ["met" if ok else "MISS" for ok in (ratio >= 0.9, tail <= 2, recovery < 1)]
        print(
            f"  {label:<28} {ratio:>20.2f} {met[0]:>5} {tail:>23.1f} {met[1]:>5} "
            f"{recovery:>16.2f} s {met[2]:>4}"
        )
    return table


def main() -> None:
    args = parse_args()
    repo_dir = ROOT / "repo"
    ids = make_demo_models(repo_dir, 10, prefix="bench-qa")[: args.models]
    print(
        f"machine: {cpu_model()}, {usable_cores()} cores, CPU flags {cpu_flags()}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    servers = [start_server("this tree", None, args, repo_dir, ids, [])]
    if args.compare_src or args.compare_server_arg:
        compared = start_server("compared", args.compare_src, args, repo_dir, ids, args.compare_server_arg)
        servers.append(compared)
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus(args.generator_cpus) or mine)
    print(
        f"servers on CPUs {sorted(os.sched_getaffinity(servers[0].proc.pid))}, generator on "
        f"{sorted(os.sched_getaffinity(0))}"
    )
    results: dict[str, list[list[Row]]] = {s.name: [] for s in servers}
    shed_costs: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for server in servers:
            wait_ready(server.url, server.proc, timeout_s=300)
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]  # alternate who goes first
            for server in order:
                print(f"--- round {r + 1}, {server.name}, load average {os.getloadavg()[0]:.1f}")
                results[server.name].append(measure(server, args, shed_costs[server.name]))
    finally:
        for server in servers:
            server.proc.terminate()
            try:
                server.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
    if len(servers) > 1 or args.rounds > 1:
        print("\nSIDE BY SIDE (goodput/capacity, admitted P90/unloaded P90 per round; then the means):")
        for name, rounds in results.items():
            for i, (label, *_) in enumerate(rounds[0]):
                cells = [(rows[i][1], rows[i][2]) for rows in rounds]
                each = "  ".join(f"{g:.2f}/{t:.1f}" for g, t in cells)
                mean_g = sum(g for g, _ in cells) / len(cells)
                mean_t = sum(t for _, t in cells) / len(cells)
                print(f"  {name:<10} {label:<28} {each}   mean {mean_g:.2f} / {mean_t:.2f}")
        if args.shed_cost:
            print("SHED COST (server CPU us per shed request, per round; then the mean):")
            for name, costs in shed_costs.items():
                each = "  ".join(f"{c:.0f}" for c in costs)
                print(f"  {name:<10} {each}   mean {sum(costs) / len(costs):.0f}")


if __name__ == "__main__":
    main()
