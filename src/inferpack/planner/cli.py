"""`inferpack plan`: read models, catalog and profiles, solve (or deal a simple plan), print and write it.

Registered in `inferpack.cli` with `app.command("plan")(plan_command)`. This module does the I/O and
the timing; the planning itself is pure (`problem`, `solve`, `naive`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from inferpack.errors import ConfigError
from inferpack.plan import Plan, save_plan
from inferpack.planner.allocatable import DAEMONSET_CPU, DAEMONSET_MEMORY_MB
from inferpack.planner.catalog import load_catalog
from inferpack.planner.inputs import read_models_csv, read_repository
from inferpack.planner.naive import local_simple_plan
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import load_profiles
from inferpack.planner.sensitivity import DEFAULT_SLOWER, print_sensitivity, sensitivity
from inferpack.planner.solve import solve, to_plan
from inferpack.progress import counting_progress


@contextlib.contextmanager
def quiet_fd1() -> Iterator[None]:
    """HiGHS prints a banner straight to file descriptor 1 once per process; keep stdout clean."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real fd 1 (embedded use): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _read_models(
    models: Path | None, repository: Path | None, model_class: str, rate_rps: float
) -> list[ModelDemand]:
    if (models is None) == (repository is None):
        raise ConfigError("give exactly one of --models FILE.csv or --repository DIR")
    if models is not None:
        return read_models_csv(models, model_class)
    assert repository is not None
    return read_repository(repository, model_class, rate_rps)


