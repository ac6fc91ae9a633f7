"""What compiling buys on this CPU: per-request latency of eager vs TorchScript, fp32 vs bf16 vs int8.

    .venv/bin/python bench/bench_compile.py [--task question-answering] [--rounds 30] [--tokens 64]

One MiniLM demo model is made in a temporary repository and compiled with the real `compile_model` path
(fp32 with and without freezing, bf16, int8). Every variant then runs batch 1, ~64 tokens, on 1 intra-op
thread, in one process. Variants are timed round-robin (a few calls each per round) so a burst of load on
these shared cores hits all of them alike; medians and ratios to eager fp32 are what to compare, never
absolute times across runs. Agreement is each variant's outputs vs eager fp32 on the compile check set.

A second part loads each stored version with `load_model`, once without warm-up (its first three calls)
and once with its two short warm-up calls (then the first call at each of ten batch sizes and lengths not
seen before vs the second): what a first real request pays, and whether a new shape costs a
re-specialisation.
Never part of the test run; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inferpack.compile.agreement import compare, output_rows, same_answers
from inferpack.compile.checks import CompileResult
from inferpack.compile.compiler import compile_model
from inferpack.compile.convert import Variant, convert
from inferpack.compile.examples import build_examples, model_args
from inferpack.compile.options import CompileOptions
from inferpack.repository.demo import make_demo_models
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import Task
from inferpack.runtime.hardware import cpu_has_native_bf16, hardware_tag
from inferpack.runtime.modeling import TOKENIZERS, load_model
from inferpack.runtime.skeletons import build_eager
from inferpack.runtime.tasks import Encoded, TextInput, TextTokenizer, handler_for

Fn = Callable[..., Any]
CPU = torch.device("cpu")


def request(tokenizer: TextTokenizer, pair: bool, tokens: int, batch: int = 1) -> Encoded:
    """A batch of `batch` items of about `tokens` tokens each."""
    words = " ".join(["serving"] * max(1, tokens - (8 if pair else 2)))
    item = TextInput("What does the text say about serving?", words) if pair else TextInput(words)
    return tokenizer.encode([item] * batch)


def time_round_robin(
    fns: dict[str, Fn], args: tuple[torch.Tensor, ...], rounds: int, calls: int
) -> dict[str, float]:
    """Median ms per call of each function, interleaved round by round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm every variant first (TorchScript profiles its first calls)
            for _ in range(3):
                fn(*args)
        for _ in range(rounds):
            for name, fn in fns.items():
                for _ in range(calls):
                    start = time.perf_counter()
                    fn(*args)
                    samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def check_outputs(fn: Fn, checks: tuple[Encoded, ...]) -> list[torch.Tensor]:
    """Outputs on the compile check set, one tensor per batch."""
    with torch.inference_mode():
        return [fn(*model_args(batch, CPU)).float() for batch in checks]


def rows(outputs: list[torch.Tensor], checks: tuple[Encoded, ...], task: Task) -> list[torch.Tensor]:
    """One comparison row per item (see inferpack.compile.agreement.output_rows)."""
    return [r for out, batch in zip(outputs, checks, strict=True) for r in output_rows(out, batch, task)]


# (batch, tokens) request shapes the model has not seen: the batcher sends batches as well as single items.
NEW_SHAPES = ((1, 20), (1, 36), (1, 52), (1, 68), (1, 100), (1, 116), (2, 44), (4, 28), (8, 60), (3, 84))


def cold_calls(
    repo: LocalRepository, model_id: str, version: int, tokenizer: TextTokenizer, pair: bool
) -> list[float]:
    """ms of the first three calls at 64 tokens after `load_model(warmup=False)`: what warm-up absorbs."""
    loaded = load_model(repo, model_id, version, dtype="fp32", warmup=False)
    args = model_args(request(tokenizer, pair, 64), CPU)
    out = []
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            loaded.module(*args)
            out.append((time.perf_counter() - start) * 1e3)
    return out


