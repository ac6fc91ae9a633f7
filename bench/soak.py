"""Soak: a local fleet driven at ~80% of its measured capacity for a long time, reported per interval.

    .venv/bin/python bench/soak.py [--duration 600] [--interval 60] [--models 8] [--arch minilm]
        [--servers 2] [--copies 2] [--capacity RPS | --capacity-duration 15] [--fraction 0.8]
        [--out soak.json]

Brings up a real fleet (`inferpack up` through `fleet.ops`: supervisor, 2 servers, router) over demo models,
measures its capacity with a short closed loop through the router (or takes `--capacity`), then sends an
open loop (Poisson arrivals) at `--fraction` of it with Zipf traffic over the models for `--duration`
seconds, through the loadtest package's engine. Per interval (`--interval`, a minute by default) it reports
requests, errors, throughput and P90 (from the engine's per-interval HDR histograms) and the RSS of every
process of the fleet (psutil; a restarted process shows as a restart). Prints a table, writes JSON (--out).
Never part of the test run itself (tests/fleet/test_soak.py runs a short one); figures go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from inferpack.fleet import ops
from inferpack.fleet.state import FleetState, RunDir, load_state
from inferpack.loadtest import histograms as H
from inferpack.loadtest.config import BenchConfig, TrafficSpec
from inferpack.loadtest.recorder import Snapshot
from inferpack.loadtest.result import BenchResult
from inferpack.loadtest.runner import run_worker
from inferpack.loadtest.shapes import ClosedLoop, LoadShape, OpenLoop, Step
from inferpack.loadtest.targets import LoadTarget
from inferpack.repository.demo import make_demo_models
from inferpack.settings import load_settings

MB = 2**20


@dataclass
class RssSampler:
    """RSS of every fleet process at each interval boundary, read from the engine's progress callback
    (every 0.5 s, on the generator's loop: a psutil read costs microseconds)."""

    run: RunDir
    interval_s: float
    samples: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, elapsed_s: float) -> None:
        """Record one sample (MB per process name; pids and restarts to spot a restarted process)."""
        state = load_state(self.run)
        assert state is not None
        rss: dict[str, float | None] = {}
        pids: dict[str, int | None] = {}
        for proc in [state.supervisor, *state.processes()]:
            pids[proc.name] = proc.pid
            try:
                rss[proc.name] = psutil.Process(proc.pid).memory_info().rss / MB if proc.pid else None
            except psutil.NoSuchProcess:
                rss[proc.name] = None
        restarts = {p.name: p.restarts for p in state.processes()}
        self.samples.append({"t_s": round(elapsed_s, 1), "rss_mb": rss, "pids": pids, "restarts": restarts})

    def progress(self, snap: Snapshot) -> None:
        """Engine progress callback: one sample per interval boundary crossed (0 included)."""
        if snap.elapsed_s >= 0 and snap.elapsed_s >= len(self.samples) * self.interval_s:
            self.sample(snap.elapsed_s)


def _config(url: str, models: list[str], shape: LoadShape, duration_s: float, **kw: Any) -> BenchConfig:
    return BenchConfig(
        mode="bmk",
        api="seed",
        target=LoadTarget(urls=[url], description=f"router {url}"),
        models=models,
        traffic=TrafficSpec(kind="zipf", zipf_s=1.0),
        shape=shape,
        duration_s=duration_s,
        timeout_s=30.0,
        **kw,
    )


def measure_capacity(url: str, models: list[str], users: int, duration_s: float) -> BenchResult:
    """Closed loop of `users` through the router: its throughput is the fleet's capacity here."""
    return run_worker(_config(url, models, ClosedLoop(users=users), duration_s, warmup_s=2.0))


