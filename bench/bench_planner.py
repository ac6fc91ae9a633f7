"""Planner benchmark: cost, lower bound, gap, saving over naive packing, and planning time.

Plans N bert-base-class models with a skewed (lognormal) request-rate distribution over the shipped
catalog and reference profiles, and prints the figures recorded in docs/benchmarks.md:

    .venv/bin/python bench/bench_planner.py                      # 3,000 and 10,000 models, P90 100 ms
    .venv/bin/python bench/bench_planner.py --models 3000 --slo-sweep 50,100,200,400
    .venv/bin/python bench/bench_planner.py --models 3000 --write-csv skewed-3000.csv   # for `inferpack plan`
    .venv/bin/python bench/bench_planner.py --models 3000 --onnx-speedup 1.3   # + ONNX Runtime points

Traced graphs (what a server runs for a hot eager model, compile/tracing.py): `--profile FILE` adds a
profile written by `inferpack profile` (which times every point again on the traced graph and records its
memory), `--model-class` plans models of its class, `--box VCPUS,MEMORY_MB,PRICE` plans them on one
instance type `here` standing for the profiled machine (profile with `--instance-type here`: the
reference processor record of `local` is another CPU), and `--compare-traced` plans each
size twice in one run, with the profile's traced points and without them (the planner before it knew of
graphs: eager points only), and prints both:

    .venv/bin/python bench/bench_planner.py --profile minilm.json --model-class minilm-l6 \
        --box 8,16384,1.0 --models 3000 --median-rps 1 --compare-traced

`--onnx-speedup X` adds to every CPU profile of bert-base its fp32 points measured again on ONNX Runtime,
X times faster (hypothetical figures; any faster than the hardware's peak are left out): a CPU type may
then offer two execution keys of different capacity and memory per model (eager bf16 or fp32, and
onnxruntime fp32), so the planner's columns (instance type x execution key, `problem.type_variants`)
multiply; the run prints how many columns the problem has.

Planning time (wall-clock, and CPU time of this process, since the cores may be shared) covers
everything `inferpack plan` does after reading its inputs: building the problem, the lower bound, the
heuristic and the naive baseline.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from inferpack.planner.catalog import Catalog, InstanceType, load_catalog
from inferpack.planner.cli import quiet_fd1
from inferpack.planner.packing import check_packing, packing_cost
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import ProfileSet, check_peak, load_profiles, peak_violations
from inferpack.planner.solve import solve


def make_models(
    n: int,
    seed: int,
    median_rps: float,
    sigma: float,
    model_class: str = "bert-base",
    memory_mb: float = 460.0,
) -> list[ModelDemand]:
    """n models of `model_class`: memory within -9%/+9% of `memory_mb` (bert-base: 420-500 MB), rates
    lognormal (median, sigma), one per tenant."""
    rng = np.random.default_rng(seed)
    memory = rng.uniform(memory_mb * 420 / 460, memory_mb * 500 / 460, n)
    rates = rng.lognormal(np.log(median_rps), sigma, n)
    return [ModelDemand(f"tenant-{i:05d}", float(memory[i]), float(rates[i]), model_class) for i in range(n)]


def without_traced(profiles: ProfileSet) -> ProfileSet:
    """`profiles` with no traced point (and so no graph memory): what the planner costed before."""
    kept = [
        p.model_copy(update={"points": [pt for pt in p.points if not pt.traced], "traced_mb": {}})
        for p in profiles.profiles
    ]
    return profiles.model_copy(update={"profiles": [p for p in kept if p.points]})


def box_catalog(spec: str) -> Catalog:
    """One instance type `here` (profile with `--instance-type here`) from `VCPUS,MEMORY_MB,PRICE` (one
    thread per core)."""
    vcpus, memory, price = (float(x) for x in spec.split(","))
    box = InstanceType(
        name="here", vcpus=int(vcpus), threads_per_core=1, memory_mb=int(memory), price_per_hour=price
    )
    return Catalog(instances=[box])


def with_onnx_points(profiles: ProfileSet, speedup: float) -> ProfileSet:
    """`profiles` plus, for every CPU profile of bert-base, its fp32 points on ONNX Runtime `speedup` times
    faster (later profiles win for the same instance types); refused if faster than the hardware."""
    extra = []
    for prof in profiles.profiles:
        if prof.model_class != "bert-base" or prof.accelerator_mb > 0 or prof.hardware.accelerator:
            continue
        onnx = [
            pt.scaled(
                1 / speedup,
                engine="onnxruntime",
                source=f"derived: hypothetical, the eager fp32 point x {speedup:g} ({pt.source})",
            )
            for pt in prof.points
            if pt.dtype == "fp32" and pt.engine == "eager"
        ]
        # a point faster than the hardware's peak is left out (load_profiles would refuse it)
        onnx = [
            pt
            for pt in onnx
            if not peak_violations(
                profiles.model_copy(update={"profiles": [prof.model_copy(update={"points": [pt]})]})
            )
        ]
        extra.append(prof.model_copy(update={"points": [*prof.points, *onnx]}))
    out = profiles.model_copy(update={"profiles": [*profiles.profiles, *extra]})
    check_peak(out)
    return out


def column_name(problem: object, t: int) -> str:
    """A problem column's instance type, with its engine when not eager (older code, without `keys`: the
    engine of the column's choices)."""
    types = problem.types  # type: ignore[attr-defined]
    keys = getattr(problem, "keys", [])
    engines = {ch.point.engine for (_, col), ch in problem.choices.items() if col == t}  # type: ignore[attr-defined]
    if t < len(keys) and keys[t] is not None:
        engines = {keys[t][3]}  # the runtime: engine, or "traced"
        engines |= {f"{keys[t][1]} b{keys[t][2]}"} if len(types) < 4 else set()  # one box: the key too
    return str(types[t].name) + "".join(f" ({e})" for e in sorted(engines) if e != "eager")


