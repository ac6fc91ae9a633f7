"""Resident memory of the weights against inference threads and server processes, measured in one run.

Ten MiniLM QA demo models (tenants of one base: all but the top layer and the head are one shared file)
are served by `inferpack serve`
- in one server with 1, 2 and 4 inference threads (one server at a time), and
- by 1, 2 and 3 server processes at once, each holding the same models (1 inference thread each),
in three modes: `fp32` (fp32 weights served in fp32), `bf16-convert` (fp32 weights served in bf16: each
server converts them at load, a private copy) and `bf16-mapped` (the same models after `inferpack compile
--format safetensors --dtype bf16`, whose weights a bf16 server maps from the files without a copy).
Every server first answers requests for every model, as many in flight as it has threads, so the pages
the forwards read are resident (an mmap'ed page is read from the file the first time it is touched).

Two more modes drive every model hot first, the bf16-mapped models on a CPU with native bf16: each model
gets more than `server.trace_after_batches` requests, and the server is measured once every model's
traced graph took over and no upgrade is in progress. Its traced graphs then read prepacked linear
weights (compile/packing.py): `hot-shared` keeps them in files every server maps (the default,
`server.share_packed_weights`; a fresh directory per run, so the first server writes them), `hot-private`
packs them in each process's own memory (`share_packed_weights = false`, the behaviour before). The
packed files' mappings are counted apart ("pRSS" / "pPSS").

Per server process, from /proc/PID/smaps: RSS, PSS, USS (pages no other process maps), anonymous memory
(the heap: private copies of weights, activations, the interpreter) and the RSS and PSS of its mappings
of safetensors files (file-backed weights). PSS divides each shared page between the processes mapping
it, so the sum of the servers' PSS is what they use together: that is what must not grow with processes.

    .venv/bin/python bench/bench_memory.py [--models 10] [--threads 1,2,4] [--processes 3]
                                           [--modes fp32,bf16-convert,bf16-mapped,hot-shared,hot-private]

Linux only (reads /proc). The models are made once in bench/results/memory-fp32, and cast once (a copy
with hard links, then one `compile --format safetensors` per model) in bench/results/memory-bf16.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
from bench_server import CONTEXT, QUESTION, ROOT, run_server, upgrades  # the same request and start-up

from inferpack.compile.compiler import compile_model
from inferpack.compile.options import CompileOptions
from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.hardware import cpu_flags, cpu_model, usable_cores

MODES = {  # mode -> the servers' dtype
    "fp32": "fp32",
    "bf16-convert": "bf16",
    "bf16-mapped": "bf16",
    "hot-shared": "bf16",
    "hot-private": "bf16",
}
HOT = {"hot-shared": "true", "hot-private": "false"}  # hot modes -> server.share_packed_weights
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
MIB = 2**20


@dataclass(frozen=True)
class Memory:
    """One process's memory, bytes (from /proc/PID/smaps)."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    anon: int = 0
    weights_rss: int = 0
    weights_pss: int = 0
    packed_rss: int = 0
    packed_pss: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(*(a + b for a, b in zip(vars(self).values(), vars(other).values(), strict=True)))


