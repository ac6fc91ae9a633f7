"""Runtimes side by side in one run: torch eager fp32 and bf16, TorchScript (`torch.jit.trace` of the
eager module) bf16 and fp32, the bf16 trace of a copy with its linear weights prepacked for oneDNN
(tsp-bf16: what the server traces hot bf16 models into, compile/packing.py), ONNX Runtime fp32,
torch.export + AOTInductor fp32, on the demo MiniLM QA models and the request bench_server.py sends.

Per runtime: cold load (what a server pays before a cold model's first answer: eager meta build +
safetensors fill; for TorchScript that eager load plus the trace and its warm-up; ORT session creation
from a graph optimised at compile time, and without that pre-optimisation; AOTInductor package load), a
cold model's first answer (its load plus its first call), export/compile/trace time (export and compile
once per model version, offline; the trace per model, at load),
per-request latency at batch 1 and batch 8 on one thread, and whole loops (tokenise + forward + decode)
on one worker thread per core with one intra-op thread each, round-robin over the models, at batch 1 and
batch 8. bench_server.py takes its hardware limit from these loops (`run_loops`).

Every runtime runs the same tokenizer, task head and decode (`LoadedModel.predict`); only the module that
computes the logits differs, so the loops compare runtimes, not pre/post-processing.

    .venv/bin/python bench/bench_runtimes.py [--duration 5] [--runtimes eager-fp32,ort-fp32,...]

AOTInductor compiles for minutes on a contended 2-core machine, so one package (of the first model) is
compiled and loaded once per model slot: the loop holds as many weight copies as the others, but they are
equal. ONNX graphs and the package are cached in bench/results/runtimes/ (delete it to re-measure the
export and compile times). Compare ratios within one run; cores here are shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from inferpack.compile.examples import model_args
from inferpack.compile.onnxexport import export_onnx
from inferpack.compile.packing import packed_copy
from inferpack.compile.trace import jit_trace
from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.crossbatch import Part, predict_together
from inferpack.runtime.hardware import cpu_flags, cpu_model, usable_cores
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.runtime.onnxrt import OrtModule
from inferpack.runtime.tasks import TextInput
from inferpack.settings import DTypeChoice

QUESTION = "Which bridge did the engineers repair first?"
CONTEXT = (
    "After the spring floods the city engineers inspected every crossing on the river. They repaired the "
    "old stone bridge near the mill first, because the school buses used it, and then moved on to the rail "
    "bridge."
)
ROOT = Path(__file__).resolve().parent / "results"
RUNTIMES = ("eager-fp32", "eager-bf16", "ts-bf16", "tsp-bf16", "ts-fp32", "ort-fp32", "aoti-fp32")
# The TorchScript trace example: the bench's request beside a shorter one, so the batch is padded and the
# attention mask takes part in the recorded graph (transformers may skip the mask of a batch without
# padding, and the trace would keep that skip for every batch; transformers 5.24 does not, a trace of the
# unpadded request(2) agreed too, but a padded example does not depend on it). The agreement check uses
# other texts and lengths than the trace saw.
TRACE_EXAMPLE = (TextInput(QUESTION, CONTEXT), TextInput("Who used the bridge?", "The school buses did."))
CHECK_BATCH = (
    TextInput("What happened in spring?", CONTEXT),
    TextInput("Where is the mill?", "The mill stands by the river, two miles north of the town centre."),
)


@dataclass
class Prepared:
    """A runtime's models, ready to run, and what preparing them cost."""

    name: str
    models: list[LoadedModel]
    load_s: list[float]  # cold load per model (the server's cold path)
    build_s: float | None = None  # export / compile, once per version (offline)
    note: str = ""


@dataclass(frozen=True)
class Rate:
    """A loop's requests/s by the wall clock, and per CPU-second of its threads times the cores (what the
    cores would give were they the loop's alone: far steadier than the wall clock on shared cores)."""

    wall: float
    cpu: float


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per request: wall clock and CPU time of the thread."""

    wall: float
    cpu: float


@dataclass
class Figures:
    """One runtime's measurements."""

    name: str
    load_ms: float
    first_ms: float  # a cold model's first answer: its load plus its first (lazily initialising) call
    build_s: float | None
    latency1: Latency
    latency8: Latency  # per request
    loop1: Rate
    loop8: Rate
    note: str = ""


def request(batch: int) -> list[TextInput]:
    """bench_server's request, `batch` times."""
    return [TextInput(QUESTION, CONTEXT)] * batch


def loop_throughput(models: list[LoadedModel], batch: int, seconds: float) -> Rate:
    """Requests/s of the bare loop (tokenise + forward + decode of `batch` requests at a time): one thread
    per core, one intra-op thread each, round-robin over the models."""
    item = request(batch)
    for m in models:  # warm-up outside the timed window
        m.predict(item)
    return threads_loop(lambda k, i: models[i % len(models)].predict(item), batch, seconds)