def plan_command(
    models: Annotated[
        Path | None, typer.Option("--models", help="CSV with columns id,memory_mb,rate_rps[,model_class].")
    ] = None,
    repository: Annotated[Path | None, typer.Option("--repository", help="Model repository folder.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the plan.")] = Path("plan.json"),
    simple: Annotated[
        bool, typer.Option("--simple", help="Simple plan: fill --servers local servers evenly.")
    ] = False,
    servers: Annotated[int | None, typer.Option("--servers", min=1, help="Servers (with --simple).")] = None,
    copies: Annotated[int, typer.Option("--copies", min=1, help="Copies per model (with --simple).")] = 1,
    profiles: Annotated[
        list[Path] | None, typer.Option("--profiles", help="Profile file(s) from `inferpack profile`.")
    ] = None,
    no_reference_profiles: Annotated[
        bool, typer.Option("--no-reference-profiles", help="Use only the --profiles files.")
    ] = False,
    catalog: Annotated[
        list[Path] | None, typer.Option("--catalog", help="Catalog override file(s), applied in order.")
    ] = None,
    slo_p90_ms: Annotated[
        float, typer.Option("--slo-p90-ms", min=0.001, help="P90 latency objective.")
    ] = 100.0,
    max_utilisation: Annotated[float, typer.Option("--max-utilisation", min=0.01, max=1.0)] = 0.8,
    reserved_cpus: Annotated[
        float, typer.Option("--reserved-cpus", min=0.0, help="vCPUs per CPU server kept from the workers.")
    ] = 0.0,
    request_overhead_ms: Annotated[
        float | None,
        typer.Option(
            "--request-overhead-ms",
            min=0.0,
            help="ms per request outside the forward, added to its median and P90 (default: the profile's "
            "measurement under load, median and P90, else 0).",
        ),
    ] = None,
    daemonset_cpu: Annotated[
        float, typer.Option("--daemonset-cpu", min=0.0, help="CPU cores per EKS node kept for DaemonSets.")
    ] = DAEMONSET_CPU,
    daemonset_memory_mb: Annotated[
        float, typer.Option("--daemonset-memory-mb", min=0.0, help="MiB per EKS node kept for DaemonSets.")
    ] = DAEMONSET_MEMORY_MB,
    min_copies: Annotated[int, typer.Option("--min-copies", min=1, help="Copies on different servers.")] = 1,
    max_models_per_server: Annotated[int | None, typer.Option("--max-models-per-server", min=1)] = None,
    instance_types: Annotated[
        str | None, typer.Option("--instance-types", help="Allowed types, comma-separated (c6i.*,inf2.*).")
    ] = None,
    model_class: Annotated[
        str, typer.Option("--model-class", help="Class of models without one (a profile class).")
    ] = "bert-base",
    rate_rps: Annotated[
        float, typer.Option("--rate-rps", min=0.0, help="Request rate per model (with --repository).")
    ] = 1.0,
    method: Annotated[
        str, typer.Option("--method", help="auto (MILP when small), milp, or heuristic.")
    ] = "auto",
    time_limit_s: Annotated[float, typer.Option("--time-limit", min=0.1, help="MILP time limit (s).")] = 30.0,
    slower: Annotated[
        float,
        typer.Option(
            "--slower",
            min=1.0,
            help="Also re-plan with every profiled latency this many times longer (the cost band), for "
            "the chosen mix and each processor kind; 1 skips it.",
        ),
    ] = DEFAULT_SLOWER,
) -> None:
    """Plan which servers to run and which models each holds: cheapest mix of instance types within the
    latency objective (default), or the simple plan (models dealt evenly) with --simple."""
    console = Console()
    demands = _read_models(models, repository, model_class, rate_rps)
    repo_label = str(repository) if repository is not None else None
    if simple:
        if servers is None:
            raise ConfigError("--simple needs --servers N")
        plan = local_simple_plan({d.id: d.memory_mb for d in demands}, servers, copies, repository=repo_label)
        save_plan(plan, out)
        _print_simple(console, plan, out)
        return
    if method not in ("auto", "milp", "heuristic"):
        raise ConfigError(f"--method must be auto, milp or heuristic, not {method!r}")
    solver: Literal["auto", "milp", "heuristic"] = method  # type: ignore[assignment]
    options = PlanOptions(
        slo_p90_ms=slo_p90_ms,
        max_utilisation=max_utilisation,
        reserved_cpus=reserved_cpus,
        request_overhead_ms=request_overhead_ms,
        daemonset_cpu=daemonset_cpu,
        daemonset_memory_mb=daemonset_memory_mb,
        min_copies=min_copies,
        max_models_per_server=max_models_per_server,
        instance_types=_split(instance_types),
    )
    cat = load_catalog(catalog)
    profs = load_profiles(profiles, use_reference=not no_reference_profiles)
    start = time.perf_counter()
    problem = build_problem(demands, cat, profs, options)
    with quiet_fd1():
        solution = solve(problem, method=solver, milp_time_limit_s=time_limit_s)
    elapsed = time.perf_counter() - start
    extra: dict[str, Any] = {"solve_time_s": round(elapsed, 3), "catalog": cat.provenance}
    if slower > 1.0:
        with quiet_fd1(), console.status(f"re-planning per processor kind and {slower:g}x slower"):
            extra["sensitivity"] = sensitivity(
                demands,
                cat,
                profs,
                options,
                slower=slower,
                method=solver,
                time_limit_s=time_limit_s,
                chosen=solution.cost,
            )
    plan = to_plan(problem, solution, options, repository=repo_label, extra_metadata=extra)
    save_plan(plan, out)
    _print_plan(console, plan, out)
    if "sensitivity" in extra:
        print_sensitivity(console, extra["sensitivity"])


def _print_simple(console: Console, plan: Plan, out: Path) -> None:
    table = Table(title="simple plan (--simple)")
    for col in ("server", "models", "first models"):
        table.add_column(col)
    for server in plan.servers():
        table.add_row(server.name, str(len(server.models)), ", ".join(server.models[:3]))
    console.print(table)
    res = plan.groups[0].resources
    console.print(f"each server: {res.cpu:g} CPU, {res.memory_mb} MiB (its models' footprints + headroom)")
    if "exceeds_host_memory_mb" in plan.metadata:
        console.print(
            f"[yellow]note:[/] the servers together need more than this host's "
            f"{plan.metadata['exceeds_host_memory_mb']} MiB: use more machines (`inferpack plan` without "
            "--simple, `inferpack k8s render`) or fewer copies"
        )
    if "copies_requested" in plan.metadata:
        console.print(
            f"[yellow]note:[/] {plan.metadata['copies_requested']} copies asked for, "
            f"{plan.metadata['copies']} placed (one per server at most)"
        )
    console.print(f"wrote {out}")


