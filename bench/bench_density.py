"""Density: thousands of unique models on one server under a memory budget, Zipf traffic, cold and warm.

Makes N unique MiniLM-class tenant models that share one base (each with its own top layer and head;
`--no-share-base` for fully unique models, `--arch tiny` for small ones) and, for each Zipf exponent:

1. **first touches**: a fresh lazy server with the budget and no statistics, driven open loop (Poisson
   arrivals, Zipf over the models in a shuffled popularity order) for `--first` seconds: what a cold
   server gives while it meets its models;
2. **steady state**: the server restarted with `--warm-start` from the access statistics phase 1 wrote
   (the hottest models load in the background before the traffic starts; the bench waits for them),
   `--warmup` seconds of the same traffic, then `--duration` measured seconds.

Printed per phase: P50/P90/P99 of all answers, of warm answers and of cold first answers (those that
loaded their model), cold - warm at the median, the hit ratio (warm answers / all answers in the measured
window), loads, mean load time and evictions; then the issue's goals as met/missed lines. The budget
defaults to a quarter of the tenants: the shared base plus N/4 tenants' own weights, in the serving dtype.

    .venv/bin/python bench/bench_density.py                       # 3,000 tenants, s = 1.0 and 1.1, ~13 min
    .venv/bin/python bench/bench_density.py --zipf-s 1.0 --first 60 --warmup 30 --duration 120
    .venv/bin/python bench/bench_density.py --zipf-s 1.0 --baseline-src /tmp/main-src  # before | after
    .venv/bin/python bench/bench_density.py --eviction-policy slru frequency   # policies side by side
    .venv/bin/python bench/bench_density.py --replay 40000 --no-serve   # eviction policies' hit ratios
    .venv/bin/python bench/bench_density.py --cold-loads 40 --no-serve  # cold loads timed in-process
    .venv/bin/python bench/bench_density.py --models 1000 --arch tiny --no-share-base --budget-mb 1024

Cores here are shared: compare figures within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from safetensors import safe_open

from inferpack.loadtest import histograms as H
from inferpack.loadtest.result import load_result
from inferpack.loadtest.traffic import zipf_picker, zipf_pmf
from inferpack.processes import free_port, metric_sum, python_cli, server_command, wait_ready
from inferpack.progress import counting_progress
from inferpack.repository.demo import make_demo_models
from inferpack.repository.local import open_repository
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.hardware import resolve_dtype
from inferpack.runtime.modeling import load_model, recycle
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.skeletons import SKELETONS, preload_libraries
from inferpack.runtime.tasks import TextInput
from inferpack.settings import ServerSettings

ROOT = Path(__file__).resolve().parent / "results"
GOAL_P90_MS = 100.0
GOAL_COLD_EXTRA_MS = 50.0
FLOATS = {"F64", "F32", "F16", "BF16"}
INTEGER_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tensor_bytes(path: Path, float_bytes: int) -> int:
    """Bytes a safetensors file's tensors hold once loaded with floats of `float_bytes` each."""
    total = 0
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_slice(name)
            numel = 1
            for d in t.get_shape():
                numel *= d
            dtype = t.get_dtype()
            total += numel * (float_bytes if dtype in FLOATS else INTEGER_BYTES.get(dtype, 8))
    return total


def quarter_budget_mb(repo: Path, ids: list[str], fraction: float) -> float:
    """The shared base(s) plus `fraction` of the tenants' own weights, in the serving dtype (MiB)."""
    float_bytes = resolve_dtype("auto", "cpu").itemsize
    shared = sum(tensor_bytes(p, float_bytes) for p in (repo / "_shared" / "weights").glob("*.safetensors"))
    own = tensor_bytes(repo / ids[0] / "1" / "model.safetensors", float_bytes)
    return (shared + fraction * len(ids) * own) / 2**20


@dataclass
class Phase:
    """One measured stretch of traffic and the server's counters over it."""

    name: str
    result: dict[str, Any]
    loads: float
    load_seconds: float
    evictions: float
    extra: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            **self.result,
            "loads": self.loads,
            "evictions": self.evictions,
            "mean_load_ms": 1000 * self.load_seconds / max(1.0, self.loads),
            **self.extra,
        }