def mixed_batch(models: list[LoadedModel], picks: list[int]) -> list[Part]:
    """A batch of bench_server's request for the models at `picks` (one row each), grouped by model as the
    server's batcher groups a mixed batch (runtime/batcher.py `_execute_mixed`)."""
    rows: dict[int, int] = {}
    for k in picks:
        rows[k] = rows.get(k, 0) + 1
    return [Part(models[k], request(n), [False] * n) for k, n in rows.items()]


def run_mixed(parts: list[Part]) -> None:
    """What the server runs for one batch: the model's own forward when one model owns every row, else one
    forward mixing them through their shared layers (`predict_together`)."""
    if len(parts) == 1:
        parts[0].model.predict(parts[0].items)
    else:
        predict_together(parts)


def mixed_loop_throughput(models: list[LoadedModel], batch: int, seconds: float) -> tuple[Rate, float]:
    """Requests/s of the bare loop over batches of `batch` requests each for a model drawn at random (what
    random traffic over the models gives a server whose batches fill), run with the server's cross-tenant
    batching (`run_mixed`): one thread per core as `loop_throughput`, no HTTP, no queues. Returns the rate
    and the mean number of models per batch. Seeded: every run draws the same batches."""
    draws = random.Random(42)
    batches = [mixed_batch(models, [draws.randrange(len(models)) for _ in range(batch)]) for _ in range(512)]
    for parts in batches[:8]:  # warm-up outside the timed window
        run_mixed(parts)
    rate = threads_loop(lambda k, i: run_mixed(batches[i % len(batches)]), batch, seconds)
    return rate, statistics.mean(len(parts) for parts in batches)


def threads_loop(step: Callable[[int, int], Any], batch: int, seconds: float) -> Rate:
    """Run `step(thread, i)` (i counting from the thread's number) on one thread per core, one intra-op
    thread each, for `seconds`; each step serves `batch` requests."""
    counts = [0] * usable_cores()
    cpu = [0.0] * len(counts)

    def loop(k: int) -> None:
        torch.set_num_threads(1)
        i = k
        cpu_started = time.thread_time()
        while time.perf_counter() < stop:
            step(k, i)
            i += 1
            counts[k] += batch
        cpu[k] = time.thread_time() - cpu_started

    torch.set_num_threads(1)
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(counts))]
    started = time.perf_counter()
    stop = started + seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = sum(counts) / (time.perf_counter() - started)
    return Rate(wall, sum(counts) / max(sum(cpu), 1e-9) * len(counts))


def latency_ms(model: LoadedModel, batch: int, repeats: int) -> Latency:
    """Median per-request milliseconds of one thread running `batch` requests at a time."""
    torch.set_num_threads(1)
    item = request(batch)
    model.predict(item)
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.thread_time()
        model.predict(item)
        cpus.append((time.thread_time() - cpu_started) * 1000 / batch)
        walls.append((time.perf_counter() - started) * 1000 / batch)
    return Latency(statistics.median(walls), statistics.median(cpus))


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def prepare_eager(repo: LocalRepository, ids: list[str], dtype: DTypeChoice) -> Prepared:
    """Eager models as the server loads them (meta build + safetensors fill; first request warms up)."""
    torch.set_num_threads(1)
    loaded = [_timed(partial(load_model, repo, m, dtype=dtype, warmup=False)) for m in ids]
    return Prepared(f"eager-{dtype}", [m for m, _ in loaded], [s for _, s in loaded])


def traced(model: LoadedModel, packed: bool = False) -> LoadedModel:
    """The model with its eager module replaced by `torch.jit.trace` of it (not frozen: the graph shares
    the eager module's parameters, so the weights are held once), traced on the model's own tokenizer's
    encoding of TRACE_EXAMPLE. `packed`: of its copy with linear weights prepacked for oneDNN
    (compile/packing.py: what the server traces a hot bf16 model into on a CPU with native bf16)."""
    assert isinstance(model.module, torch.nn.Module)
    example = model.tokenizer.encode(list(TRACE_EXAMPLE))
    module = packed_copy(model.module) if packed else model.module
    return dataclasses.replace(
        model, module=jit_trace(module, model_args(example, model.device), freeze=False)
    )


def warm_up(model: LoadedModel, calls: int = 3) -> None:
    """A few calls at batch 1 and 8: the profiling executor's first two calls of a traced graph are slow
    (~80 and ~47 ms for MiniLM), a cost of the load, not of the loops."""
    for batch in (1, 8):
        for _ in range(calls):
            model.predict(request(batch))