def interval_rows(result: BenchResult, rss: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per interval: requests, errors, throughput, P90 and the RSS sampled at its end."""
    rows = []
    by_start = {round(i.t_s / result.interval_s): i for i in result.series}
    for k in range(intervals(result)):
        interval = by_start.get(k)
        count = interval.count if interval else 0
        errors = interval.errors if interval else 0
        p90 = H.summarize(H.decode(interval.hist)).p90_ms if interval else 0.0
        end = rss[k + 1] if k + 1 < len(rss) else None
        rows.append(
            {
                "minute" if result.interval_s == 60 else "interval": k + 1,
                "t_s": k * result.interval_s,
                "requests": count,
                "errors": errors,
                "throughput_rps": count / result.interval_s,
                "p90_ms": p90,
                "rss_mb": end["rss_mb"] if end else None,
                "restarts": end["restarts"] if end else None,
            }
        )
    return rows


def intervals(result: BenchResult) -> int:
    """Whole intervals in the measured duration (requests sent in it but answered after its end fall in a
    later slot of the engine's series: counted in the totals, not given a row of their own)."""
    duration = result.metadata.duration_s or result.window_s()
    return max(1, round(duration / result.interval_s))


def late_requests(result: BenchResult) -> int:
    """Requests answered after the last whole interval."""
    n = intervals(result)
    return sum(i.count for i in result.series if round(i.t_s / result.interval_s) >= n)


def rss_growth(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per process: RSS at the last sample minus the first (None when it was restarted in between)."""
    if len(samples) < 2:
        return {}
    first, last = samples[0], samples[-1]
    out: dict[str, float | None] = {}
    for name, start in first["rss_mb"].items():
        end = last["rss_mb"].get(name)
        same = first["pids"].get(name) == last["pids"].get(name)
        out[name] = round(end - start, 1) if start is not None and end is not None and same else None
    return out


def print_table(rows: list[dict[str, Any]], names: list[str]) -> None:
    """The per-interval table on stdout."""
    head = ["#", "t (s)", "requests", "errors", "req/s", "P90 ms", *(f"{n} MB" for n in names)]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        rss = r["rss_mb"] or {}
        cells = [
            str(r.get("minute", r.get("interval"))),
            f"{r['t_s']:g}",
            str(r["requests"]),
            str(r["errors"]),
            f"{r['throughput_rps']:.1f}",
            f"{r['p90_ms']:.1f}",
            *(f"{rss[n]:.0f}" if rss.get(n) is not None else "-" for n in names),
        ]
        print(" | ".join(cells))


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the whole soak in `work` (repository and run directory) and return the report."""
    repo = Path(args.repository) if args.repository else work / "repo"
    if not args.repository:
        make_demo_models(repo, args.models, arch=args.arch)
    run_dir = work / "fleet"
    settings = load_settings(
        None,
        {
            "fleet": {"run_dir": run_dir, "base_port": 0, "router_port": 0},
            "server": {"repository": str(repo)},
        },
    )
    plan = ops.local_plan(repo, args.servers, args.copies)
    models = plan.models()
    state: FleetState = ops.up(settings, plan)
    try:
        url = state.router.url
        assert url is not None
        capacity_result = None
        capacity = args.capacity
        if capacity is None:
            capacity_result = measure_capacity(url, models, args.users, args.capacity_duration)
            capacity = capacity_result.throughput()
            print(
                f"capacity (closed loop, {args.users} users, {args.capacity_duration:g} s): "
                f"{capacity:.1f} req/s"
            )
        rate = args.fraction * capacity
        print(
            f"soak: {rate:.1f} req/s ({args.fraction:.0%} of capacity) for {args.duration:g} s, "
            f"Zipf over {len(models)} models"
        )
        sampler = RssSampler(RunDir(run_dir), args.interval)
        shape = OpenLoop(steps=[Step(rate=rate)], arrivals="poisson", max_in_flight=256)
        result = run_worker(
            _config(url, models, shape, args.duration, interval_s=args.interval), progress=sampler.progress
        )
        # the engine's last progress call comes at its end; make sure the final boundary is sampled
        if len(sampler.samples) * args.interval <= args.duration:
            sampler.sample(result.window_s())
    finally:
        ops.down(run_dir)
    rows = interval_rows(result, sampler.samples)
    names = list(sampler.samples[0]["rss_mb"]) if sampler.samples else []
    print_table(rows, names)
    lat = result.latency()
    report = {
        "format": "inferpack-soak/1",
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "capacity_rps": capacity,
        "capacity_measured": capacity_result.summary if capacity_result else None,
        "rate_rps": rate,
        "requests": result.total_requests(),
        "errors": result.error_count(),
        "error_kinds": result.errors,
        "throughput_rps": result.throughput(),
        "latency_ms": lat.as_dict(),
        "intervals": rows,
        "answered_after_the_end": late_requests(result),
        "rss_samples": sampler.samples,
        "rss_growth_mb": rss_growth(sampler.samples),
        "warnings": result.warnings,
    }
    print(
        f"total: {report['requests']} requests, {report['errors']} errors, "
        f"{report['throughput_rps']:.1f} req/s, P90 {lat.p90_ms:.1f} ms; "
        f"RSS growth (MB, first to last sample): {report['rss_growth_mb']}"
    )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 600)")
    p.add_argument("--interval", type=float, default=60.0, help="report interval, s (default 60)")
    p.add_argument("--models", type=int, default=8, help="demo models to create (default 8)")
    p.add_argument(
        "--arch", choices=["minilm", "tiny", "bert-base"], default="minilm", help="demo model size"
    )
    p.add_argument("--repository", help="use this repository instead of creating demo models")
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--capacity", type=float, help="req/s to take as capacity (default: measure it)")
    p.add_argument("--capacity-duration", type=float, default=15.0, help="capacity run, s (default 15)")
    p.add_argument("--users", type=int, default=8, help="closed-loop users of the capacity run (default 8)")
    p.add_argument("--fraction", type=float, default=0.8, help="share of capacity to send (default 0.8)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--work-dir", type=Path, help="keep repository and fleet logs here (default: temporary)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0 or not 0 < args.fraction <= 1.5:
        p.error("--duration and --interval must be > 0, --fraction in (0, 1.5]")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        report = soak(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="inferpack-soak-") as tmp:
            report = soak(args, Path(tmp))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
