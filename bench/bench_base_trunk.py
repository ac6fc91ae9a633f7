"""A base's trunk for eager tenants: their forwards with and without it, and what making it costs.

Loads `--tenants` MiniLM QA demo tenants sharing one base (eager, none traced: the cold tenants of a
density server), makes their base's trunk once (`compile.tracing.base_trunk`: what the registry does for
a busy base) and times, interleaved round by round so drift on shared cores favours neither:
- one tenant's own batch (1 and 8 requests): its eager module, then through the trunk (`_module_for`);
- a mixed batch of 8 requests over the tenants (`predict_together`): eager, then through the trunk.
Thread CPU time (`time.thread_time`) and wall time per forward, the least and the median of `--rounds`;
then the trunk's cost: seconds to make it, its estimated bytes, its packed weights, the RSS growth.

    PYTHONPATH=src:bench .venv/bin/python bench/bench_base_trunk.py             # bf16, 1 thread
    PYTHONPATH=src:bench .venv/bin/python bench/bench_base_trunk.py --dtype fp32 --rounds 30

Cores here are shared: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from inferpack.compile.tracing import base_trunk
from inferpack.repository.demo import make_demo_models
from inferpack.repository.local import LocalRepository
from inferpack.runtime.crossbatch import TRUNKS, Part, Trunk, predict_together
from inferpack.runtime.memory import rss_bytes
from inferpack.runtime.modeling import LoadedModel, load_model, trunk_storages
from inferpack.runtime.tasks import TextInput

ROOT = Path(__file__).resolve().parent / "results"
QUESTION = TextInput(
    "Who wrote the chronicle?", "An unknown monk wrote the chronicle in the abbey, near the old river."
)


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) of one call."""
    cpu, wall = time.thread_time(), time.perf_counter()
    run()
    return time.thread_time() - cpu, time.perf_counter() - wall


class Toggle:
    """Hides a held trunk from the tenants (`TRUNKS`) and shows it again: one process, both paths."""

    def __init__(self, model: LoadedModel, trunk: Trunk) -> None:
        self.key = TRUNKS.key(model)
        self.trunk = trunk

    def set(self, on: bool) -> None:
        assert self.key is not None
        if on:
            TRUNKS.add(self.key[0], self.trunk)
        else:
            TRUNKS._by_key.pop(self.key, None)  # the bench's own switch: the registry never hides one


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=6)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repository = LocalRepository(ROOT / "base-trunk-repo")
    ids = make_demo_models(repository.root, args.tenants, prefix="bt")
    tenants = [load_model(repository, m, dtype=args.dtype, warmup=True) for m in ids]
    first = tenants[0]
    before = rss_bytes()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    trunk = base_trunk(first)
    made_cpu, made_s = time.thread_time() - cpu0, time.perf_counter() - wall0
    grown = rss_bytes() - before
    storages = trunk_storages(trunk)
    packed = sum(v for k, v in storages.items() if k < 0 and k != -id(trunk))
    toggle = Toggle(first, trunk)

    cases: dict[str, Callable[[], object]] = {}
    for rows in (1, 8):
        batch = first.tokenizer.encode([QUESTION] * rows)
        for i, tenant in enumerate(tenants[:2]):
            cases[f"one tenant, batch {rows} (t{i})"] = functools.partial(tenant.forward, batch)
    split = [[QUESTION] * (2 if i < 8 - len(tenants) else 1) for i in range(min(len(tenants), 8))]
    mixed = [Part(t, q, [False] * len(q)) for t, q in zip(tenants, split, strict=False)]
    cases[f"mixed batch of {sum(len(q) for q in split)} over {len(mixed)} tenants"] = lambda: (
        predict_together(mixed)
    )

    # same answers both ways (the trunk passed the fidelity check when made; this is the bench's own look)
    outputs = {}
    for on in (False, True):
        toggle.set(on)
        outputs[on] = [t.forward(first.tokenizer.encode([QUESTION] * 3)) for t in tenants[:2]]
    same = all(torch.equal(a, b) for a, b in zip(outputs[False], outputs[True], strict=True))
    max_diff = max(float((a - b).abs().max()) for a, b in zip(outputs[False], outputs[True], strict=True))

    results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for run in cases.values():  # warm both paths first (the graphs' profiling runs are done already)
        for on in (False, True):
            toggle.set(on)
            for _ in range(3):
                run()
    for _ in range(args.rounds):
        for name, run in cases.items():
            for on in (False, True):
                toggle.set(on)
                results.setdefault((name, on), []).append(timed(run))
    toggle.set(True)

    print(
        f"{args.tenants} MiniLM QA tenants of one base, {args.dtype}, {args.threads} thread(s), "
        f"{args.rounds} interleaved rounds; ms per forward: least / median of thread CPU time (wall median)"
    )
    print("| forward | eager | through the base's trunk | ratio (least CPU) |")
    print("|---|---|---|---|")
    for name in cases:
        cells = []
        for on in (False, True):
            cpu = [c for c, _ in results[(name, on)]]
            wall = [w for _, w in results[(name, on)]]
            cells.append((min(cpu), statistics.median(cpu), statistics.median(wall)))
        text = [f"{1000 * a:.2f} / {1000 * b:.2f} ({1000 * c:.2f})" for a, b, c in cells]
        print(f"| {name} | {text[0]} | {text[1]} | {cells[1][0] / cells[0][0]:.2f} |")
    print(
        f"trunk: {len(trunk.graph_list())} graphs over {len(trunk.graphs)} pieces, made in {made_s:.2f} s "
        f"({made_cpu:.2f} s CPU); estimated graph memory {trunk.bytes / 2**20:.1f} MiB, packed weights "
        f"{packed / 2**20:.1f} MiB, RSS growth {grown / 2**20:.1f} MiB; outputs identical: {same} "
        f"(max abs diff {max_diff:.3g})"
    )


if __name__ == "__main__":
    main()
