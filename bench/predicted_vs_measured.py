"""Predicted versus measured P90 on this machine: profile -> plan -> up -> open-loop load at fractions of
the planned rate.

    PYTHONPATH=src .venv/bin/python bench/predicted_vs_measured.py --workdir /tmp/pvm

1. `inferpack models demo` makes a few MiniLM QA models; `inferpack profile` measures them: the bare
   forward's median and P90, and the request overhead as the service time through a real server under
   open-loop Poisson load (requests that found the worker free) less the bare forward;
2. `inferpack plan` plans them on one `local` server (a nominal-price catalog entry for this host,
   `--reserved-cpus 1` by default: one vCPU is kept for HTTP, tokenising and the load generator), first
   at 1 req/s per model to learn the server's capacity, then at `--load` (0.95) of it: the planned rate;
3. `inferpack up` starts the plan; the plan (format 2) carries the execution settings it was costed
   with (engine included) and `up` applies them (the plan's P90 objective is not passed on as a deadline:
   `Plan.server_objective_ms`). The bench checks that the running server's settings (its command
   line, and no INFERPACK_SERVER__ override in its environment) equal the plan's, and after the load that
   no batch was larger than the plan's batch size (the server's /metrics);
4. `inferpack bench run` sends Poisson traffic straight to the server (not through the router: the
   planner models the server) at 50/80/100/120% of the planned rate, with the profiler's request
   text, and the measured P90 is set against the planner's P90 at that rate (`queueing`). Per level it
   also reads the server's /metrics (mean compute per batch, queue wait, server-side request time) and
   the generator's CPU share (the load generator is not pinned: it shares the cores with the server,
   and its share is printed so a reader sees what it took).

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

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from inferpack.plan import Execution, load_plan
from inferpack.planner.catalog import load_catalog
from inferpack.planner.inputs import read_repository
from inferpack.planner.problem import PlanOptions, TypeChoice, build_problem
from inferpack.planner.profiler import request_item
from inferpack.planner.profiles import load_profiles
from inferpack.planner.queueing import p90_response_ms
from inferpack.planner.underload import mean_timings, timer_totals
from inferpack.repository.local import open_repository
from inferpack.settings import load_settings

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


# `inferpack serve` flags -> the Execution field each one carries
SERVE_FLAGS = {
    "--device": "device",
    "--dtype": "dtype",
    "--engine": "engine",
    "--threads": "inference_threads",
    "--intra-op-threads": "intra_op_threads",
    "--max-batch-size": "max_batch_size",
    "--max-wait-ms": "max_wait_ms",
}
OBJECTIVE_FLAG = "--latency-objective-ms"  # a configured objective: the server's default deadline
TRACE_FLAG = "--trace-after-batches"  # 0 on eager CPU groups, the default on traced ones
OVERRIDES = ("DEVICE", "DTYPE", "ENGINE", "INFERENCE_THREADS", "INTRA_OP_THREADS", "BATCHING__")


def deployed_settings(pid: int, execution: Execution, objective_ms: float | None) -> str:
    """The running server's execution settings and latency objective, checked against the plan's:
    SystemExit on a difference (a flag that differs or is missing, or an INFERPACK_SERVER__ variable that
    could override one)."""
    proc = psutil.Process(pid)
    argv = proc.cmdline()
    known = (*SERVE_FLAGS, OBJECTIVE_FLAG)
    flags = {argv[k]: argv[k + 1] for k in range(len(argv) - 1) if argv[k] in known}
    planned = execution.model_dump()
    wrong = [
        f"{flag} {flags.get(flag)} (plan: {planned[field]})"
        for flag, field in SERVE_FLAGS.items()
        if flag not in flags or type(planned[field])(flags[flag]) != planned[field]
    ]
    # traced exactly where the plan costed traced graphs (`Execution.server_fields`)
    tracing = execution.server_fields().get("trace_after_batches")
    given = [argv[k + 1] for k, flag in enumerate(argv[:-1]) if flag == TRACE_FLAG]
    if tracing is not None and given != [str(tracing)]:
        wrong.append(f"{TRACE_FLAG} (plan: {tracing})")
    served = flags.get(OBJECTIVE_FLAG)
    if (None if served is None else float(served)) != objective_ms:
        wrong.append(f"{OBJECTIVE_FLAG} {served} (plan: {objective_ms})")
    environ = proc.environ()
    env = [k for k in environ if k.startswith(tuple(f"INFERPACK_SERVER__{o}" for o in OVERRIDES))]
    if environ.get("OMP_NUM_THREADS", str(execution.intra_op_threads)) != str(execution.intra_op_threads):
        wrong.append(f"OMP_NUM_THREADS {environ['OMP_NUM_THREADS']} (plan: {execution.intra_op_threads})")
    if wrong or env:
        raise SystemExit(f"the server does not run the plan's settings: {wrong}; overriding variables {env}")
    return (
        f"{execution.inference_threads} inference thread(s) x {execution.intra_op_threads} intra-op "
        f"thread(s), {execution.dtype} on {execution.engine}{' traced' if execution.traced else ''}, "
        f"batches <= {execution.max_batch_size}, "
        f"latency objective {objective_ms} ms, "
        f"wait {execution.max_wait_ms:g} ms, "
        f"device {execution.device}: equal to the plan's execution (server command line and "
        "OMP_NUM_THREADS; no INFERPACK_SERVER__ override in its environment)"
    )


def largest_batch(metrics_text: str) -> float:
    """The upper bound of the smallest batch-size bucket holding every batch the server ran (0: none)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "inferpack_batch_size":
            continue
        buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
        total = max((v for _, v in buckets), default=0.0)
        return min((le for le, v in buckets if v >= total), default=0.0) if total else 0.0
    return 0.0