def _print_plan(console: Console, plan: Plan, out: Path) -> None:
    meta = plan.metadata
    table = Table(title=f"plan ({plan.created_by}), P90 objective {plan.slo_p90_ms:g} ms")
    columns = (
        "type",
        "runs",
        "servers",
        "copies",
        "mem",
        "cpu",
        "acc",
        "rps",
        "P90",
        "USD/h",
        "binding",
    )
    for col in columns:
        left = col in ("type", "runs", "binding")
        table.add_column(col, justify="left" if left else "right", no_wrap=col in ("type", "binding"))
    for row in meta["groups"]:
        p90 = row["predicted_p90_ms_max"]
        table.add_row(
            row["instance_type"],
            row.get("execution") or "-",  # the key its servers run (chosen by cost: problem.type_variants)
            str(row["servers"]),
            str(row["copies"]),
            f"{row['memory_util']:.0%}",
            f"{row['compute_util']:.0%}",
            f"{row['accelerator_memory_util']:.0%}" if row["accelerator_memory_util"] else "-",
            f"{row['rps']:.1f}",
            f"{p90:.0f} ms" if p90 is not None else "-",
            f"{row['cost_per_hour']:.3f}",
            row["binding"],
        )
    console.print(table)
    cost = plan.cost_per_hour or 0.0
    bound = plan.lower_bound_per_hour or 0.0
    lines = [
        f"cost: [bold]{cost:.3f} USD/h[/] over {len(plan.servers())} servers",
        f"lower bound: {bound:.3f} USD/h, gap {meta['gap']:.1%}" + (" (optimal)" if meta["optimal"] else ""),
        f"solver: {meta['method']}, {meta['solve_time_s']:.2f} s",
    ]
    if meta.get("cost_per_million_inferences") is not None:
        lines.append(f"cost per million inferences: {meta['cost_per_million_inferences']:.4f} USD")
    naive = meta.get("naive")
    if naive:
        lines.append(
            f"naive packing: {naive['servers']} x {naive['instance_type']} "
            f"(~{naive['models_per_server']:.0f} models each) = {naive['cost_per_hour']:.3f} USD/h; "
            f"saving {naive['saving']:.1%}"
        )
    for line in lines:
        console.print(line)
    console.print(f"wrote {out}")