def max_logit_diff(a: LoadedModel, b: LoadedModel) -> float:
    """Largest absolute difference of two models' logits on CHECK_BATCH (two requests of different lengths,
    so one row is padded)."""
    batch = a.tokenizer.encode(list(CHECK_BATCH))
    return float((a.forward(batch) - b.forward(batch)).abs().max())


def prepare_ts(repo: LocalRepository, ids: list[str], dtype: DTypeChoice, packed: bool = False) -> Prepared:
    """TorchScript: each model loaded eager in `dtype` (as prepare_eager), traced (`packed`: with its linear
    weights prepacked) and warmed up. The cold load is all three; the build time is the trace alone (per
    model, median), paid at every load since the trace is not stored. The traced logits are checked
    against the eager module's."""
    torch.set_num_threads(1)
    models, load_s, trace_s, warm_s, diffs = [], [], [], [], []
    for m in ids:
        eager, load = _timed(partial(load_model, repo, m, dtype=dtype, warmup=False))
        model, trace = _timed(partial(traced, eager, packed))
        _, warm = _timed(partial(warm_up, model))
        diffs.append(max_logit_diff(eager, model))
        models.append(model)
        load_s.append(load + trace + warm)
        trace_s.append(trace)
        warm_s.append(warm)
    trace_ms, warm_ms = statistics.median(trace_s) * 1000, statistics.median(warm_s) * 1000
    return Prepared(
        f"tsp-{dtype}" if packed else f"ts-{dtype}",
        models,
        load_s,
        statistics.median(trace_s),
        note=f"trace {trace_ms:.0f} ms + warm-up {warm_ms:.0f} ms per model; max |logits - eager| "
        f"{max(diffs):.3g} over {len(ids)} models",
    )


def prepare_ort(repo: LocalRepository, ids: list[str], cache: Path) -> Prepared:
    """ONNX Runtime sessions over each model's exported, compile-time optimised graph."""
    torch.set_num_threads(1)
    eager = [load_model(repo, m, dtype="fp32", warmup=False) for m in ids]
    build = None
    for m in eager:
        path = cache / f"{m.model_id}.onnx"
        if not path.exists():
            assert isinstance(m.module, torch.nn.Module)
            started = time.perf_counter()
            export_onnx(m.module, m.tokenizer.encode(request(2)), path)
            build = build or time.perf_counter() - started
    sessions = [_timed(partial(OrtModule, cache / f"{m.model_id}.onnx")) for m in eager]
    # the same graph without the compile-time optimisation: what a session costs that optimises at load
    _, unoptimised = _timed(lambda: OrtModule(cache / f"{eager[0].model_id}.onnx", optimize=True))
    models = [dataclasses.replace(m, module=s) for m, (s, _) in zip(eager, sessions, strict=True)]
    return Prepared(
        "ort-fp32",
        models,
        [s for _, s in sessions],
        build,
        note=f"session with optimisation at load: {unoptimised * 1000:.0f} ms",
    )


class _AotiModule:
    """An AOTInductor package called like the other runtimes' modules."""

    def __init__(self, runner: Callable[..., Any]) -> None:
        self.runner = runner

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.runner(*args)
        return out if isinstance(out, torch.Tensor) else out[0]


def prepare_aoti(repo: LocalRepository, ids: list[str], cache: Path) -> Prepared:
    """torch.export + AOTInductor: one package compiled from the first model (dynamic batch and tokens,
    one intra-op thread), loaded once per model slot."""
    import torch._inductor as inductor
    from torch._inductor import config as inductor_config

    torch.set_num_threads(1)
    inductor_config.cpp.threads = 1  # the generated kernels' OpenMP width is fixed at compile time
    eager = [load_model(repo, m, dtype="fp32", warmup=False) for m in ids]
    package = cache / "aoti-fp32.pt2"
    build = None
    if not package.exists():
        first = eager[0]
        example = first.tokenizer.encode(request(2))
        args = (example.input_ids, example.attention_mask, example.token_type_ids)
        dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("tokens", min=2, max=512)}

        def build_package() -> None:
            assert isinstance(first.module, torch.nn.Module)
            exported = torch.export.export(first.module, args, dynamic_shapes=(dims, dims, dims))
            inductor.aoti_compile_and_package(exported, package_path=str(package))

        _, build = _timed(build_package)
    runners = [_timed(lambda: inductor.aoti_load_package(str(package))) for _ in eager]
    models = [dataclasses.replace(m, module=_AotiModule(r)) for m, (r, _) in zip(eager, runners, strict=True)]
    return Prepared("aoti-fp32", models, [s for _, s in runners], build, note="one package, equal weights")


