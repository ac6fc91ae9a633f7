"""What sharing packed weights through files costs the upgrade lane: CPU time of tracing two MiniLM QA
tenants of one base (`compile.tracing.traced`: the whole graph, the pieces, and for the first the base's
trunk) with packed weights in the process's memory, through files a process writes (none there yet), and
through files a process finds written (another server packed them first). Each in a fresh process, in turn,
`--rounds` times.

    PYTHONPATH=src:bench .venv/bin/python bench/bench_packed_files.py [--rounds 2]

Needs bench/bench_memory.py's bf16 models (bench/results/memory-bf16; made on its first run) and a CPU with
native bf16 (elsewhere nothing is packed, and the three are the same).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results" / "memory-bf16"


def trace_times(mode: str, directory: Path) -> list[float]:
    """Thread CPU seconds of `traced` for the first two tenants, packed per `mode` (in this process)."""
    import torch

    from inferpack.compile.packedfiles import PackedFiles
    from inferpack.compile.tracing import traced
    from inferpack.repository.local import LocalRepository
    from inferpack.runtime.modeling import load_model

    torch.set_num_threads(1)
    repo = LocalRepository(ROOT)
    models = [load_model(repo, m, dtype="bf16") for m in sorted(repo.model_ids())[:2]]
    pack = True if mode == "memory" else PackedFiles(directory)
    out, held = [], []  # held, as the registry holds them: the second tenant reuses the first's trunk
    for model in models:
        started = time.thread_time()
        held.append(traced(model, pack))
        out.append(time.thread_time() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # mode, directory: one measurement
    args = parser.parse_args()
    if args.child:
        print(" ".join(f"{t:.3f}" for t in trace_times(args.child[0], Path(args.child[1]))))
        return
    if not ROOT.exists():
        raise SystemExit(f"{ROOT} is missing: run bench/bench_memory.py once first")

    def child(mode: str, directory: str) -> str:
        run = [sys.executable, __file__, "--child", mode, directory]
        return subprocess.run(run, check=True, capture_output=True, text=True).stdout.split("\n")[-2]

    print("CPU s of traced(): first tenant (with its base's trunk), second tenant")
    for round_ in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory() as directory:
            print(f"round {round_}: in memory       {child('memory', directory)}")
            print(f"round {round_}: files, written  {child('files', directory)}")
            print(f"round {round_}: files, found    {child('files', directory)}")


if __name__ == "__main__":
    main()