def _ints(value: str, flag: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{flag} takes comma-separated integers, not {value!r}") from exc
    if not items or min(items) < 1:
        raise ConfigError(f"{flag} needs positive integers")
    return items


def profile_command(
    repository: Annotated[
        str, typer.Option("--repository", help="Model repository: a folder or s3://bucket/prefix.")
    ],
    models: Annotated[
        str | None, typer.Option("--models", help="Comma-separated model ids (default: all).")
    ] = None,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")
    ] = "1,2,4,8",
    threads: Annotated[
        str, typer.Option("--threads", help="Comma-separated intra-op thread counts.")
    ] = "1,2",
    dtypes: Annotated[str, typer.Option("--dtypes", help="Comma-separated: fp32, bf16.")] = "fp32",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed forwards per point.")] = 10,
    instance_type: Annotated[
        list[str] | None,
        typer.Option(
            "--instance-type",
            help="Catalog name(s) or patterns this machine stands for (default: local), e.g. 'c6i.*': "
            "the measured figures replace the reference estimates for them.",
        ),
    ] = None,
    model_class: Annotated[
        str | None,
        typer.Option(
            "--model-class",
            help="Planner class of the models (e.g. bert-base; default: one class per measured shape).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the profile ('-': stdout, and nothing else).")
    ] = Path("profile.json"),
    traced: Annotated[
        bool,
        typer.Option(
            "--traced/--no-traced",
            help="Also time each point on the model's traced graph (what a server runs for a hot model: "
            "CPU, safetensors versions) and record the graph's memory per model.",
        ),
    ] = True,
    server_overhead: Annotated[
        bool,
        typer.Option(
            "--server-overhead/--no-server-overhead",
            help="Also time requests through a real `inferpack serve` (a free loopback port) under "
            "open-loop Poisson load, and record their service time's excess over the bare forward as "
            "the profile's request overhead.",
        ),
    ] = True,
    overhead_requests: Annotated[
        int,
        typer.Option(
            "--overhead-requests",
            min=10,
            help="Requests sent through the server under load (each gives a service time).",
        ),
    ] = 100,
    overhead_load: Annotated[
        float,
        typer.Option(
            "--overhead-load",
            min=0.05,
            max=0.9,
            help="Utilisation of the server's worker under that load (the Poisson rate is set from "
            "sequential requests first).",
        ),
    ] = 0.5,
) -> None:
    """Measure this machine: per model architecture, cold-load time, resident memory, latency at each batch
    size, thread count and dtype, and peak throughput per core. Feed the file to `inferpack plan`."""
    import datetime

    from inferpack.planner.profiler import ProfileRequest, profile_repository, write_profile
    from inferpack.repository.local import open_repository

    to_stdout = str(out) == "-"
    console = Console(stderr=True, quiet=True) if to_stdout else Console()  # stdout: the JSON alone
    repo = open_repository(repository)
    wanted = _split(models) or repo.model_ids()
    unknown = [m for m in wanted if m not in repo.model_ids()]
    if unknown:
        raise ConfigError(f"not in {repository}: {unknown[:5]}")
    allowed_dtypes = {"fp32", "bf16"}
    dtype_list = _split(dtypes) or ["fp32"]
    if set(dtype_list) - allowed_dtypes:
        raise ConfigError(f"--dtypes takes fp32 and/or bf16, not {dtypes!r}")
    request = ProfileRequest(
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        threads=_ints(threads, "--threads"),
        dtypes=[d for d in ("fp32", "bf16") if d in dtype_list],  # typed as the Literal choices
        repeats=repeats,
        instance_types=instance_type or None,
        model_class=model_class,
        traced=traced,
    )
    steps = len(request.dtypes) * len(request.threads) * len(request.batch_sizes) * (2 if traced else 1)
    with counting_progress(console) as bar:
        task = bar.add_task("profiling", total=None)

        def step(label: str) -> None:
            bar.update(task, description=label, advance=1)

        from inferpack.planner.profiler import group_by_architecture

        bar.update(task, total=steps * len(group_by_architecture(repo, wanted)))
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        profile, failed = profile_repository(repo, wanted, request, when=when, progress=step)
    if server_overhead:
        from inferpack.planner.overhead import overheads_for_repository

        with console.status("timing requests through a real server under load"):
            profile = overheads_for_repository(
                profile,
                repository,  # a folder or s3://: the server opens it as `serve --repository` does
                repo,
                wanted,
                failed,
                requests=overhead_requests,
                utilisation=overhead_load,
                log_dir=Path(tempfile.gettempdir()) if to_stdout else out.parent,
            )
    if to_stdout:
        print(profile.model_dump_json(indent=2, exclude_none=True))
        return
    write_profile(profile, out)
    table = Table(title=f"profile: {profile.notes}")
    for col in (
        "architecture",
        "cold load",
        "resident",
        "dtype",
        "threads",
        "batch",
        "latency",
        "P90",
        "req/s/worker",
    ):
        table.add_column(col, justify="left" if col in ("architecture", "dtype") else "right")
    for prof in profile.profiles:
        for k, point in enumerate(prof.points):
            table.add_row(
                prof.model_class if k == 0 else "",
                f"{prof.cold_load_s:.2f} s" if k == 0 else "",
                f"{prof.resident_mb:.0f} MB" if k == 0 else "",
                f"{point.dtype} traced" if point.traced else point.dtype,
                str(point.threads),
                str(point.batch_size),
                f"{point.latency_ms:.1f} ms",
                f"{point.latency_p90_ms:.1f} ms" if point.latency_p90_ms else "-",
                f"{point.worker_rps():.1f}",
            )
    console.print(table)
    for prof in profile.profiles:
        if prof.request_overhead_ms is not None:
            console.print(
                f"{prof.model_class}: request overhead through the server under load "
                f"{prof.request_overhead_ms:.1f} ms (P90 {prof.request_overhead_p90_ms or 0:.1f} ms) over "
                "the bare forward"
            )
    for key, reason in failed.items():
        console.print(f"[yellow]skipped[/] {key}: {reason}")
    plan_class = model_class or "<architecture>"
    console.print(f"wrote {out}; plan with: inferpack plan --profiles {out} --model-class {plan_class}")