def prepare(name: str, repo: LocalRepository, ids: list[str], cache: Path) -> Prepared:
    """Load a runtime's models by name (see RUNTIMES)."""
    cache.mkdir(parents=True, exist_ok=True)
    if name in ("eager-fp32", "eager-bf16"):
        return prepare_eager(repo, ids, "fp32" if name == "eager-fp32" else "bf16")
    if name in ("ts-fp32", "ts-bf16", "tsp-bf16"):
        return prepare_ts(repo, ids, "fp32" if name == "ts-fp32" else "bf16", packed=name == "tsp-bf16")
    if name == "ort-fp32":
        return prepare_ort(repo, ids, cache)
    if name == "aoti-fp32":
        return prepare_aoti(repo, ids, cache)
    raise SystemExit(f"unknown runtime {name!r}: one of {', '.join(RUNTIMES)}")


def measure(prepared: Prepared, seconds: float, repeats: int = 30) -> Figures:
    """Latencies and loops of one prepared runtime."""
    first = prepared.models[0]
    # a cold model's first call, in a process where another model already ran (as in a server: the
    # process-wide lazy initialisation of the very first call is not a cold model's cost)
    first.predict(request(1))
    cold = prepared.models[-1]
    _, first_call = _timed(lambda: cold.predict(request(1)))
    return Figures(
        name=prepared.name,
        load_ms=statistics.median(prepared.load_s) * 1000,
        first_ms=(prepared.load_s[-1] + first_call) * 1000,
        build_s=prepared.build_s,
        latency1=latency_ms(first, 1, repeats),
        latency8=latency_ms(first, 8, max(5, repeats // 4)),
        loop1=loop_throughput(prepared.models, 1, seconds),
        loop8=loop_throughput(prepared.models, 8, seconds),
        note=prepared.note,
    )


def run_loops(
    repo: LocalRepository, ids: list[str], names: list[str], seconds: float, cache: Path | None = None
) -> list[Figures]:
    """Prepare and measure each runtime in turn (one at a time, so each has the cores to itself)."""
    results = []
    for name in names:
        prepared = prepare(name, repo, ids, cache or ROOT / "runtimes")
        results.append(measure(prepared, seconds))
        print(format_row(results[-1]), flush=True)
        del prepared
    return results


LEGEND = (
    "(loops: one worker thread per core, one intra-op thread each; latencies: one thread; in brackets: by "
    "CPU time, i.e. CPU ms per request and requests per CPU-second x cores)"
)
HEADER = (
    f"{'runtime':11s} {'cold load':>9s} {'1st answer':>10s} {'build':>7s} {'b1 ms (cpu)':>15s} "
    f"{'b8 ms/req (cpu)':>15s} {'loop b1 (cpu)':>15s} {'loop b8 (cpu)':>15s}"
)


def format_row(f: Figures) -> str:
    """One table row: ms, s, req/s; wall clock, then CPU time in brackets."""
    build = "-" if f.build_s is None else f"{f.build_s:6.2f}s"
    return (
        f"{f.name:11s} {f.load_ms:7.1f}ms {f.first_ms:8.1f}ms {build:>7s} "
        f"{f.latency1.wall:7.2f} ({f.latency1.cpu:5.2f}) {f.latency8.wall:7.2f} ({f.latency8.cpu:5.2f}) "
        f"{f.loop1.wall:7.1f} ({f.loop1.cpu:5.1f}) {f.loop8.wall:7.1f} ({f.loop8.cpu:5.1f})"
        + (f"  ({f.note})" if f.note else "")
    )


def machine_line() -> str:
    """CPU, cores, the flags that decide bf16 vs fp32, torch version."""
    flags = sorted({"avx2", "avx512f", "avx512_bf16", "amx_bf16"} & cpu_flags())
    return (
        f"machine: {cpu_model()}, {usable_cores()} cores, flags {' '.join(flags)}, torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per loop")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--models", type=int, default=10, help="demo models the loops round-robin over")
    args = parser.parse_args()
    repo_dir = ROOT / "repo"
    ids = make_demo_models(repo_dir, 10, prefix="bench-qa")[: args.models]
    print(machine_line())
    print(LEGEND)
    print(HEADER, flush=True)
    results = run_loops(LocalRepository(repo_dir), ids, args.runtimes.split(","), args.duration)
    for clock in ("wall", "cpu"):
        best1 = max(results, key=lambda f: getattr(f.loop1, clock))
        best8 = max(results, key=lambda f: getattr(f.loop8, clock))
        print(f"\nby {clock} time: best batch-1 loop {best1.name}, best batch-8 loop {best8.name}")
        for f in results:
            b1 = getattr(f.loop1, clock) / getattr(best1.loop1, clock)
            b8 = getattr(f.loop8, clock) / getattr(best8.loop8, clock)
            print(f"  {f.name:11s} batch-1 loop {b1:.2f} of the best, batch-8 loop {b8:.2f} of the best")


if __name__ == "__main__":
    main()
