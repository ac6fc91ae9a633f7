"""What an ONNX Runtime session adds on top of a model's eager weights, in one process (RSS and PSS).

The planner's profiles carry host memory per dtype; a server on the onnxruntime engine (or one whose
tier still holds the eager stand-in while the session is created) holds a session's memory instead of or
on top of the eager weights. This measures, in one process, for `--models` MiniLM QA demo models (each
with its own weights: `share_base=False`, so nothing is shared between models by construction):
1. the eager fp32 model (`load_model` of the safetensors version, one forward run);
2. an ONNX Runtime serving session of its ONNX version (`runtime/onnxrt.load_onnx`, one run), with the
   eager model still held (the tier's window), then after the eager model is dropped;
3. a second session over the same file (does ORT share the weights between sessions? no: it reads
   the initialisers into its own buffers), and one with pre-packing disabled
   (`session.disable_prepacking`: MLAS packs MatMul weights into a second layout at session creation).
Every figure is a delta of this process's RSS/PSS (psutil) after `malloc_trim`, divided by the models.

    PYTHONPATH=src .venv/bin/python bench/bench_ort_memory.py [--models 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path

import psutil
import torch

from inferpack.compile.compiler import compile_model
from inferpack.compile.options import CompileOptions
from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.memory import release_free_memory
from inferpack.runtime.modeling import load_model
from inferpack.runtime.onnxrt import OrtModule, ort, session_options

MIB = 2**20


def snapshot() -> tuple[float, float]:
    """(RSS, PSS) of this process in MiB, after handing freed heap pages back."""
    gc.collect()
    release_free_memory()
    info = psutil.Process().memory_full_info()
    return info.rss / MIB, info.pss / MIB


def run(module: object) -> None:
    """One forward at a short sequence (allocates the runtime's working buffers)."""
    ids = torch.ones((1, 32), dtype=torch.int64)
    module(ids, torch.ones_like(ids), torch.zeros_like(ids))  # type: ignore[operator]


def tiered(
    repo: LocalRepository, ids: list[str], files: list[Path], base: tuple[float, float], file_mb: float
) -> None:
    """The tier's order per model (runtime/tier.py): eager stand-in, a run, the session, a run, the
    stand-in dropped; then what the sessions hold per model, and the peak of one model's window."""
    held: list[OrtModule] = []
    peak = 0.0
    for model_id, path in zip(ids, files, strict=True):
        before = snapshot()
        stand_in = load_model(repo, model_id, 1, dtype="fp32", warmup=None)
        run(stand_in.module)
        session = OrtModule(path)
        run(session)
        peak = max(peak, snapshot()[0] - before[0])
        del stand_in
        held.append(session)
    end = snapshot()
    n = len(ids)
    print(f"models: {n} MiniLM QA (own weights each); ONNX file {file_mb:.1f} MiB per model")
    print(f"tiered, per model, MiB: RSS {(end[0] - base[0]) / n:.1f}, PSS {(end[1] - base[1]) / n:.1f}")
    print(f"largest RSS rise over one model's window (stand-in + session held): {peak:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--tier",
        action="store_true",
        help="instead: the server's tiered path, model after model (eager stand-in, its session, the "
        "stand-in dropped), reporting what each model holds at the end",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.out or Path(tempfile.mkdtemp(prefix="ortmem-"))
    ids = make_demo_models(root, args.models, arch="minilm", prefix="om", share_base=False)
    repo = LocalRepository(root)
    for model_id in ids:
        compile_model(repo, model_id, CompileOptions(output_format="onnx"))
    onnx_files = [repo.version_dir(m, 2) / repo.manifest(m, 2).weights for m in ids]
    file_mb = sum(p.stat().st_size for p in onnx_files) / len(ids) / MIB
    n = len(ids)
    rows: list[tuple[str, float, float]] = []
    base = snapshot()
    if args.tier:
        tiered(repo, ids, onnx_files, base, file_mb)
        return

    def per_model(
        label: str, now: tuple[float, float], ref: tuple[float, float], count: int
    ) -> tuple[str, float, float]:
        return (label, (now[0] - ref[0]) / count, (now[1] - ref[1]) / count)

    def step(label: str, ref: tuple[float, float]) -> tuple[float, float]:
        now = snapshot()
        rows.append(per_model(label, now, ref, n))
        return now

    eager = [load_model(repo, m, 1, dtype="fp32", warmup=None) for m in ids]
    for e in eager:
        run(e.module)
    after_eager = step("eager fp32 model (+1 forward)", base)
    sessions = [OrtModule(p) for p in onnx_files]
    for s in sessions:
        run(s)
    after_ort = step("ORT session on top of the eager model (+1 run)", after_eager)
    rows.append(per_model("eager + ORT session held together", after_ort, base, n))
    del eager
    after_drop = step("eager model dropped (session alone remains)", after_ort)
    rows.append(per_model("ORT session alone", after_drop, base, n))
    twins = [OrtModule(p) for p in onnx_files]
    for s in twins:
        run(s)
    after_twin = step("a second session over the same file", after_drop)
    rt = ort()
    unpacked = []
    for p in onnx_files:
        options = session_options()
        options.add_session_config_entry("session.disable_prepacking", "1")
        unpacked.append(rt.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]))
    step("a third session, pre-packing disabled", after_twin)
    del sessions, twins, unpacked

    print(f"models: {n} MiniLM QA (own weights each); ONNX file {file_mb:.1f} MiB per model")
    print(f"onnxruntime {rt.__version__}, torch {torch.__version__}; per model, MiB:")
    print(f"{'step':<52} {'RSS':>8} {'PSS':>8}")
    for label, rss, pss in rows:
        print(f"{label:<52} {rss:8.1f} {pss:8.1f}")


if __name__ == "__main__":
    main()