class Server:
    """One lazy `inferpack serve` process with the budget, warm start and eviction policy; `source`: run
    the server from another source tree (`--baseline-src`), else from this one."""

    def __init__(
        self, repo: Path, budget_mb: float, stats: Path, policy: str, source: Path | None = None
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = ["--lazy", "--memory-budget-mb", f"{budget_mb:.1f}", "--eviction-policy", policy]
        args += ["--warm-start", "--access-stats-file", str(stats)]
        self.proc = subprocess.Popen(
            server_command(
                repository=str(repo),
                models=None,
                port=port,
                threads=None,
                log_level="warning",
                extra_args=args,
            ),
            env={**os.environ, "PYTHONPATH": str(source.resolve())} if source is not None else None,
        )
        wait_ready(self.url, self.proc, timeout_s=300)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def wait_warm_start(self, timeout_s: float = 600) -> float:
        """Wait until the warm start has tried every model it meant to; returns the seconds it took."""
        started = time.monotonic()
        while metric_sum(self.metrics(), "inferpack_warm_start_pending") > 0:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError("the warm start did not finish")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self) -> float:
        """SIGTERM (the statistics are written at shutdown); returns the peak RSS in MiB."""
        peak = peak_rss_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        return peak


def counters(text: str) -> tuple[float, float, float]:
    return (
        metric_sum(text, "inferpack_model_load_seconds_count"),
        metric_sum(text, "inferpack_model_load_seconds_sum"),
        metric_sum(text, "inferpack_model_evictions_total", {"reason": "budget"}),
    )


@dataclass(frozen=True)
class Traffic:
    """What `inferpack bench run` sends: Zipf over the models file, open loop."""

    models_file: Path
    zipf_s: float
    rate: float


@dataclass(frozen=True)
class Window:
    """One run of traffic: measured seconds after a warm-up; results under `out`."""

    seconds: float
    warmup: float
    out: Path
    seed: int  # phases differ: the steady state must not replay the sequence its statistics came from


def drive(server: Server, traffic: Traffic, window: Window) -> dict[str, Any]:
    """`inferpack bench run` open loop; the measured window's latencies split warm/cold."""
    window.out.mkdir(parents=True, exist_ok=True)
    command = [*python_cli(), "bench", "run", "--url", server.url, "--no-report"]
    command += ["--models-file", str(traffic.models_file), "--traffic", "zipf"]
    command += ["--zipf-s", str(traffic.zipf_s), "--rate", str(traffic.rate), "--arrivals", "poisson"]
    command += ["--duration", str(window.seconds), "--warmup", str(window.warmup), "--out", str(window.out)]
    command += ["--seed", str(window.seed)]
    with (window.out / "bench-run.log").open("w") as log:  # its tables per model: not between the figures
        subprocess.run(command, check=True, stdout=log)
    result = load_result(window.out / "result.json")
    warm = H.summarize(H.decode(result.histograms.warm))
    cold = H.summarize(H.decode(result.histograms.cold))
    return {
        "throughput": result.throughput(),
        "errors": result.error_count(),
        "all": result.latency().as_dict(),
        "warm": warm.as_dict(),
        "cold": cold.as_dict(),
        "hit_ratio": warm.count / max(1, warm.count + cold.count),
        "cold_minus_warm_p50_ms": cold.p50_ms - warm.p50_ms if cold.count and warm.count else float("nan"),
    }


def server_cpu_s(server: Server) -> float:
    """CPU seconds the server process has used (user + system, all its threads)."""
    times = psutil.Process(server.proc.pid).cpu_times()
    return float(times.user + times.system)


