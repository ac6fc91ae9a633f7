"""Bulk import: N fine-tunes of one base imported from a list; time taken, and repository size against
the inputs' size.

    .venv/bin/python bench/bench_import.py [--count 1000] [--shape small|minilm]

The base is a random BERT question-answering model with MiniLM's vocabulary (`small`: 4 layers, hidden
64, ~2.2M parameters, ~9 MB per folder; `minilm`: the MiniLM shape, 6 layers, hidden 384, ~90 MB per folder,
too big for 1,000 folders in a few minutes here). Each fine-tune froze every layer but the top one: its
own top encoder layer and QA head, everything else identical to the base (`make_finetunes`). The folders
are imported with the same code as `inferpack models import --from-list` (every one checked against
transformers' own model), then the list is run again to time a resume with nothing left to do.
Prints the time, its split (building transformers' model and tokenizer / the check through the server's
loader / storing), and the sizes. Never part of the test run; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from inferpack.imports.bulk import import_list, read_list
from inferpack.imports.importer import Importer
from inferpack.imports.samples import make_finetunes, make_folder
from inferpack.repository.local import LocalRepository
from inferpack.runtime.hardware import hardware_tag

SHAPES: dict[str, dict[str, Any]] = {
    "small": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 128},
    "minilm": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
}


def size_of(root: Path) -> int:
    """Bytes of every file under a folder."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `inferpack models import` does
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        base = make_folder(root / "base", "bert", "ForQuestionAnswering", **SHAPES[args.shape])
        folders = make_finetunes(base, root / "src", args.count)
        csv = root / "src" / "models.csv"
        csv.write_text("id,source\n" + "".join(f"{f.name},{f.name}\n" for f in folders))
        print(f"made {args.count} folders in {time.perf_counter() - started:.0f} s")

        repo = LocalRepository(root / "repo")
        rows = read_list(csv)
        first = import_list(Importer(repo), rows, base=csv.parent)
        assert not first.failed, first.failed[:3]
        resumed = import_list(Importer(repo), rows, base=csv.parent)
        assert len(resumed.skipped) == args.count

        inputs = sum(size_of(f) for f in folders)
        stored = size_of(repo.root)
        phases = {
            k: sum(r.phases.get(k, 0.0) for r in first.imported) for k in ("transformers", "check", "store")
        }
        per_model = [r.seconds for r in first.imported]
        print(f"hardware: {hardware_tag()}; shape {args.shape}; {args.count} folders")
        print(
            f"bulk import: {first.seconds:.0f} s ({first.seconds / args.count * 1000:.0f} ms per model; "
            f"median {statistics.median(per_model) * 1000:.0f} ms, "
            f"p90 {statistics.quantiles(per_model, n=10)[-1] * 1000:.0f} ms)"
        )
        total = sum(phases.values())
        print(
            "split: "
            + ", ".join(f"{k} {v:.0f} s ({v / total:.0%})" for k, v in phases.items())
            + f"; other (fingerprints, progress) {first.seconds - total:.0f} s"
        )
        print(f"resume with nothing left to do: {resumed.seconds:.1f} s")
        print(
            f"inputs {inputs / 1e6:.0f} MB -> repository {stored / 1e6:.0f} MB "
            f"({stored / inputs:.1%} of the inputs; {stored / args.count / 1e3:.0f} kB per model); "
            f"shared files: {len(list((repo.root / '_shared' / 'weights').glob('*.safetensors')))}"
        )


if __name__ == "__main__":
    main()
