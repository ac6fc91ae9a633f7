"""Server throughput vs the hardware limit, fp32 and bf16, in one run on the same cores.

1. Makes 10 unique MiniLM QA demo models (once, in bench/results/repo).
2. The limit: bare loops (tokenise + forward + decode, the same request as the load test) of every runtime
   evaluated (bench_runtimes.py: torch eager fp32/bf16, TorchScript traces of them (ts-fp32/bf16;
   tsp-bf16 with linear weights prepacked, as the server traces hot bf16 models), ONNX
   Runtime fp32, AOTInductor fp32) on one thread per core with one intra-op thread each, round-robin over
   the 10 models, at batch 1 and at batch 8 (the server's largest batch); servers are compared with the
   best batch-1 and the best batch-8 loop of them all.
3. The server: `inferpack serve` on those models, driven by wrk (an external HTTP load generator) with a Lua
   script picking a random model per request, at several concurrencies.
Prints req/s, P50/P90/P99 and server / limit per dtype, and bf16's agreement with fp32. The demo models
share their base (all but the top layer and head), so the server runs once with cross-tenant batching
(the default: a batch mixes models, their shared layers run once) and once without (`--cross-tenant`).
`--engines` chooses the servers' engines: eager, onnxruntime, mixed, auto (the server's default: mixed
where onnxruntime is installed); any but eager gives each model an ONNX version first (`inferpack
compile --format onnx`), and the server is measured once every model's session took over (onnxruntime)
or joined its eager module (mixed).
`--batch-latency-ms 100,0` runs an eager server per batch latency objective (0: none, max_batch_size
alone); `--baseline-src DIR` also runs the eager servers from another source tree (e.g. main's `src`);
`--interleave R` starts every such server at once and measures them in turn, R rounds (drifts of a shared
machine then hit every setting alike; medians and per-round ratios to the first printed).
`--server-cpus 0 --generator-cpus 1` pins the bare loops and the servers to some CPUs and wrk to others, so
the load generator stops sharing the server's cores: both the loops and the servers then get the same
cores (fewer of them), and the ratios say what the server's own overhead costs against the bare loop.

    .venv/bin/python bench/bench_server.py [--duration 10] [--concurrency 1,2,4,8,16] [--cross-tenant on,off]
        [--engines auto,eager,onnxruntime]
        [--runtimes eager-fp32,eager-bf16,ts-bf16,tsp-bf16,ts-fp32,ort-fp32,aoti-fp32]
        [--server-cpus 0 --generator-cpus 1]

Needs `wrk` (Debian: apt-get install wrk). Compare ratios within one run; cores here are shared.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import psutil
import torch
from bench_runtimes import CONTEXT as CONTEXT
from bench_runtimes import HEADER, LEGEND, RUNTIMES, Rate, machine_line, mixed_loop_throughput, run_loops
from bench_runtimes import QUESTION as QUESTION
from bench_runtimes import ROOT as ROOT

from inferpack.compile.compiler import compile_model
from inferpack.compile.options import CompileOptions
from inferpack.compile.tracing import traced
from inferpack.processes import free_port, server_command, wait_ready
from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.engines import resolve_engine
from inferpack.runtime.hardware import cpu_has_native_bf16, usable_cores
from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput


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


def warm_up(url: str, ids: list[str], connections: int) -> None:
    """The level's load (wrk) until the server's background upgrades have settled (`settle`)."""
    settle(url, lambda: wrk(url, ids, connections, 2))


def settle(url: str, load: Callable[[], object]) -> None:
    """Run `load` (~2 s of a benchmark's traffic) until the server's background upgrades have settled: hot
    models' traced graphs (server.trace_after_batches), bases' trunks (server.trunk_after_batches) and
    ONNX Runtime sessions take ~0.3-0.6 s of CPU each, which would otherwise fall into the measurement.
    Settled: a window of the load in which no upgrade was made and after which none is in progress
    (`inferpack_upgrades_in_progress`). The upgrade lane is niced, so under a load that fills the cores
    (one pinned core above all) it gets almost no CPU: while it has work the load pauses for it. At most
    ~3 min; a server from a source tree without the gauge settles by swaps and trunks alone."""
    load()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        idle_deadline = time.monotonic() + 60
        while upgrades(url)["in_progress"] and time.monotonic() < idle_deadline:
            time.sleep(0.2)  # no load: the niced lane takes the idle cores
        before = upgrades(url)
        load()
        after = upgrades(url)
        if after == before and not after["in_progress"]:
            return
    print(f"  warning: {url} still upgrading after the warm-up: {upgrades(url)}", file=sys.stderr)


GENERATOR_CPUS: set[int] | None = None  # --generator-cpus: wrk runs on these (None: wherever it may)


def pin_generator() -> None:
    """In wrk's child process before exec: keep it on the generator's CPUs (--generator-cpus)."""
    if GENERATOR_CPUS is not None:
        os.sched_setaffinity(0, GENERATOR_CPUS)


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
        preexec_fn=pin_generator,
    ).stdout
    os.unlink(fh.name)

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p50": ms("50"),
        "p90": ms("90"),
        "p99": ms("99"),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def run_server(
    repo: Path,
    dtype: str,
    cross_tenant: bool = True,
    threads: int | None = None,
    engine: str = "eager",
    batch_latency_ms: str | None = None,
    source: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`inferpack serve` on every model of `repo` in `dtype` with `engine` (and `threads` inference
    threads; None: the server's default), once it is ready (for onnxruntime: once every model's session
    took over from its eager stand-in). `batch_latency_ms`: its batching.max_batch_latency_ms (None: its
    default); `source`: run this source tree's inferpack instead of the installed one."""
    port = free_port()
    cmd = server_command(
        repository=str(repo),
        models=None,
        port=port,
        threads=threads,
        log_level="warning",
        extra_args=["--dtype", dtype, "--engine", engine],
    )
    env = {**os.environ, "INFERPACK_SERVER__BATCHING__CROSS_TENANT": str(cross_tenant).lower()}
    if batch_latency_ms is not None:
        env["INFERPACK_SERVER__BATCHING__MAX_BATCH_LATENCY_MS"] = batch_latency_ms
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve())
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout_s=180)
    # sessions load in the background: measure once every model's took over (onnxruntime) or joined its
    # eager module (mixed; auto is mixed here when onnxruntime is installed, but not in a source tree
    # from before engine mixed, whose auto never loads a session: `source` servers are not waited for)
    if engine in ("onnxruntime", "mixed") or (engine == "auto" and source is None and auto_is_mixed(dtype)):
        wanted = len(LocalRepository(repo).model_ids())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and swaps(url) < wanted:
            time.sleep(0.2)
    return proc, url