def run_phase(name: str, server: Server, traffic: Traffic, window: Window, extra: dict[str, float]) -> Phase:
    """Drive the server and read its load and eviction counters before and after, and its CPU time per
    answer over the whole run (warm-up included: a robust figure on shared cores, where latencies are
    not); and how many base trunks it made and holds (0 on a tree without them)."""
    before = counters(server.metrics())
    cpu = server_cpu_s(server)
    result = drive(server, traffic, window)
    cpu = server_cpu_s(server) - cpu
    text = server.metrics()
    after = counters(text)
    loads, load_s, evictions = (a - b for a, b in zip(after, before, strict=True))
    answers = result["throughput"] * (window.seconds + window.warmup)  # offered rate, open loop
    extra = {
        **extra,
        "server_cpu_ms_per_answer": 1000 * cpu / max(1.0, answers),
        "base_trunks_made": metric_sum(text, "inferpack_base_trunks_total", {"event": "made"}),
        "base_trunks_held": metric_sum(text, "inferpack_base_trunks_held"),
    }
    return Phase(name, result, loads, load_s, evictions, extra)


def one_config(
    repo: Path,
    traffic: Traffic,
    args: argparse.Namespace,
    policy: str,
    budget_mb: float,
    kind: str,
    source: Path | None = None,
) -> list[Phase]:
    """Both phases for one Zipf exponent and eviction policy (the server from `source` when given)."""
    tag = f"density-{kind}-s{traffic.zipf_s:g}-{policy}" + ("-baseline" if source is not None else "")
    stats = ROOT / f"{tag}-access.json"
    stats.unlink(missing_ok=True)  # phase 1 starts without history
    server = Server(repo, budget_mb, stats, policy, source)
    try:
        first = run_phase(
            "first touches", server, traffic, Window(args.first, 0.0, ROOT / f"{tag}-first", seed=1), {}
        )
    finally:
        first_peak = server.stop()
    first.extra["peak_rss_mb"] = first_peak
    server = Server(repo, budget_mb, stats, policy, source)  # warm start from what phase 1 recorded
    try:
        warm_s = server.wait_warm_start()
        text = server.metrics()
        extra = {
            "warm_start_s": warm_s,
            "warm_start_loads": metric_sum(text, "inferpack_warm_start_loads_total"),
            "warm_start_mb": metric_sum(text, "inferpack_model_memory_bytes") / 2**20,
        }
        window = Window(args.duration, args.warmup, ROOT / f"{tag}-steady", seed=2)
        steady = run_phase("steady state", server, traffic, window, extra)
        memory = metric_sum(server.metrics(), "inferpack_model_memory_bytes")
    finally:
        peak = server.stop()
    steady.extra.update(
        model_memory_mb=memory / 2**20, budget_filled=memory / (budget_mb * 2**20), peak_rss_mb=peak
    )
    return [first, steady]


class _Instant:
    """A loaded model for the policy replay: no weights, loads at once."""

    def __init__(self, model_id: str) -> None:
        self.model_id, self.version, self.module = model_id, 1, None
        self.extra: dict[str, Any] = {}


async def _replay(policy: str, n: int, capacity: int, picks: list[int], warm: int) -> float:
    """Hit ratio of the registry's own eviction code (`policy`) on a request sequence over n models that
    each hold 1 MiB, with room for `capacity`; requests after the first `warm` are counted."""
    names = [f"m{i}" for i in range(n)]
    repo: Any = type("Repo", (), {"model_ids": lambda self: names})()
    settings = ServerSettings.model_validate(
        {"lazy_load": True, "memory_budget_mb": capacity, "eviction_policy": policy}
    )

    def instant(_repo: Any, model_id: str, _version: int | None, _cold: bool) -> Any:
        return _Instant(model_id)

    registry = ModelRegistry(
        repo,
        settings,
        InferencePool(1),
        loader=instant,
        measure=lambda m: {id(m): 2**20},
        estimate=lambda _model, _version: 2**20,
    )
    hits = 0
    for k, index in enumerate(picks):
        async with registry.use(names[index]) as (_, cold):
            hits += k >= warm and not cold
    await registry.close()
    return hits / max(1, len(picks) - warm)


