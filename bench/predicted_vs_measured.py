"""Predicted versus measured P90 on this machine: profile -> plan -> up -> open-loop load at fractions of
the planned rate.

    PYTHONPATH=src .venv/bin/python bench/predicted_vs_measured.py --workdir /tmp/pvm

1. `inferpack models demo` makes a few MiniLM QA models; `inferpack profile` measures them (the
   forward's median and P90, and the request overhead through a real server);
2. `inferpack plan` plans them on one `local` server (a nominal-price catalog entry for this host,
   `--reserved-cpus 1` by default: one vCPU is kept for the load generator), first at 1 req/s per
   model to learn the server's capacity, then at `--load` (0.95) of it: the planned rate;
3. `inferpack up` starts the plan with the settings the plan was costed with (inference threads =
   the plan's workers; dtype, intra-op threads and batch size of the chosen operating point, passed
   as INFERPACK_SERVER__* variables, since `up` on this branch does not read them from the plan);
4. `inferpack bench run` sends Poisson traffic straight to the server (not through the router: the
   planner models the server) at 50/80/100/120% of the planned rate, with the profiler's request
   text, and the measured P90 is set against the planner's P90 at that rate (`queueing`).

Prints a table (and writes table.md and results.json into the work folder). The cores are shared
with the load generator and whatever else runs: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from inferpack.plan import load_plan
from inferpack.planner.catalog import load_catalog
from inferpack.planner.inputs import read_repository
from inferpack.planner.problem import PlanOptions, TypeChoice, build_problem
from inferpack.planner.profiler import request_item
from inferpack.planner.profiles import load_profiles
from inferpack.planner.queueing import p90_response_ms
from inferpack.repository.local import open_repository

CLI = [sys.executable, "-m", "inferpack.cli"]


def run(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> str:
    """Run an inferpack command; its output (also appended to `log`); SystemExit when it fails."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, check=False)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ inferpack {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"inferpack {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def cpu_flags() -> str:
    """The CPU flags every figure is recorded with."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " ".join(f for f in ("avx2", "avx512_bf16") if f in text.split()) or "-"


def plan_args(work: Path, key: str, rate: float, a: argparse.Namespace, slo: float) -> list[str]:
    """`inferpack plan` arguments for the local scenario."""
    return [
        "plan", "--repository", str(work / "repo"), "--profiles", str(work / "profile.json"),
        "--no-reference-profiles", "--catalog", str(work / "local.json"), "--instance-types", "local",
        "--model-class", key, "--slo-p90-ms", f"{slo:g}", "--rate-rps", f"{rate:.6f}",
        "--reserved-cpus", f"{a.reserved_cpus:g}", "--slower", "1", "--out", str(work / "plan.json"),
    ]  # fmt: skip


def chosen(work: Path, key: str, rate: float, a: argparse.Namespace, slo: float) -> TypeChoice:
    """The operating point and queue the planner costed the local server with."""
    options = PlanOptions(slo_p90_ms=slo, reserved_cpus=a.reserved_cpus, instance_types=["local"])
    models = read_repository(work / "repo", key, rate)
    problem = build_problem(
        models,
        load_catalog([work / "local.json"]),
        load_profiles([work / "profile.json"], use_reference=False),
        options,
    )
    return problem.choices[(0, 0)]


def main() -> None:
    """Profile, plan, deploy, load, compare."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path(".bench/predicted-vs-measured"))
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30, help="profiled forwards per point")
    parser.add_argument("--reuse-profile", action="store_true", help="keep an existing profile.json")
    parser.add_argument("--slo-factor", type=float, default=2.5, help="objective = this x the P90 service")
    parser.add_argument("--load", type=float, default=0.95, help="planned rate as a share of the capacity")
    parser.add_argument("--reserved-cpus", type=float, default=1.0)
    parser.add_argument("--fractions", default="0.5,0.8,1.0,1.2")
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    a = parser.parse_args()
    work: Path = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    load_before = os.getloadavg()
    print(f"cpu flags: {cpu_flags()}; cores: {os.cpu_count()}; load average {load_before[0]:.1f}")

    if not (work / "repo").exists():
        run(["models", "demo", "--count", str(a.models), "--out", str(work / "repo")], log=log)
    if not (a.reuse_profile and (work / "profile.json").exists()):
        run(
            ["profile", "--repository", str(work / "repo"), "--batch-sizes", "1", "--threads", "1",
             "--repeats", str(a.repeats), "--out", str(work / "profile.json")],
            log=log,
        )  # fmt: skip
    profile = json.loads((work / "profile.json").read_text())["profiles"][0]
    key, point = profile["model_class"], profile["points"][0]
    overhead = profile.get("request_overhead_ms") or 0.0
    p90_service = (point.get("latency_p90_ms") or point["latency_ms"]) + overhead
    slo = round(a.slo_factor * p90_service)
    print(
        f"profile: forward median {point['latency_ms']:.1f} ms, P90 {point.get('latency_p90_ms', 0):.1f} ms; "
        f"request overhead {overhead:.1f} ms (P90 {profile.get('request_overhead_p90_ms', 0):.1f}); "
        f"objective {slo} ms"
    )
    (work / "local.json").write_text(
        json.dumps({"instances": [{"name": "local", "vcpus": 2, "memory_mb": 24576, "price_per_hour": 1}]})
    )
    probe = chosen(work, key, 1.0, a, slo)
    rate_per_model = a.load * probe.capacity_rps / a.models
    run(plan_args(work, key, rate_per_model, a, slo), log=log)
    plan = load_plan(work / "plan.json")
    choice = chosen(work, key, rate_per_model, a, slo)
    planned = rate_per_model * a.models
    if len(plan.servers()) != 1:
        raise SystemExit(f"expected a one-server plan, got {len(plan.servers())}")
    pt = choice.point
    print(
        f"plan: 1 server, {choice.workers} worker(s) x {pt.threads} thread(s), {pt.dtype}, batch "
        f"{pt.batch_size}; capacity {choice.capacity_rps:.2f} req/s; planned {planned:.2f} req/s"
    )

    env = dict(os.environ)
    env.update(
        {
            "INFERPACK_SERVER__DTYPE": pt.dtype,
            "INFERPACK_SERVER__INTRA_OP_THREADS": str(pt.threads),
            "INFERPACK_SERVER__BATCHING__MAX_BATCH_SIZE": str(pt.batch_size),
        }
    )
    run_dir = work / "run"
    run(
        ["up", "--plan", str(work / "plan.json"), "--repository", str(work / "repo"),
         "--threads", str(choice.workers), "--run-dir", str(run_dir)],
        env=env,
        log=log,
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        state = json.loads((run_dir / "state.json").read_text())
        url = f"http://127.0.0.1:{state['servers'][0]['port']}"
        repo = open_repository(work / "repo")
        first = repo.model_ids()[0]
        item = request_item(repo.manifest(first, repo.versions(first)[-1]))
        for fraction in [float(x) for x in a.fractions.split(",")]:
            rate = fraction * planned
            out = work / f"bench-{fraction:g}"
            run(
                ["bench", "run", "--url", url, "--plan", str(work / "plan.json"), "--rate", f"{rate:.4f}",
                 "--arrivals", "poisson", "--duration", f"{a.duration:g}", "--warmup", f"{a.warmup:g}",
                 "--seed", "1", "--question", item.text, "--context", item.text_pair or "",
                 "--out", str(out), "--no-report", "--no-live"],
                log=log,
            )  # fmt: skip
            summary = json.loads((out / "result.json").read_text())["summary"]
            lat = summary["latency_ms"]
            predicted = p90_response_ms(choice.workers, choice.latency_ms, choice.service_s, rate, choice.cv)
            rows.append(
                {
                    "fraction": fraction,
                    "rate": rate,
                    "utilisation": rate * choice.service_s / choice.workers,
                    "predicted_p90_ms": predicted,
                    "measured_p90_ms": lat["p90_ms"],
                    "p50_ms": lat["p50_ms"],
                    "p99_ms": lat["p99_ms"],
                    "throughput": summary["throughput_rps"],
                    "errors": summary["errors"],
                    "load_average": os.getloadavg()[0],
                }
            )
            print(f"  {fraction:.0%}: predicted {predicted:.0f} ms, measured P90 {lat['p90_ms']:.0f} ms")
    finally:
        run(["down", "--run-dir", str(run_dir)], log=log)
    table = [
        "| offered load | utilisation | predicted P90 | measured P90 | predicted / measured | P50 / P99 "
        "| throughput | errors | load average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['rate']:.2f} req/s ({r['fraction']:.0%}) | {r['utilisation']:.2f} | "
            f"{r['predicted_p90_ms']:.0f} ms | {r['measured_p90_ms']:.0f} ms | "
            f"{r['predicted_p90_ms'] / r['measured_p90_ms']:.2f} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms | "
            f"{r['throughput']:.2f} req/s | {r['errors']} | {r['load_average']:.1f} |"
        )
    text = "\n".join(table)
    print(text)
    (work / "table.md").write_text(text + "\n")
    meta = {
        "cpu_flags": cpu_flags(),
        "objective_ms": slo,
        "planned_rps": planned,
        "profile": profile,
        "rows": rows,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (work / "results.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
