"""Where the time of a mixed batch goes (cross-tenant batching), against one model's batch of the same size.

Loads the 10 MiniLM QA demo tenants of bench_server.py (one base; each owns its top encoder layer and QA
head) and times, on this thread with one intra-op thread:
1. the cost curve: a batch of n requests for one model vs n requests for random tenants (one forward through
   the shared layers, each tenant's own layers on its rows), tokenise + forward + decode;
2. the breakdown of a batch of 8: tokenise, shared layers, the tenants' own layers (and, within them, the
   modules holding their weights: linear layers and layer norms), the split/merge around them, decode.
Times are thread CPU time (`time.thread_time`), the minimum over the repetitions, so that other processes
on shared cores inflate them less than wall time would; compare within one run.

    .venv/bin/python bench/bench_crossbatch.py [--dtype bf16] [--sizes 1,2,4,8,12,16] [--repeat 12]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from bench_server import CONTEXT, QUESTION, ROOT
from torch import nn

from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.crossbatch import Part, RowSplit, predict_together
from inferpack.runtime.hardware import cpu_model
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.runtime.tasks import TextInput

ITEM = TextInput(QUESTION, CONTEXT)


def cpu_ms(fn: Callable[[], Any], repeat: int) -> float:
    """The least thread CPU time of `repeat` calls, in ms (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        fn()
        best = min(best, time.thread_time() - started)
    return best * 1000


def mixed_parts(models: list[LoadedModel], n: int, rng: random.Random) -> list[Part]:
    """n requests for tenants drawn at random (as wrk's script does), grouped by tenant."""
    picks = [rng.randrange(len(models)) for _ in range(n)]
    return [Part(models[k], [ITEM] * picks.count(k), [False] * picks.count(k)) for k in sorted(set(picks))]


class Stopwatch:
    """Thread CPU time inside the tenants' own submodules, inside their weight-holding leaves (linear
    layers, layer norms), and inside the row splits around them."""

    def __init__(self, models: list[LoadedModel]) -> None:
        self.own = 0.0
        self.leaves = 0.0
        self.split = 0.0
        self._starts: list[float] = []
        owned = [
            m.module.get_submodule(path)  # type: ignore[attr-defined]
            for m in models
            for path in m.extra.get("own_paths") or []
        ]
        self._own_ids = {id(o) for o in owned}
        self._leaf_ids = {
            id(leaf) for o in owned for leaf in o.modules() if isinstance(leaf, nn.Linear | nn.LayerNorm)
        } - self._own_ids

    def _timed(self, module: nn.Module) -> bool:
        return isinstance(module, RowSplit) or id(module) in self._own_ids or id(module) in self._leaf_ids

    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._timed(module):
            self._starts.append(time.thread_time())

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._timed(module):
            return
        spent = time.thread_time() - self._starts.pop()
        if isinstance(module, RowSplit):
            self.split += spent
        elif id(module) in self._own_ids:
            self.own += spent
        else:
            self.leaves += spent

    @contextmanager
    def hooked(self) -> Iterator[Stopwatch]:
        """Time every module call while inside (global module hooks)."""
        pre = nn.modules.module.register_module_forward_pre_hook(self._pre)
        post = nn.modules.module.register_module_forward_hook(self._post)
        try:
            yield self
        finally:
            pre.remove()
            post.remove()


def breakdown(models: list[LoadedModel], parts: list[Part], repeat: int) -> dict[str, float]:
    """ms per part of one batch (the run with the least total CPU time)."""
    items = [i for p in parts for i in p.items]
    mixed = len(parts) > 1
    best: dict[str, float] = {}
    for _ in range(repeat + 1):
        watch = Stopwatch(models)
        started = time.thread_time()
        batch = parts[0].model.tokenizer.encode(items)
        tokenised = time.thread_time()
        with watch.hooked():
            if mixed:
                predict_together(parts)
            else:
                parts[0].model.forward(batch)
        forwarded = time.thread_time()
        output = parts[0].model.forward(batch)  # outside the timing: decode on a real output
        decode_start = time.thread_time()
        parts[0].model.handler.finish(output, batch, items)
        decoded = time.thread_time()
        # predict_together tokenises and decodes inside: take those out of its forward time
        forward = (forwarded - tokenised) - ((tokenised - started) + (decoded - decode_start) if mixed else 0)
        row = {
            "tokenise": tokenised - started,
            "shared layers": forward - (watch.split if mixed else watch.own),
            "own layers": watch.own,
            "(of which weight leaves)": watch.leaves,
            "split/merge": watch.split - watch.own if mixed else 0.0,
            "decode": decoded - decode_start,
        }
        row["total"] = sum(v for k, v in row.items() if not k.startswith("("))
        if not best or row["total"] < best["total"]:
            best = row
    return {k: v * 1000 for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="bf16", help="fp32 or bf16")
    parser.add_argument("--sizes", default="1,2,4,8,12,16", help="batch sizes of the cost curve")
    parser.add_argument("--repeat", type=int, default=12, help="repetitions (the least time counts)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = make_demo_models(ROOT / "repo", 10, prefix="bench-qa")
    repo = LocalRepository(ROOT / "repo")
    models = [load_model(repo, m, dtype=args.dtype) for m in ids]
    rng = random.Random(42)
    print(f"machine: {cpu_model()}, torch {torch.__version__}, {args.dtype}, thread CPU ms (least of runs)")
    print("batch | one model | random tenants (distinct) | per row: one / mixed | mixed / one")
    for n in (int(x) for x in args.sizes.split(",")):
        parts = mixed_parts(models, n, rng)
        one = cpu_ms(lambda n=n: models[0].predict([ITEM] * n), args.repeat)  # type: ignore[misc]
        mix = cpu_ms(lambda p=parts: predict_together(p), args.repeat)  # type: ignore[misc]
        print(
            f"{n:5d} | {one:9.2f} | {mix:14.2f} ({len(parts):2d})      | {one / n:5.2f} / {mix / n:5.2f}"
            f"   | {mix / one:.2f}",
            flush=True,
        )
    print("\nbreakdown of a batch of 8 (ms):")
    cases = {
        "one model": [Part(models[0], [ITEM] * 8, [False] * 8)],
        "8 tenants, 1 row each": [Part(m, [ITEM], [False]) for m in models[:8]],
        "4 tenants, 2 rows each": [Part(m, [ITEM] * 2, [False] * 2) for m in models[:4]],
    }
    for label, parts in cases.items():
        row = breakdown(models, parts, args.repeat)
        print(f"  {label:24s} " + "  ".join(f"{k} {v:6.2f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