def policy_replay(n: int, fraction: float, s: float, requests: int) -> dict[str, float]:
    """Hit ratios of both eviction policies and of the ideal static cache (the top `capacity` models) on one
    Zipf request sequence: the registry's code with instant fake loads, so only the policy differs."""
    capacity = max(1, int(n * fraction))
    picks = [int(i) for i in zipf_picker(n, s, np.random.default_rng(7)).sample(requests)]
    warm = requests // 2
    pmf = zipf_pmf(n, s)
    out = {p: asyncio.run(_replay(p, n, capacity, picks, warm)) for p in ("slru", "frequency")}
    out["ideal"] = float(np.sort(pmf)[::-1][:capacity].sum())
    return out


def cold_loads(repo: Path, ids: list[str], count: int) -> dict[str, float]:
    """In this process, alone: `count` cold loads of tenants (the base already held by a first tenant),
    each followed by its first and second forward (one QA request); medians in ms. Twice: module shells
    recycled or ready as spares (what a server's loads find: `SpareShells`), and every shell built by
    the load itself (what a server's loads did before spares while no model had been evicted yet). The
    time a cold first answer spends beyond a warm one, without the server around it."""
    torch.set_num_threads(1)  # as on the load lane and the inference threads
    repository = open_repository(str(repo))
    preload_libraries()
    item = TextInput("What is the capital of France?", "Paris is the capital and largest city of France.")
    held = load_model(repository, ids[0], warmup=None)
    held.predict([item])
    loads, first, second, built = [], [], [], []
    for model_id in ids[1 : count + 1]:
        t0 = time.perf_counter()
        model = load_model(repository, model_id, warmup=None)
        t1 = time.perf_counter()
        model.predict([item])
        t2 = time.perf_counter()
        model.predict([item])
        loads.append(t1 - t0)
        first.append(t2 - t1)
        second.append(time.perf_counter() - t2)
        recycle(model)
    key = str(held.extra["skeleton"])
    while SKELETONS.take(key) is not None:  # no shell to reuse: each load builds its own
        pass
    for model_id in ids[count + 1 : 2 * count + 1]:
        t0 = time.perf_counter()
        load_model(repository, model_id, warmup=None)
        built.append(time.perf_counter() - t0)
    return {
        "load_ms": 1000 * statistics.median(loads),
        "first_forward_ms": 1000 * statistics.median(first),
        "second_forward_ms": 1000 * statistics.median(second),
        "load_building_its_shell_ms": 1000 * statistics.median(built),
    }