def results_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: predicted and measured P90 and their ratio per level, and where the time went
    (the server's mean compute per batch, queue wait and request time; the generator's CPU share)."""
    table = [
        "| offered load | utilisation | predicted P90 | measured P90 | predicted / measured | P50 / P99 "
        "| server: compute / queue wait / request (means) | compute / costed forward "
        "| server CPU per request | generator CPU "
        "| throughput | errors | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = r["server_ms"]
        parts = " / ".join(f"{ms[k]:.1f}" if k in ms else "-" for k in ("compute", "queue_wait", "request"))
        cpu = r["server_cpu_ms_per_request"]
        drift = "-" if r["drift"] is None else f"{r['drift']:.2f}"
        gen = r["generator_cpu_share"]
        table.append(
            f"| {r['rate']:.2f} req/s ({r['fraction']:.0%}) | {r['utilisation']:.2f} | "
            f"{r['predicted_p90_ms']:.0f} ms | {r['measured_p90_ms']:.0f} ms | "
            f"{r['predicted_p90_ms'] / r['measured_p90_ms']:.2f} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms | {parts} ms | {drift} | "
            f"{'-' if cpu is None else f'{cpu:.1f} ms'} | "
            f"{'-' if not gen else f'{100 * max(gen):.1f}% of a core'} | "
            f"{r['throughput']:.2f} req/s | {r['errors']} | {r['load_average']:.1f} |"
        )
    return "\n".join(table)


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
    overhead_p90 = profile.get("request_overhead_p90_ms", overhead)
    p90_service = (point.get("latency_p90_ms") or point["latency_ms"]) + overhead_p90
    slo = round(a.slo_factor * p90_service)
    print(
        f"profile: forward median {point['latency_ms']:.1f} ms, P90 {point.get('latency_p90_ms', 0):.1f} ms; "
        f"request overhead under load {overhead:.1f} ms (P90 {overhead_p90:.1f}); "
        f"objective {slo} ms\n  how: {profile['source'].split('; request overhead = ')[-1]}"
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
        f"{pt.batch_size}; capacity {choice.capacity_rps:.2f} req/s; planned {planned:.2f} req/s; costed "
        f"service per request: median {choice.latency_ms:.1f} ms, mean {1000 * choice.service_s:.1f} ms, "
        f"cv {choice.cv:.2f}"
    )

    costed_forward_ms = 1000.0 * choice.service_s - overhead  # mean forward (+ tokenise, decode) costed
    group = plan.groups[0]
    if group.execution is None:
        raise SystemExit("the plan carries no execution settings (format 2 expected)")
    run_dir = work / "run"
    # No --threads and no INFERPACK_SERVER__ variables: `up` applies the plan's execution as costed.
    up = [
        "up",
        "--plan",
        str(work / "plan.json"),
        "--repository",
        str(work / "repo"),
        "--run-dir",
        str(run_dir),
    ]
    run(up, log=log)
    rows: list[dict[str, Any]] = []
    try:
        state = json.loads((run_dir / "state.json").read_text())
        url = f"http://127.0.0.1:{state['servers'][0]['port']}"
        server = psutil.Process(state["servers"][0]["pid"])
        deployed = deployed_settings(
            server.pid, group.execution, plan.server_objective_ms(load_settings(None).server)
        )
        print(f"deployed: {deployed}")
        print(
            "load generator: not pinned (it shares the cores with the server); its CPU share per level below"
        )
        repo = open_repository(work / "repo")
        first = repo.model_ids()[0]
        item = request_item(repo.manifest(first, repo.versions(first)[-1]))
        client = httpx.Client(timeout=30.0, trust_env=False)
        for fraction in [float(x) for x in a.fractions.split(",")]:
            rate = fraction * planned
            out = work / f"bench-{fraction:g}"
            before, cpu_before = timer_totals(client.get(f"{url}/metrics").text), server.cpu_times()
            run(
                ["bench", "run", "--url", url, "--plan", str(work / "plan.json"), "--rate", f"{rate:.4f}",
                 "--arrivals", "poisson", "--duration", f"{a.duration:g}", "--warmup", f"{a.warmup:g}",
                 "--seed", "1", "--question", item.text, "--context", item.text_pair or "",
                 "--out", str(out), "--no-report", "--no-live"],
                log=log,
            )  # fmt: skip
            page, cpu_after = client.get(f"{url}/metrics").text, server.cpu_times()
            after = timer_totals(page)
            server_ms = mean_timings(before, after)
            served = after["compute"][1] - before["compute"][1]
            cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
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
                    "mean_ms": lat["mean_ms"],
                    "server_ms": server_ms,  # means per batch / request over the level (warm-up included)
                    "server_cpu_ms_per_request": 1000.0 * cpu_s / served if served else None,
                    # the server's mean compute at this level over the forward the plan costed: far from 1,
                    # the machine changed between the profile and this level (shared cores)
                    "drift": server_ms["compute"] / costed_forward_ms if "compute" in server_ms else None,
                    "generator_cpu_share": summary.get("generator_cpu_share"),
                    "throughput": summary["throughput_rps"],
                    "errors": summary["errors"],
                    "load_average": os.getloadavg()[0],
                }
            )
            print(
                f"  {fraction:.0%}: predicted P90 {predicted:.0f} ms, measured P90 {lat['p90_ms']:.0f} ms, "
                f"ratio {predicted / lat['p90_ms']:.2f}; server means: "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(server_ms.items()))
                + f"; generator CPU {100 * max(summary.get('generator_cpu_share') or [0]):.1f}% of a core"
            )
        batch = largest_batch(client.get(f"{url}/metrics").text)
        if batch > group.execution.max_batch_size:
            raise SystemExit(
                f"the server ran batches up to {batch:g}, the plan allows {group.execution.max_batch_size}"
            )
    finally:
        run(["down", "--run-dir", str(run_dir)], log=log)
    print(f"largest batch the server ran: {batch:g} (plan: {group.execution.max_batch_size})")
    text = results_table(rows)
    print(text)
    (work / "table.md").write_text(text + "\n")
    meta = {
        "cpu_flags": cpu_flags(),
        "objective_ms": slo,
        "planned_rps": planned,
        "deployed": deployed,
        "largest_batch": batch,
        "profile": profile,
        "rows": rows,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (work / "results.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