def run(n: int, args: argparse.Namespace, slo_ms: float, traced: bool = True) -> dict[str, object]:
    """Plan once and return the figures (`traced` False: without the profiles' traced points)."""
    profiles = load_profiles([Path(p) for p in args.profile])
    memory = profiles.classes[args.model_class].reference_memory_mb if args.profile else 460.0
    models = make_models(n, args.seed, args.median_rps, args.sigma, args.model_class, memory)
    catalog = box_catalog(args.box) if args.box else load_catalog()
    if args.onnx_speedup > 0:
        profiles = with_onnx_points(profiles, args.onnx_speedup)
    if not traced:
        profiles = without_traced(profiles)
    start, cpu_start = time.perf_counter(), time.process_time()
    problem = build_problem(models, catalog, profiles, PlanOptions(slo_p90_ms=slo_ms))
    with quiet_fd1():
        solution = solve(problem, method="heuristic")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert check_packing(problem, solution.servers) == []
    rates = np.array([m.rate_rps for m in models])
    top = np.sort(rates)[::-1][: max(1, n // 100)].sum() / rates.sum()
    naive_cost = packing_cost(problem, solution.naive.servers) if solution.naive else float("nan")
    mix = Counter(column_name(problem, s.type_index) for s in solution.servers)
    return {
        "models": n,
        "slo_ms": slo_ms,
        "total_rps": float(rates.sum()),
        "top1pct_share": float(top),
        "cost": solution.cost,
        "bound": solution.lower_bound,
        "gap": solution.gap,
        "naive_cost": naive_cost,
        "naive_type": problem.types[solution.naive.type_index].name if solution.naive else "-",
        "naive_servers": len(solution.naive.servers) if solution.naive else 0,
        "saving": 1 - solution.cost / naive_cost if solution.naive else float("nan"),
        "mix": ", ".join(f"{count} x {name}" for name, count in sorted(mix.items())),
        "columns": len(problem.types),
        "instance_types": len({i.name for i in problem.types}),
        "seconds": elapsed,
        "cpu_seconds": cpu,
    }


def main() -> None:
    """Parse flags, run each size (and the optional objective sweep), print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="3000,10000", help="comma-separated model counts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--median-rps", type=float, default=0.1, help="median request rate per model")
    parser.add_argument("--sigma", type=float, default=1.8, help="lognormal sigma of the rates (skew)")
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument(
        "--onnx-speedup",
        type=float,
        default=0.0,
        help="add onnxruntime copies of the CPU profiles' fp32 points, this many times faster (0: none)",
    )
    parser.add_argument(
        "--profile", action="append", default=[], help="a profile file to add (e.g. `inferpack profile`'s)"
    )
    parser.add_argument("--model-class", default="bert-base", help="class of the planned models")
    parser.add_argument("--box", default="", help="VCPUS,MEMORY_MB,PRICE: plan on one type `here` only")
    parser.add_argument(
        "--compare-traced", action="store_true", help="plan each size with and without traced points"
    )
    parser.add_argument("--slo-sweep", default="", help="comma-separated objectives for a cost curve")
    parser.add_argument("--plot", default="", help="write the cost curve (with --slo-sweep) to this PNG")
    parser.add_argument(
        "--write-csv",
        default="",
        help="only write the first size's models as `inferpack plan --models` CSV to this file, and exit",
    )
    args = parser.parse_args()
    if args.write_csv:
        n = int(args.models.split(",")[0])
        models = make_models(n, args.seed, args.median_rps, args.sigma)
        lines = ["id,memory_mb,rate_rps"] + [f"{m.id},{m.memory_mb:.3f},{m.rate_rps:.6f}" for m in models]
        with open(args.write_csv, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {n} models to {args.write_csv}")
        return

    print(f"cpu cores: {os.cpu_count()}; rates lognormal(median {args.median_rps}, sigma {args.sigma})")
    for n in [int(x) for x in args.models.split(",") if x]:
        if args.compare_traced:
            compare_traced(n, args)
            continue
        r = run(n, args, args.slo_ms)
        print(
            f"\n{r['models']} models, P90 <= {r['slo_ms']:g} ms, total {r['total_rps']:.0f} req/s "
            f"(top 1% of models: {r['top1pct_share']:.0%} of requests)\n"
            f"  plan:        {r['cost']:.2f} USD/h  [{r['mix']}]\n"
            f"  lower bound: {r['bound']:.2f} USD/h  gap {r['gap']:.1%}\n"
            f"  naive:       {r['naive_cost']:.2f} USD/h  ({r['naive_servers']} x {r['naive_type']}, "
            f"models dealt evenly)  saving {r['saving']:.1%}\n"
            f"  planning time: {r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s CPU "
            f"({r['columns']} columns over {r['instance_types']} instance types)"
        )
    sweep = [float(x) for x in args.slo_sweep.split(",") if x]
    if sweep:
        n = int(args.models.split(",")[0])
        print(f"\ncost versus P90 objective ({n} models):")
        print("  P90 ms | plan USD/h | bound | gap | naive USD/h | mix")
        rows = []
        for slo in sweep:
            r = run(n, args, slo)
            rows.append(r)
            print(
                f"  {slo:6g} | {r['cost']:10.2f} | {r['bound']:5.2f} | {r['gap']:4.1%} | "
                f"{r['naive_cost']:11.2f} | {r['mix']}"
            )

        if args.plot:
            plot_curve(rows, n, args.plot)


def compare_traced(n: int, args: argparse.Namespace) -> None:
    """Plan `n` models with the profiles' traced points and without them, and print both side by side."""
    rows = [
        (label, run(n, args, args.slo_ms, traced=traced))
        for label, traced in (("eager", False), ("traced", True))
    ]
    first = rows[0][1]
    print(
        f"\n{n} {args.model_class} models, P90 <= {args.slo_ms:g} ms, total {first['total_rps']:.0f} req/s "
        f"(top 1% of models: {first['top1pct_share']:.0%} of requests)"
    )
    print("  points          | plan USD/h | lower bound | servers [mix]")
    for label, r in rows:
        name = "eager only" if label == "eager" else "eager + traced"
        print(f"  {name:15} | {r['cost']:10.2f} | {r['bound']:11.2f} | {r['mix']}")
    saved = 1 - float(str(rows[1][1]["cost"])) / float(str(first["cost"]))
    print(f"  traced points save {saved:.1%} of the plan's cost")


def plot_curve(rows: list[dict[str, object]], n: int, path: str) -> None:
    """Cost per hour of the plan, its lower bound and the naive packing versus the P90 objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo = [float(str(r["slo_ms"])) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (
        ("naive_cost", "naive", "s--"),
        ("cost", "plan", "o-"),
        ("bound", "lower bound", "^:"),
    ):
        ax.plot(slo, [float(str(r[key])) for r in rows], style, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("P90 objective (ms)")
    ax.set_ylabel("USD per hour")
    ax.set_title(f"{n} bert-base-class models: cost versus latency objective")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