def smaps(pid: int) -> Memory:
    """A process's memory, with its mappings of safetensors files (the weights) and of shared packed weights'
    files (compile/packedfiles.py) also counted apart."""
    fields = {"Rss": 0, "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0, "Anonymous": 0}
    weights = {"Rss": 0, "Pss": 0}
    packed = {"Rss": 0, "Pss": 0}
    kind = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if _MAPPING.match(line):
            name = line.rstrip()
            kind = weights if name.endswith(".safetensors") else packed if name.endswith(".packed") else None
            continue
        key, _, value = line.partition(":")
        if key in fields:
            size = int(value.split()[0]) * 1024
            fields[key] += size
            if kind is not None and key in kind:
                kind[key] += size
    return Memory(
        rss=fields["Rss"],
        pss=fields["Pss"],
        uss=fields["Private_Clean"] + fields["Private_Dirty"],
        anon=fields["Anonymous"],
        weights_rss=weights["Rss"],
        weights_pss=weights["Pss"],
        packed_rss=packed["Rss"],
        packed_pss=packed["Pss"],
    )


@dataclass(frozen=True)
class Row:
    """One measurement: a mode, its series (threads or processes), how many servers and threads each,
    and every server's memory."""

    mode: str
    series: str
    processes: int
    threads: int
    servers: list[Memory]

    @property
    def total(self) -> Memory:
        return sum(self.servers, Memory())


def repositories(count: int) -> tuple[list[str], dict[str, Path]]:
    """The fp32 demo models' ids, and each mode's repository: the fp32 models, or the same models with a
    bf16 safetensors version (each made once)."""
    fp32 = ROOT / "memory-fp32"
    ids = make_demo_models(fp32, count, task="question-answering", prefix="qa")
    bf16 = ROOT / "memory-bf16"
    cast = LocalRepository(bf16)
    if not all(cast.has_model(m) and len(cast.versions(m)) > 1 for m in ids):
        shutil.rmtree(bf16, ignore_errors=True)
        for name in ("_shared", *ids):
            shutil.copytree(fp32 / name, bf16 / name, copy_function=os.link)
        cast = LocalRepository(bf16)
        for model_id in ids:
            compile_model(cast, model_id, CompileOptions(dtype="bf16", output_format="safetensors"))
            print(f"cast {model_id} to bf16", flush=True)
    return ids, {mode: fp32 if mode in ("fp32", "bf16-convert") else bf16 for mode in MODES}


def touch(url: str, ids: list[str], threads: int) -> None:
    """Requests for every model, `threads` rounds with as many in flight as the server has threads."""
    params = {"seq_0": QUESTION, "seq_1": CONTEXT}
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(max(2, threads)) as pool:

        def get(model_id: str) -> None:
            client.get(f"{url}/predictions/{quote(model_id)}", params=params).raise_for_status()

        list(pool.map(get, ids * max(2, threads)))


def make_hot(url: str, ids: list[str], threads: int) -> None:
    """Every model past `server.trace_after_batches` (16) batches, until each one's traced graph took over
    and nothing is left on the upgrade lane (at most 5 minutes), then `touch` again over the graphs."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        touch(url, ids, 10)  # 20 requests a model (10 in flight: ones and twos per batch)
        now = upgrades(url)
        if now["swaps"] >= len(ids) and not now["in_progress"]:
            break
        time.sleep(1)
    else:
        raise SystemExit(f"{url}: the models' graphs did not all take over within 5 minutes: {now}")
    touch(url, ids, threads)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server and wait for it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(mode: str, repo: Path, ids: list[str], threads: list[int], processes: int) -> list[Row]:
    """The mode's rows: one server per thread count, then 1..`processes` servers side by side."""
    dtype, rows = MODES[mode], []
    warm = make_hot if mode in HOT else touch
    if mode in HOT:  # the packed weights: a fresh directory for the run, or none (each process's memory)
        packed = ROOT / "memory-packed"
        shutil.rmtree(packed, ignore_errors=True)
        os.environ["INFERPACK_SERVER__PACKED_WEIGHTS_DIR"] = str(packed)
        os.environ["INFERPACK_SERVER__SHARE_PACKED_WEIGHTS"] = HOT[mode]
    for n in threads:
        proc, url = run_server(repo, dtype, threads=n)
        try:
            warm(url, ids, n)
            rows.append(Row(mode, "threads", 1, n, [smaps(proc.pid)]))
        finally:
            stop(proc)
        print(_line(rows[-1]), flush=True)
    running: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for k in range(1, processes + 1):
            running.append(run_server(repo, dtype, threads=1))
            warm(running[-1][1], ids, 1)
            rows.append(Row(mode, "processes", k, 1, [smaps(p.pid) for p, _ in running]))
            print(_line(rows[-1]), flush=True)
    finally:
        for proc, _ in running:
            stop(proc)
    return rows


HEADER = (
    f"{'mode':13s} {'procs':>5s} {'thr':>3s} | per process (MiB): {'RSS':>5s} {'PSS':>5s} {'USS':>5s} "
    f"{'anon':>5s} {'wRSS':>5s} {'pRSS':>5s} | all processes (MiB): {'PSS':>6s} {'anon':>6s} {'wPSS':>5s} "
    f"{'pPSS':>5s}"
)


def _line(row: Row) -> str:
    n, t = len(row.servers), row.total
    return (
        f"{row.mode:13s} {row.processes:5d} {row.threads:3d} | {'':19s}"
        f"{t.rss / n / MIB:5.0f} {t.pss / n / MIB:5.0f} {t.uss / n / MIB:5.0f} {t.anon / n / MIB:5.0f} "
        f"{t.weights_rss / n / MIB:5.0f} {t.packed_rss / n / MIB:5.0f} | {'':20s}{t.pss / MIB:6.0f} "
        f"{t.anon / MIB:6.0f} {t.weights_pss / MIB:5.0f} {t.packed_pss / MIB:5.0f}"
    )


def ratios(rows: list[Row]) -> list[str]:
    """Per mode: total PSS, mapped-weights PSS and anonymous memory at the most threads / processes
    against one, and the private copies bf16-convert makes (its anonymous memory less bf16-mapped's)."""
    out = []
    for mode in dict.fromkeys(r.mode for r in rows):
        for label in ("threads", "processes"):
            series = [r for r in rows if r.mode == mode and r.series == label]
            if not series:
                continue
            a, last = series[0].total, series[-1]
            b = last.total
            out.append(
                f"{mode:13s} {label:9s} {last.processes}x{last.threads} vs {series[0].processes}x"
                f"{series[0].threads}: total PSS "
                f"{b.pss / a.pss:.2f}x, mapped weights PSS {_ratio(b.weights_pss, a.weights_pss)}, "
                f"packed files PSS {_ratio(b.packed_pss, a.packed_pss)}, "
                f"anonymous {b.anon / a.anon:.2f}x (+{(b.anon - a.anon) / MIB:.0f} MiB)"
            )
    converted = {(r.processes, r.threads): r.total.anon for r in rows if r.mode == "bf16-convert"}
    mapped = {(r.processes, r.threads): r.total.anon for r in rows if r.mode == "bf16-mapped"}
    for (processes, threads), anon in mapped.items():
        if (processes, threads) in converted:
            copies = converted[(processes, threads)] - anon
            out.append(
                f"bf16 converted at load vs mapped, {processes}x{threads}: "
                f"+{copies / MIB:.0f} MiB of private weight copies"
            )
    private = {(r.processes, r.threads): r.total for r in rows if r.mode == "hot-private"}
    for row in (r for r in rows if r.mode == "hot-shared"):
        other = private.get((row.processes, row.threads))
        if other is not None:
            out.append(
                f"hot, packed weights shared vs each process's own, {row.processes}x{row.threads}: total PSS "
                f"{row.total.pss / MIB:.0f} vs {other.pss / MIB:.0f} MiB "
                f"({(row.total.pss - other.pss) / MIB:+.0f}), "
                f"anonymous {(row.total.anon - other.anon) / MIB:+.0f} MiB"
            )
    return out


def _ratio(b: int, a: int) -> str:
    return f"{b / a:.2f}x" if a else "- (none mapped)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=10, help="demo models every server holds")
    parser.add_argument("--threads", default="1,2,4", help="inference threads of the single server")
    parser.add_argument("--processes", type=int, default=3, help="servers side by side, 1 up to this")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}")
    args = parser.parse_args()
    flags = sorted({"avx2", "avx512_bf16"} & cpu_flags())
    print(
        f"{cpu_model()}, {usable_cores()} cores, flags: {' '.join(flags) or 'neither avx2 nor avx512_bf16'}"
    )
    ids, repos = repositories(args.models)
    threads = [int(x) for x in args.threads.split(",")]
    print(HEADER, flush=True)
    rows: list[Row] = []
    for mode in args.modes.split(","):
        rows += measure(mode, repos[mode], ids, threads, args.processes)
    print("\n" + HEADER)
    for row in rows:
        print(_line(row))
    print()
    for line in ratios(rows):
        print(line)


if __name__ == "__main__":
    main()