def auto_is_mixed(dtype: str) -> bool:
    """True when engine auto means ONNX Runtime sessions beside the eager models here (where eager
    computes fp32 and onnxruntime is installed: runtime/engines.py); where eager computes bf16 it is
    eager, and waiting for sessions would wait for ever."""
    eager_fp32 = dtype == "fp32" or (dtype == "auto" and not cpu_has_native_bf16())
    return resolve_engine("auto", "cpu", ort_installed=ort_available(), eager_fp32=eager_fp32) == "mixed"


def ort_available() -> bool:
    """True when onnxruntime can be imported here (the servers run this interpreter)."""
    return importlib.util.find_spec("onnxruntime") is not None


def forwards(url: str) -> tuple[float, float, float]:
    """The server's forwards so far, their rows and their models (`inferpack_batch_rows` and
    `inferpack_batch_models`; zeros from a server without them)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()

    def value(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return (
        value("inferpack_batch_rows_count"),
        value("inferpack_batch_rows_sum"),
        value("inferpack_batch_models_sum"),
    )


def swaps(url: str) -> float:
    """The server's `inferpack_runtime_swaps_total`: stand-ins replaced by their ONNX Runtime session,
    sessions joining eager models (engine mixed), traced graphs taking over (0 when it has none)."""
    return upgrades(url)["swaps"]


def upgrades(url: str) -> dict[str, float]:
    """The server's background upgrades: swaps made (see `swaps`), bases' trunks made, and jobs on the
    upgrade lane now (`inferpack_upgrades_in_progress`; 0 from a server without the gauge)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()

    def value(pattern: str) -> float:
        found = re.search(rf"^{pattern} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return {
        "swaps": value("inferpack_runtime_swaps_total"),
        "trunks": value(r'inferpack_base_trunks_total\{event="made"\}'),
        "in_progress": value("inferpack_upgrades_in_progress"),
    }