def first_vs_second(
    repo: LocalRepository, model_id: str, version: int, tokenizer: TextTokenizer, pair: bool
) -> tuple[float, float, float]:
    """After `load_model` (and its two short warm-up calls): ms of the very first real call, then the mean
    and worst ratio of the first to the second call at each of ten (batch, length) shapes not seen before. A
    ratio near 1 means a new request shape costs nothing extra (no re-specialisation or recompilation)."""
    loaded = load_model(repo, model_id, version, dtype="fp32")
    ratios = []
    very_first = 0.0
    with torch.inference_mode():
        for i, (batch, tokens) in enumerate(NEW_SHAPES):
            args = model_args(request(tokenizer, pair, tokens, batch), CPU)
            times = []
            for _ in range(2):
                start = time.perf_counter()
                loaded.module(*args)
                times.append((time.perf_counter() - start) * 1e3)
            if i == 0:
                very_first = times[0]
            ratios.append(times[0] / times[1])
    return very_first, statistics.mean(ratios), max(ratios)


def main() -> None:
    """Build, compile, time and print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="question-answering")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=3, help="calls per variant per round")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    task: Task = args.task
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_demo_models(root, 1, task=task, prefix="bench")
        repo = LocalRepository(root)
        model_id = "bench-0000"
        manifest = repo.manifest(model_id, 1)
        tokenizer = TOKENIZERS.get(
            repo.resolve_file(model_id, 1, manifest.tokenizer), manifest.max_sequence_length
        )
        pair = task == "question-answering"
        eager = build_eager(repo.version_dir(model_id, 1), manifest)

        compiled: dict[str, CompileResult] = {}
        for name, options in (
            ("TorchScript fp32 (frozen)", CompileOptions()),
            ("TorchScript fp32 (not frozen)", CompileOptions(freeze=False)),
            ("TorchScript bf16 (frozen)", CompileOptions(dtype="bf16")),
            ("TorchScript int8 dynamic (frozen)", CompileOptions(quantize="int8")),
        ):
            compiled[name] = compile_model(repo, model_id, options)
        fns: dict[str, Fn] = {
            "eager fp32": eager,
            "eager bf16": convert(eager, Variant("bf16", "none"), CPU),
            "eager int8 dynamic": convert(eager, Variant("fp32", "int8-dynamic"), CPU),
        }
        for name, result in compiled.items():
            fns[name] = load_model(repo, model_id, result.version, dtype="fp32").module

        batch = request(tokenizer, pair, args.tokens)
        medians = time_round_robin(fns, model_args(batch, CPU), args.rounds, args.calls)

        examples = build_examples(tokenizer, pair)
        checks, handler = examples.checks, handler_for(task)
        reference = check_outputs(eager, checks)
        print(f"# bench_compile: {task}, MiniLM demo, batch 1, {batch.input_ids.shape[1]} tokens, 1 thread")
        print(f"# {hardware_tag()}; native bf16: {cpu_has_native_bf16()}")
        print(f"# {args.rounds} rounds x {args.calls} calls per variant, round-robin; median per call")
        print()
        columns = ["variant", "median ms", "speed vs eager fp32", "max abs diff", "mean cosine"]
        print("| " + " | ".join([*columns, "same answer", "compile s"]) + " |")
        print("|---|---|---|---|---|---|---|")
        base = medians["eager fp32"]
        for name, fn in fns.items():
            outputs = check_outputs(fn, checks)
            c = compare(rows(reference, checks, task), rows(outputs, checks, task))
            same = same_answers(handler, reference, outputs, checks, examples.check_items)
            seconds = f"{compiled[name].seconds:.1f}" if name in compiled else "-"
            agreed = "-" if same is None else f"{same:.0%}"
            print(
                f"| {name} | {medians[name]:.1f} | {base / medians[name]:.2f}x "
                f"| {c.max_abs_diff:.2e} | {c.cosine:.5f} | {agreed} | {seconds} |"
            )

        print()
        print("After load_model (its warm-up included): the first real call, and first/second call ratios at")
        print(f"ten new (batch, tokens) shapes {list(NEW_SHAPES)} (mean, worst)")
        print()
        print("| variant | no warm-up: calls 1-3 ms | warmed: first call ms | mean first/second | worst |")
        print("|---|---|---|---|---|")
        versions = {"eager fp32": 1} | {name: r.version for name, r in compiled.items()}
        for name, version in versions.items():
            cold = ", ".join(f"{x:.0f}" for x in cold_calls(repo, model_id, version, tokenizer, pair))
            first, mean_ratio, worst = first_vs_second(repo, model_id, version, tokenizer, pair)
            print(f"| {name} | {cold} | {first:.1f} | {mean_ratio:.2f} | {worst:.2f} |")


if __name__ == "__main__":
    main()
