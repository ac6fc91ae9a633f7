"""`inferpack demo`: the whole product in a few minutes on one machine.

demo models -> simple plan (N servers, K copies) -> fleet up -> load test through the router (the loadtest
package's engine) -> results table and report with plots -> fleet down (always, even on failure).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from inferpack.errors import ConfigError
from inferpack.fleet import ops
from inferpack.fleet.display import print_summary, start_with_progress
from inferpack.fleet.state import FleetState
from inferpack.loadtest.config import BenchConfig
from inferpack.loadtest.recorder import Snapshot
from inferpack.loadtest.result import BenchResult
from inferpack.loadtest.shapes import ClosedLoop, LoadShape, OpenLoop, Step
from inferpack.loadtest.targets import LoadTarget
from inferpack.plan import Plan, save_plan
from inferpack.processes import scrape_requests
from inferpack.progress import counting_progress
from inferpack.settings import ApiChoice, Settings, load_settings

console = Console(stderr=True)
out = Console()


@dataclass(frozen=True)
class ServerLoad:
    """Requests one server answered during the load test (warm-up included)."""

    name: str
    models: int
    requests: int


@dataclass(frozen=True)
class DemoOutcome:
    """What a demo run produced."""

    result: BenchResult
    per_server: list[ServerLoad]
    report: Path
    result_file: Path
    plan: Plan


def bench_config(router_url: str, models: list[str], settings: Settings) -> BenchConfig:
    """The load test: closed loop of `users` (or open loop at `rate`), uniform over every model."""
    t = settings.fleet.test
    shape: LoadShape = (
        ClosedLoop(users=t.users)
        if t.rate is None
        else OpenLoop(steps=[Step(rate=t.rate)], max_in_flight=max(64, t.users))
    )
    return BenchConfig(
        mode="bmk",
        api=t.api,
        target=LoadTarget(urls=[router_url], description=f"router {router_url}"),
        models=models,
        shape=shape,
        duration_s=None if t.requests is not None else t.duration_s,
        requests=t.requests,
        warmup_s=t.warmup_s,
        timeout_s=30.0,
        interval_s=1.0,
    )


def _server_requests(state: FleetState) -> dict[str, float]:
    counts = {}
    for s in state.servers:
        value = scrape_requests(s.url, "inferpack_requests_total") if s.url else None
        counts[s.name] = value or 0.0
    return counts


def _create_models(repo: Path, count: int) -> list[str]:
    from inferpack.repository.demo import make_demo_models

    with counting_progress(console) as progress:
        bar = progress.add_task(f"1/5 demo models in {repo}", total=count)
        ids = make_demo_models(repo, count, progress=lambda _m: progress.advance(bar))
        progress.update(bar, completed=count)
    return ids


def _load_test(config: BenchConfig, workers: int, out_dir: Path) -> BenchResult:
    from inferpack.loadtest.local import run_local
    from inferpack.loadtest.runner import run_worker

    # The bar counts seconds (warm-up + duration), or measured requests when the run is sized by requests.
    by_requests = config.requests is not None
    total = (
        float(config.requests)
        if config.requests is not None
        else config.warmup_s + (config.duration_s or 0.0)
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"), console=console
    ) as progress:
        bar = progress.add_task("4/5 load test (warm-up)", total=total, stats="")
        latest: dict[int, Snapshot] = {}

        def update(index: int, snap: Snapshot) -> None:
            latest[index] = snap
            done = sum(s.done for s in latest.values())
            errors = sum(s.errors for s in latest.values())
            rps = sum(s.new_done / s.period_s for s in latest.values())
            elapsed = max(s.elapsed_s for s in latest.values())
            phase = "warm-up" if elapsed < 0 else "measuring"
            position = (done if elapsed >= 0 else 0) if by_requests else config.warmup_s + elapsed
            progress.update(
                bar,
                completed=min(total, position),
                description=f"4/5 load test ({phase})",
                stats=f"{done} done, {errors} errors, {rps:.0f} req/s",
            )

        if workers > 1:
            result = run_local(config, workers, out_dir / "workers", update)
        else:
            result = run_worker(config, progress=lambda snap: update(0, snap))
        progress.update(bar, completed=total)
    return result


def per_server_table(loads: list[ServerLoad]) -> Table:
    """Requests per server with its share: how evenly the router spread the load."""
    total = sum(s.requests for s in loads) or 1
    table = Table(title="per-server load (via the router)")
    for col in ("server", "models", "requests (with warm-up)", "share"):
        table.add_column(col, justify="left" if col == "server" else "right")
    for s in loads:
        table.add_row(s.name, str(s.models), str(s.requests), f"{s.requests / total:.1%}")
    return table


def _append_fleet_section(report: Path, plan: Plan, loads: list[ServerLoad], state: FleetState) -> None:
    total = sum(s.requests for s in loads) or 1
    lines = [
        "",
        "## Fleet",
        "",
        f"{len(state.servers)} local server processes behind the router at {state.router.url}; plan "
        f"`{plan.created_by}` with {plan.metadata.get('copies', '?')} copies of each of {len(plan.models())} "
        "models. Requests per server (warm-up included):",
        "",
        "| server | models | threads | requests | share |",
        "|---|---|---|---|---|",
    ]
    threads = {s.name: s.threads for s in state.servers}
    lines += [
        f"| {s.name} | {s.models} | {threads.get(s.name)} | {s.requests} | {s.requests / total:.1%} |"
        for s in loads
    ]
    with report.open("a") as f:
        f.write("\n".join(lines) + "\n")


def run_demo(settings: Settings, out_dir: Path, *, config: Path | None = None) -> DemoOutcome:
    """Run the whole demo; the fleet is brought down whatever happens."""
    from inferpack.loadtest.display import result_tables
    from inferpack.loadtest.result import save_result

    try:  # the demo's report has plots: matplotlib is the `report` extra (the server image leaves it out)
        from inferpack.loadtest.report import write_report
    except ImportError as exc:
        raise ConfigError(
            f"the demo writes a report with plots, which needs matplotlib ({exc})",
            hint="pip install 'inferpack[report]' (scripts/setup.sh installs it)",
        ) from exc

    fleet, t = settings.fleet, settings.fleet.test
    out_dir.mkdir(parents=True, exist_ok=True)
    repo = out_dir / "repo"
    ids = _create_models(repo, t.models)
    plan = ops.local_plan(repo, fleet.servers, fleet.copies)
    save_plan(plan, out_dir / "plan.json")
    per_server = " + ".join(str(len(s.models)) for s in plan.servers())
    console.print(
        f"2/5 plan: {len(plan.servers())} servers ({per_server} models), {plan.metadata['copies']} copies "
        f"of each of {len(ids)} models ({out_dir / 'plan.json'})"
    )
    console.print("3/5 starting the fleet")
    state = start_with_progress(settings, config, plan)
    print_summary(state, fleet.run_dir)
    try:
        before = _server_requests(state)
        assert state.router.url is not None
        result = _load_test(bench_config(state.router.url, ids, settings), t.workers, out_dir)
        after = _server_requests(state)
        loads = [
            ServerLoad(s.name, len(s.models), round(after[s.name] - before[s.name])) for s in state.servers
        ]
        out.print(result_tables(result))
        out.print(per_server_table(loads))
        result_file = out_dir / "result.json"
        save_result(result, result_file)
        report = write_report(result, out_dir, title="inferpack demo")
        _append_fleet_section(report, plan, loads, state)
    finally:
        console.print("5/5 stopping the fleet")
        ops.down(fleet.run_dir)
    out.print(f"report: {escape(str(report))}  result: {escape(str(result_file))}")
    return DemoOutcome(result, loads, report, result_file, plan)


def demo_command(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the repository, plan, result, report.")
    ] = Path("demo-out"),
    models: Annotated[int | None, typer.Option(min=1, help="Unique demo models (default 8).")] = None,
    servers: Annotated[int | None, typer.Option(min=1, help="Server processes (default 2).")] = None,
    copies: Annotated[int | None, typer.Option(min=1, help="Copies of each model (default 2).")] = None,
    duration: Annotated[float | None, typer.Option(help="Measured seconds of load (default 20).")] = None,
    requests: Annotated[int | None, typer.Option(min=1, help="Measured requests instead of seconds.")] = None,
    warmup: Annotated[float | None, typer.Option(help="Warm-up seconds (default 2).")] = None,
    users: Annotated[int | None, typer.Option(min=1, help="Closed-loop users (default 4).")] = None,
    rate: Annotated[float | None, typer.Option(help="Open-loop req/s instead of users.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Load-generator processes (default 1).")] = None,
    api: Annotated[str | None, typer.Option(help="seed or v2.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")] = None,
) -> None:
    """Create demo models, plan them on this machine, bring a fleet up, load-test it through the router,
    print the results and write a report with plots, then bring the fleet down."""
    if api is not None and api not in ("seed", "v2"):
        raise typer.BadParameter("--api must be seed or v2")
    api_choice: ApiChoice | None = api  # type: ignore[assignment]
    test: dict[str, Any] = {
        "models": models,
        "duration_s": duration,
        "requests": requests,
        "warmup_s": warmup,
        "users": users,
        "rate": rate,
        "workers": workers,
        "api": api_choice,
    }
    fleet: dict[str, Any] = {
        "servers": servers,
        "copies": copies,
        # The demo's fleet is its own: separate state, and ports the OS picks, so that it never collides
        # with a fleet already started by `inferpack up`.
        "run_dir": out_dir / "fleet",
        "base_port": 0,
        "router_port": 0,
        "test": {k: v for k, v in test.items() if v is not None},
    }
    settings = load_settings(config, {"fleet": {k: v for k, v in fleet.items() if v is not None}})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_demo(settings, out_dir, config=config)