Server = subprocess.Popen[bytes]
Measure = Callable[[str, Server, str, int], dict[str, float]]
Start = Callable[[str | None, Path | None], tuple[Server, str]]


def interleaved(
    servers: list[tuple[str, str | None, Path | None]],
    levels: list[int],
    rounds: int,
    ids: list[str],
    start: Start,
    measure: Measure,
) -> None:
    """Every (label, batch latency objective, source tree) server running at once (idle ones cost nothing),
    measured in turn `rounds` times per level; prints the median req/s and P90 and the median of each
    round's ratio to the first server."""
    started = [(label, *start(latency, source)) for label, latency, source in servers]
    try:
        for c in levels:
            for _, _, url in started:
                warm_up(url, ids, c)
            got: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in started}
            for _ in range(rounds):
                for label, proc, url in started:
                    got[label].append(measure(label, proc, url, c))
            first = got[started[0][0]]
            for label, runs in got.items():
                ratios = [r["rps"] / f["rps"] for r, f in zip(runs, first, strict=True)]
                print(
                    f"  median over {rounds} rounds, c={c}: {label:20s} "
                    f"{statistics.median(r['rps'] for r in runs):7.1f} req/s  "
                    f"P90 {statistics.median(r['p90'] for r in runs):7.1f} ms  "
                    f"/ {started[0][0]}: {statistics.median(ratios):.2f} "
                    f"(rounds {min(ratios):.2f}-{max(ratios):.2f})",
                    flush=True,
                )
    finally:
        for _, proc, _ in started:
            proc.send_signal(signal.SIGTERM)
        for _, proc, _ in started:
            proc.wait(timeout=60)


def server_settings(engines: str, dtypes: str, cross_tenant: str) -> list[tuple[str, str, str]]:
    """(engine, dtype, cross-tenant on/off) of each server to measure: eager, mixed and auto (the
    default) in every dtype and mode; onnxruntime once (it computes fp32 and its sessions mix no
    tenants)."""
    out = []
    for engine in engines.split(","):
        if engine == "onnxruntime":
            out.append((engine, "fp32", "off"))
            continue
        out += [(engine, d, m) for d in dtypes.split(",") for m in cross_tenant.split(",")]
    return out