def print_phase(p: Phase) -> None:
    r = p.result
    print(
        f"  {p.name}: {r['throughput']:.1f} req/s, errors {r['errors']}, hit ratio {r['hit_ratio']:.3f}, "
        f"loads {p.loads:.0f} (mean {1000 * p.load_seconds / max(1.0, p.loads):.1f} ms), "
        f"evictions {p.evictions:.0f}"
    )
    for name in ("all", "warm", "cold"):
        s = r[name]
        print(
            f"    {name:4s} n={s['count']:5d}  P50 {s['p50_ms']:7.1f}  P90 {s['p90_ms']:7.1f}  "
            f"P99 {s['p99_ms']:7.1f} ms"
        )
    print(f"    cold - warm at the median: {r['cold_minus_warm_p50_ms']:.1f} ms")
    if p.extra:
        print("    " + ", ".join(f"{k} {v:.1f}" for k, v in p.extra.items()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=3000)
    parser.add_argument("--arch", default="minilm", choices=["minilm", "tiny"])
    parser.add_argument("--share-base", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--budget-mb",
        type=float,
        default=None,
        help="model memory budget (default: --budget-fraction of the tenants)",
    )
    parser.add_argument(
        "--budget-fraction",
        type=float,
        default=0.25,
        help="budget = shared base + this fraction of the tenants' own weights",
    )
    parser.add_argument("--rate", type=float, default=12.0, help="open-loop arrivals per second")
    parser.add_argument(
        "--first",
        type=float,
        default=240.0,
        help="seconds of first touches (phase 1); its history is what the steady state's warm start "
        "loads: at 12 req/s over 3,000 Zipf(1.0) tenants ~240 s meet enough models to fill a quarter budget",
    )
    parser.add_argument("--warmup", type=float, default=15.0, help="phase 2 warm-up seconds")
    parser.add_argument("--duration", type=float, default=60.0, help="phase 2 measured seconds")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also run every configuration with the server from this source tree (e.g. main's `src`), "
        "before this tree's, for side-by-side figures on shared cores",
    )
    parser.add_argument(
        "--baseline-after",
        action="store_true",
        help="run the baseline after this tree's server, not before (alternate runs: drift on shared "
        "cores then favours neither)",
    )
    parser.add_argument("--zipf-s", type=float, nargs="+", default=[1.0, 1.1], help="Zipf exponents to run")
    parser.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the servers (--no-serve: only --cold-loads and --replay)",
    )
    parser.add_argument("--eviction-policy", nargs="+", default=["slru"], choices=["slru", "frequency"])
    parser.add_argument(
        "--replay",
        type=int,
        default=0,
        help="first replay this many Zipf requests through both eviction policies (e.g. 40000: ~1 min)",
    )
    parser.add_argument(
        "--cold-loads", type=int, default=0, help="first time this many cold loads in-process (e.g. 40)"
    )
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
    budget_mb = args.budget_mb or quarter_budget_mb(repo, ids, args.budget_fraction)

    summaries: list[dict[str, Any]] = []
    goals: list[str] = []
    if args.cold_loads:
        found = cold_loads(repo, ids, args.cold_loads)
        print(
            f"{args.cold_loads} cold loads alone (base held), medians: "
            + ", ".join(f"{k} {v:.1f}" for k, v in found.items())
        )
        summaries.append({"phase": "cold loads alone", **found})
    if args.replay:
        print(
            f"eviction policies replayed ({args.replay} Zipf requests over {args.models} models, room for "
            f"{args.budget_fraction:g} of them, hit ratio over the second half; no model runs):"
        )
        for s in args.zipf_s:
            ratios = policy_replay(args.models, args.budget_fraction, s, args.replay)
            print("  s=" + f"{s:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
            summaries.append({"zipf_s": s, "phase": "policy replay", **ratios})
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.baseline_src is not None:
        trees.insert(len(trees) if args.baseline_after else 0, ("baseline", args.baseline_src))
    for s in args.zipf_s if args.serve else []:
        for policy in args.eviction_policy:
            for label, source in trees:
                traffic = Traffic(models_file, s, args.rate)
                phases = one_config(repo, traffic, args, policy, budget_mb, kind, source)
                print(
                    f"\n[{label}] {args.models} {kind} models, budget {budget_mb:.0f} MiB, Zipf s={s:g}, "
                    f"{policy}, {args.rate:g} req/s offered; first {args.first:g} s, then a restart with "
                    f"warm start, {args.warmup:g} s warm-up, {args.duration:g} s measured"
                )
                for p in phases:
                    print_phase(p)
                    summaries.append(
                        {"tree": label, "zipf_s": s, "policy": policy, "budget_mb": budget_mb, **p.summary()}
                    )
                steady = phases[1].result
                p90, extra = steady["all"]["p90_ms"], steady["cold_minus_warm_p50_ms"]
                goals.append(
                    f"[{label}] s={s:g} {policy}: steady-state P90 {p90:.1f} ms (goal <= {GOAL_P90_MS:g}: "
                    f"{'met' if p90 <= GOAL_P90_MS else 'missed'}); cold - warm at the median {extra:.1f} ms "
                    f"(goal <= {GOAL_COLD_EXTRA_MS:g}: {'met' if extra <= GOAL_COLD_EXTRA_MS else 'missed'})"
                )
    if goals:
        print("\ngoals (issue 12):")
    for line in goals:
        print(f"  {line}")
    (ROOT / f"density-{kind}-summary.json").write_text(json.dumps(summaries, indent=2) + "\n")


if __name__ == "__main__":
    main()