def add_onnx_versions(repo: LocalRepository, ids: list[str]) -> None:
    """`inferpack compile --format onnx` for every model that has no ONNX version yet."""
    for model_id in ids:
        if all(repo.manifest(model_id, v).format != "onnx" for v in repo.versions(model_id)):
            compile_model(repo, model_id, CompileOptions(output_format="onnx"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="wrk connections to try")
    parser.add_argument("--dtypes", default="fp32,bf16", help="eager servers' dtypes")
    parser.add_argument(
        "--engines",
        default="auto,eager,onnxruntime",
        help="server engines (eager, onnxruntime, mixed, auto); any but eager adds an ONNX version to each "
        "model first (compile --format onnx)",
    )
    parser.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help="bare loops to measure (bench_runtimes.py); ratios are to the best of them",
    )
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
    parser.add_argument(
        "--batch-latency-ms",
        default="",
        help="eager servers per batching.max_batch_latency_ms value, e.g. 100,0 (default: the server's own)",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        help="start every eager server variant of a setting at once and measure them in turn, this many "
        "rounds per level (slow drifts of a shared machine then hit each alike); prints medians and the "
        "median per-round ratio to the first",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also run each eager server from this source tree (e.g. a checkout of main's src/), labelled "
        "'base' (the reference of --interleave's ratios)",
    )
    parser.add_argument(
        "--mixed-loops",
        default="ts-bf16",
        help="bare loops over batches of random models mixed by the server's cross-tenant batching "
        "(eager-bf16, ts-bf16: traced as the server traces a hot model, its pieces included; '' for none): "
        "the ceiling of a server with random traffic over tenants sharing a base, without HTTP",
    )
    parser.add_argument("--mixed-batches", default="8", help="rows per batch of the mixed loops")
    parser.add_argument(
        "--server-cpus",
        default=None,
        help="run the bare loops and the servers on these CPUs only, e.g. 0 (with --generator-cpus: the load "
        "generator off the server's cores)",
    )
    parser.add_argument("--generator-cpus", default=None, help="run wrk on these CPUs only, e.g. 1")
    args = parser.parse_args()
    global GENERATOR_CPUS
    if args.generator_cpus is not None:
        GENERATOR_CPUS = {int(c) for c in args.generator_cpus.split(",")}
    if args.server_cpus is not None:  # this process's loops and its server children inherit it
        os.sched_setaffinity(0, {int(c) for c in args.server_cpus.split(",")})
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    repo_dir = args.repository or ROOT / "repo"
    ids = make_demo_models(repo_dir, 10, prefix="bench-qa")  # existing models are kept as they are
    repo = LocalRepository(repo_dir)
    print(machine_line())
    print(
        f"loops and servers on CPUs {sorted(os.sched_getaffinity(0))}, wrk on "
        f"{sorted(GENERATOR_CPUS) if GENERATOR_CPUS is not None else 'any CPU'}",
        flush=True,
    )
    same, score_diff = agreement(repo, ids)
    print(
        f"bf16 vs fp32 over {len(ids)} models x 4 inputs: identical answers {same:.0%}, "
        f"max score diff {score_diff:.4f}"
    )
    print(LEGEND)
    print(HEADER, flush=True)
    loops = run_loops(repo, ids, args.runtimes.split(","), args.duration)
    best1 = max(loops, key=lambda f: f.loop1.wall)
    best8 = max(loops, key=lambda f: f.loop8.wall)
    limit1, limit8 = best1.loop1.wall, best8.loop8.wall
    # by CPU time (requests per CPU-second x cores): steadier than the wall clock on shared cores
    cpu1 = max(loops, key=lambda f: f.loop1.cpu)
    cpu8 = max(loops, key=lambda f: f.loop8.cpu)
    print(
        f"best batch-1 loop {best1.name} {limit1:.1f} req/s (by CPU time {cpu1.name} {cpu1.loop1.cpu:.1f}), "
        f"best batch-8 loop {best8.name} {limit8:.1f} req/s (by CPU time {cpu8.name} {cpu8.loop8.cpu:.1f})",
        flush=True,
    )
    # the best batch-1 loop's mean time per request, each thread serving one request at a time (issue 12:
    # at 2 connections the server's P90 within 1.3x of it)
    loop_ms = 1000 * usable_cores() / limit1
    print(f"best batch-1 loop's latency: {loop_ms:.1f} ms per request", flush=True)
    mixed = {
        (name, batch): mixed_loop(repo, ids, name, int(batch), args.duration)
        for name in filter(None, args.mixed_loops.split(","))
        for batch in args.mixed_batches.split(",")
    }
    for (name, batch), (rate, models) in mixed.items():
        print(
            f"mixed b{batch} loop {name} (random models per batch, the server's cross-tenant batching, no "
            f"HTTP): {rate.wall:.1f} req/s (by CPU time {rate.cpu:.1f}), {models:.1f} models per batch = "
            f"{rate.wall / limit8:.2f} ({rate.cpu / cpu8.loop8.cpu:.2f}) of the best batch-8 loop",
            flush=True,
        )
    rows = []
    settings = server_settings(args.engines, args.dtypes, args.cross_tenant)
    if any(engine != "eager" for engine, _, _ in settings):  # auto and mixed use them too (when present)
        add_onnx_versions(repo, ids)
    variants: list[tuple[str, str | None, Path | None]] = [
        (f"/lat-{ms}", ms, None) for ms in args.batch_latency_ms.split(",") if ms
    ] or [("", None, None)]
    if args.baseline_src is not None:  # first: the reference of the interleaved ratios
        variants.insert(0, ("/base", None, args.baseline_src))

    def measure(label: str, proc: Server, url: str, c: int) -> dict[str, float]:
        cpu_before, forwards_before = process_cpu_s(proc.pid), forwards(url)
        r = wrk(url, ids, c, args.duration)
        cpu_s = process_cpu_s(proc.pid) - cpu_before
        r["cpu_rps"] = r["rps"] * int(args.duration) / max(cpu_s, 1e-9) * usable_cores()
        done = [after - before for after, before in zip(forwards(url), forwards_before, strict=True)]
        r["rows"], r["models"] = (done[1] / done[0], done[2] / done[0]) if done[0] else (0.0, 0.0)
        rows.append((label, c, r))
        print(
            f"{label:20s} c={c:<3d} {r['rps']:7.1f} req/s  "
            f"P50 {r['p50']:6.1f} ms  P90 {r['p90']:6.1f} ms  P99 {r['p99']:6.1f} ms  "
            f"errors {int(r['errors'])}  of best b1 loop {r['rps'] / limit1:.2f} "
            f"(CPU {r['cpu_rps'] / cpu1.loop1.cpu:.2f})  of best b8 loop {r['rps'] / limit8:.2f} "
            f"(CPU {r['cpu_rps'] / cpu8.loop8.cpu:.2f})  P90 / b1 loop's latency {r['p90'] / loop_ms:.2f}  "
            f"per forward: {r['rows']:.1f} rows, {r['models']:.1f} models",
            flush=True,
        )
        return r

    for engine, dtype, mode in settings:
        levels = [int(x) for x in (args.bf16_concurrency if dtype == "bf16" else args.concurrency).split(",")]
        name = "ort/fp32" if engine == "onnxruntime" else f"{dtype}/xt-{mode}"
        name = name if engine in ("eager", "onnxruntime") else f"{engine}/{name}"
        servers = (
            [(name + suffix, lat, src) for suffix, lat, src in variants] if engine != "onnxruntime" else []
        )
        servers = servers or [(name, None, None)]

        def start(
            latency: str | None,
            source: Path | None,
            dtype: str = dtype,
            mode: str = mode,
            engine: str = engine,
        ) -> tuple[Server, str]:
            return run_server(repo_dir, dtype, mode == "on", None, engine, latency, source)

        if args.interleave:
            interleaved(servers, levels, args.interleave, ids, start, measure)
            continue
        for label, latency, source in servers:
            proc, url = start(latency, source)
            try:
                for c in levels:
                    warm_up(url, ids, c)
                    measure(label, proc, url, c)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    print(
        "\nbest per server setting (in brackets: requests per server CPU-second x cores, against the loops'):"
    )
    for label in dict.fromkeys(r[0] for r in rows):
        best = max((r for r in rows if r[0] == label), key=lambda r: r[2]["rps"])
        rps, by_cpu = best[2]["rps"], best[2]["cpu_rps"]
        print(
            f"  {label}: {rps:.1f} req/s at c={best[1]} = {rps / limit1:.2f} "
            f"({by_cpu / cpu1.loop1.cpu:.2f}) of the best batch-1 loop ({best1.name}), {rps / limit8:.2f} "
            f"({by_cpu / cpu8.loop8.cpu:.2f}) of the best batch-8 loop ({best8.name})"
        )


def mixed_loop(
    repo: LocalRepository, ids: list[str], name: str, batch: int, seconds: float
) -> tuple[Rate, float]:
    """`mixed_loop_throughput` of the models loaded as the server loads them in `name`'s dtype, and for
    ts-*, traced as the server traces a hot model (`compile.tracing.traced`: the whole graph and the pieces
    for mixed batches, the base's trunk among them)."""
    kind, dtype = name.split("-")
    if kind not in ("eager", "ts") or dtype not in ("fp32", "bf16"):
        raise SystemExit(f"--mixed-loops: {name!r} is not one of eager-fp32, eager-bf16, ts-fp32, ts-bf16")
    torch.set_num_threads(1)
    models = [load_model(repo, m, dtype="bf16" if dtype == "bf16" else "fp32") for m in ids]
    if kind == "ts":
        models = [traced(m) for m in models]
    return mixed_loop_throughput(models, batch, seconds)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


if __name__ == "__main__":
    main()
