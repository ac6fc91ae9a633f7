"""`inferpack bench`: run, worker, aggregate, compare, report. Parse flags -> BenchConfig -> call one
function of the loadtest package; nothing else happens here."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from inferpack.errors import ConfigError
from inferpack.loadtest.config import BenchConfig, Mode, TrafficSpec, load_config
from inferpack.loadtest.display import LiveView, compare_table, result_tables
from inferpack.loadtest.local import WorkerProgressFn, run_local, snapshot_line
from inferpack.loadtest.protocol import DEFAULT_CONTEXT, DEFAULT_QUESTION, Api
from inferpack.loadtest.recorder import Snapshot
from inferpack.loadtest.result import BenchResult, aggregate, load_result, save_result
from inferpack.loadtest.runner import run_worker
from inferpack.loadtest.shapes import Arrivals, ClosedLoop, LoadShape, OpenLoop, parse_steps
from inferpack.loadtest.targets import resolve_target
from inferpack.loadtest.traffic import TrafficKind, numbered_models, read_model_list, read_trace
from inferpack.tokens import read_token_file

app = typer.Typer(
    help="Load and scale tests against any server speaking the seed API or Open Inference Protocol V2.",
    no_args_is_help=True,
)

# --- options shared by `run` and `worker` (a worker can be started from flags alone, e.g. in a Job) ---
UrlOpt = Annotated[
    list[str] | None,
    typer.Option("--url", "--target", help="Base URL of a router or server (repeatable)."),
]
PlanOpt = Annotated[Path | None, typer.Option(help="Plan file: its models (and servers, with --endpoints).")]
EndpointsOpt = Annotated[
    Path | None,
    typer.Option(
        "--endpoints",
        "--server-map",  # its older name, still accepted
        help='Endpoints file {"format_version":1,"servers":{name: url}} (the fleet\'s endpoints.json).',
    ),
]
ModeOpt = Annotated[str, typer.Option(help="seq: every model of every server once; rnd; bmk.")]
ApiOpt = Annotated[str, typer.Option(help="seed (GET /predictions) or v2 (Open Inference Protocol).")]
ModelsFileOpt = Annotated[
    Path | None, typer.Option(help="Model ids, one per line, hottest first (Zipf rank order).")
]
NumModelsOpt = Annotated[int | None, typer.Option(help="Synthetic ids PREFIX-00000... when no list.")]
PrefixOpt = Annotated[str, typer.Option(help="Prefix of synthetic model ids.")]
SeedNamesOpt = Annotated[
    bool, typer.Option("--seed-names", help="Synthetic ids PREFIX0.. (the reference's model0..).")
]
TrafficOpt = Annotated[str, typer.Option(help="uniform, zipf or replay (--trace).")]
ZipfOpt = Annotated[float, typer.Option("--zipf-s", help="Zipf exponent.")]
TraceOpt = Annotated[Path | None, typer.Option(help="CSV of model ids to replay (column model_id).")]
UsersOpt = Annotated[int | None, typer.Option(help="Closed loop: concurrent users.")]
RateOpt = Annotated[str | None, typer.Option(help="Open loop: req/s, or stepped 'SECONDS:RATE,...,RATE'.")]
ArrivalsOpt = Annotated[str, typer.Option(help="Open loop arrivals: constant or poisson.")]
InFlightOpt = Annotated[int, typer.Option(help="Open loop: most requests in flight (all workers).")]
DurationOpt = Annotated[float | None, typer.Option(help="Measured seconds after warm-up.")]
RequestsOpt = Annotated[int | None, typer.Option(help="Measured requests after warm-up.")]
WarmupOpt = Annotated[float, typer.Option(help="Seconds of warm-up, sent but not recorded.")]
TimeoutOpt = Annotated[float, typer.Option(help="Per-request deadline, seconds.")]
IntervalOpt = Annotated[float, typer.Option(help="Time-series interval, seconds.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed (each worker derives its own).")]
QuestionOpt = Annotated[str, typer.Option(help="Question text sent with every request.")]
ContextOpt = Annotated[str, typer.Option(help="Context text sent with every request.")]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="INFERPACK_BENCH_TOKEN_FILE",
        help="Tokens file (the server's format: one per line, # comments): its first token is sent as "
        "`Authorization: Bearer`. Never written into configs or results.",
    ),
]


def _choice(value: str, allowed: tuple[str, ...], flag: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def build_config(
    *,
    url: list[str] | None,
    plan: Path | None,
    endpoints: Path | None,
    mode: str,
    api: str,
    models_file: Path | None,
    num_models: int | None,
    model_prefix: str,
    traffic: str,
    seed_names: bool = False,
    zipf_s: float,
    trace: Path | None,
    users: int | None,
    rate: str | None,
    arrivals: str,
    max_in_flight: int,
    duration: float | None,
    requests: int | None,
    warmup: float,
    timeout: float,
    interval: float,
    seed: int,
    question: str,
    context: str,
) -> BenchConfig:
    """Turn command-line values into a validated BenchConfig (models and target resolved)."""
    mode_v: Mode = _choice(mode, ("seq", "rnd", "bmk"), "--mode")  # type: ignore[assignment]
    api_v: Api = _choice(api, ("seed", "v2"), "--api")  # type: ignore[assignment]
    kind: TrafficKind = _choice(traffic, ("uniform", "zipf", "replay"), "--traffic")  # type: ignore[assignment]
    arrivals_v: Arrivals = _choice(arrivals, ("constant", "poisson"), "--arrivals")  # type: ignore[assignment]
    target, plan_models = resolve_target(url or [], plan, endpoints)
    if models_file is not None:
        models = read_model_list(models_file)
    elif plan_models:
        models = plan_models
    elif num_models is not None:
        models = numbered_models(model_prefix, num_models, seed_names=seed_names)
    else:
        models = []
    spec = TrafficSpec(kind=kind, zipf_s=zipf_s)
    if trace is not None:
        ids = read_trace(trace)
        known = set(models)
        models = models + [m for m in dict.fromkeys(ids) if m not in known]
        position = {m: i for i, m in enumerate(models)}
        spec = TrafficSpec(kind="replay", zipf_s=zipf_s, trace=[position[m] for m in ids])
    elif kind == "replay":
        raise ConfigError("--traffic replay needs --trace FILE.csv")
    if not models:
        raise ConfigError("no models", hint="give --models-file, --num-models, --plan or --trace")
    if rate is not None and users is not None:
        raise ConfigError("give --users (closed loop) or --rate (open loop), not both")
    if mode_v == "seq" and rate is not None:
        raise ConfigError("seq runs a closed loop (--users); --rate is for rnd and bmk")
    if mode_v == "rnd":
        # The reference's random mode: N requests at a set frequency.
        rate = rate or "10"
        if duration is None and requests is None:
            requests = 100
    if mode_v == "bmk" and duration is None and requests is None:
        duration = 30.0
    shape: LoadShape
    if rate is not None:
        shape = OpenLoop(steps=parse_steps(rate), arrivals=arrivals_v, max_in_flight=max_in_flight)
    else:
        shape = ClosedLoop(users=users or 1)
    try:
        return BenchConfig(
            mode=mode_v,
            api=api_v,
            target=target,
            models=models,
            traffic=spec,
            shape=shape,
            duration_s=duration,
            requests=requests,
            warmup_s=warmup,
            timeout_s=timeout,
            interval_s=interval,
            seed=seed,
            question=question,
            context=context,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid bench options: {exc}") from exc


def _stderr() -> Console:
    return Console(stderr=True)


@app.command()
def run(
    url: UrlOpt = None,
    plan: PlanOpt = None,
    endpoints: EndpointsOpt = None,
    mode: ModeOpt = "bmk",
    api: ApiOpt = "seed",
    models_file: ModelsFileOpt = None,
    num_models: NumModelsOpt = None,
    model_prefix: PrefixOpt = "model",
    seed_names: SeedNamesOpt = False,
    traffic: TrafficOpt = "uniform",
    zipf_s: ZipfOpt = 1.0,
    trace: TraceOpt = None,
    users: UsersOpt = None,
    rate: RateOpt = None,
    arrivals: ArrivalsOpt = "constant",
    max_in_flight: InFlightOpt = 1000,
    duration: DurationOpt = None,
    requests: RequestsOpt = None,
    warmup: WarmupOpt = 0.0,
    timeout: TimeoutOpt = 30.0,
    interval: IntervalOpt = 1.0,
    seed: SeedOpt = 0,
    question: QuestionOpt = DEFAULT_QUESTION,
    context: ContextOpt = DEFAULT_CONTEXT,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = 1,
    out: Annotated[Path, typer.Option(help="Folder for result.json (and the report).")] = Path("bench-out"),
    report: Annotated[bool, typer.Option(help="Write report.md with PNG plots into --out.")] = True,
    live: Annotated[bool, typer.Option(help="Live progress display.")] = True,
    token_file: TokenFileOpt = None,
) -> None:
    """Run a load test; print the result table; write result.json (and report.md + plots) into --out."""
    config = build_config(
        **{k: v for k, v in locals().items() if k not in ("workers", "out", "report", "live", "token_file")}
    )
    token = bench_token(token_file)
    console = Console()
    view = LiveView(_stderr(), f"bench → {config.target.description}", config.duration_s, config.requests)
    result: BenchResult
    if live:
        with view:
            result = _execute(config, workers, out, view.update, token_file, token)
    else:
        result = _execute(config, workers, out, None, token_file, token)
    path = out / "result.json"
    save_result(result, path)
    console.print(result_tables(result))
    console.print(f"result: {path}")
    if report:
        _report(result, out, console)


def _report_writer() -> Callable[..., Path]:
    """`write_report`, or a ConfigError naming the `report` extra where matplotlib is not installed (the
    server image leaves it out)."""
    try:
        from inferpack.loadtest.report import write_report  # matplotlib only when a report is wanted
    except ImportError as exc:
        raise ConfigError(
            f"a report needs matplotlib ({exc})", hint="pip install 'inferpack[report]'"
        ) from exc
    return write_report


def _report(result: BenchResult, out: Path, console: Console) -> None:
    """Write the report after a run; without matplotlib, say so and go on (result.json is written)."""
    try:
        write_report = _report_writer()
    except ConfigError as exc:
        console.print(f"[yellow]note:[/] no report: {escape(str(exc))}")  # keeps "inferpack[report]"
        return
    console.print(f"report: {write_report(result, out)}")


def bench_token(token_file: Path | None) -> str | None:
    """The bearer token a load test sends: the first of `token_file`, or none without a file."""
    if token_file is None:
        return None
    tokens = read_token_file(token_file)
    if not tokens:
        raise ConfigError(f"--token-file {token_file} holds no token")
    return tokens[0]


def _execute(
    config: BenchConfig,
    workers: int,
    out: Path,
    progress: WorkerProgressFn | None,
    token_file: Path | None,
    token: str | None,
) -> BenchResult:
    if workers == 1:
        if progress is None:
            return run_worker(config, token=token)
        report = progress
        return run_worker(config, progress=lambda snap: report(0, snap), token=token)
    return run_local(config, workers, out / "workers", progress, token_file)


@app.command()
def worker(
    config_file: Annotated[
        Path | None, typer.Option("--config", help="Run config JSON (as written by `bench run`).")
    ] = None,
    index: Annotated[
        int,
        typer.Option("--worker-index", "--index", envvar="INFERPACK_BENCH_WORKER_INDEX", help="This worker."),
    ] = 0,
    of: Annotated[
        int, typer.Option("--workers", "--of", envvar="INFERPACK_BENCH_WORKERS", min=1, help="Worker count.")
    ] = 1,
    out: Annotated[str, typer.Option(help="Result file; '-' prints it as one JSON line on stdout.")] = "-",
    progress: Annotated[str, typer.Option(help="none, text (stderr) or jsonl (stdout).")] = "text",
    wait_go: Annotated[bool, typer.Option(help="Print a ready line, start on a line on stdin.")] = False,
    start_at: Annotated[
        float | None,
        typer.Option(
            envvar="INFERPACK_BENCH_START_AT",
            help="Start at this Unix time (line up pods; 0: at once). A Job's is set by `k8s bench`.",
        ),
    ] = None,
    url: UrlOpt = None,
    plan: PlanOpt = None,
    endpoints: EndpointsOpt = None,
    mode: ModeOpt = "bmk",
    api: ApiOpt = "seed",
    models_file: ModelsFileOpt = None,
    num_models: NumModelsOpt = None,
    model_prefix: PrefixOpt = "model",
    seed_names: SeedNamesOpt = False,
    traffic: TrafficOpt = "uniform",
    zipf_s: ZipfOpt = 1.0,
    trace: TraceOpt = None,
    users: UsersOpt = None,
    rate: RateOpt = None,
    arrivals: ArrivalsOpt = "constant",
    max_in_flight: InFlightOpt = 1000,
    duration: DurationOpt = None,
    requests: RequestsOpt = None,
    warmup: WarmupOpt = 0.0,
    timeout: TimeoutOpt = 30.0,
    interval: IntervalOpt = 1.0,
    seed: SeedOpt = 0,
    question: QuestionOpt = DEFAULT_QUESTION,
    context: ContextOpt = DEFAULT_CONTEXT,
    token_file: TokenFileOpt = None,
) -> None:
    """One worker: its share (index of N) of a run; the command local workers and Kubernetes Jobs run."""
    _choice(progress, ("none", "text", "jsonl"), "--progress")
    if not 0 <= index < of:
        raise ConfigError(f"--worker-index {index} is outside 0..{of - 1}")
    if config_file is not None:
        config = load_config(config_file)
    else:
        opts = {k: v for k, v in locals().items() if k not in _WORKER_ONLY}
        config = build_config(**opts)
    if wait_go:
        print(json.dumps({"event": "ready", "index": index}), flush=True)
        sys.stdin.readline()

    last_line = [-1]

    def report(snap: Snapshot) -> None:
        if progress == "jsonl":
            print(snapshot_line(index, snap), flush=True)
        elif progress == "text" and int(snap.elapsed_s // 5) != last_line[0]:
            # One line per 5 s: a Job's log stays readable over a long run.
            last_line[0] = int(snap.elapsed_s // 5)
            print(
                f"worker {index}: t={snap.elapsed_s:.1f}s done={snap.done} errors={snap.errors} "
                f"rate={snap.new_done / snap.period_s:.0f}/s",
                file=sys.stderr,
            )

    token = bench_token(token_file)
    result = run_worker(config, index, of, None if progress == "none" else report, start_at, token)
    if out == "-":
        result.summary = result.compute_summary()
        print(result.model_dump_json(), flush=True)
    else:
        save_result(result, Path(out))


_WORKER_ONLY = {
    "config_file",
    "index",
    "of",
    "out",
    "progress",
    "wait_go",
    "start_at",
    "config",
    "token_file",
}


@app.command("aggregate")
def aggregate_cmd(
    files: Annotated[list[Path], typer.Argument(help="Worker result files (or worker logs).")],
    out: Annotated[Path | None, typer.Option(help="Write the merged result JSON here.")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Write report.md + plots here.")] = None,
) -> None:
    """Merge worker results exactly (histogram counts added, never percentiles averaged)."""
    merged = aggregate([load_result(f) for f in files])
    Console().print(result_tables(merged))
    if out is not None:
        save_result(merged, out)
        Console().print(f"result: {out}")
    if report_dir is not None:
        _report(merged, report_dir, Console())


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="Baseline result JSON.")],
    b: Annotated[Path, typer.Argument(help="Result JSON to compare with it.")],
) -> None:
    """Print the differences between two results (B relative to A)."""
    # Result files are usually all called result.json: name them by their folder then.
    name_a, name_b = (
        (a.name, b.name) if a.name != b.name else (str(a.parent / a.name), str(b.parent / b.name))
    )
    Console().print(compare_table(load_result(a), load_result(b), name_a, name_b))


@app.command()
def report(
    result_file: Annotated[Path, typer.Argument(help="Result JSON.")],
    out: Annotated[Path, typer.Option(help="Folder for report.md and the PNG plots.")] = Path("bench-report"),
) -> None:
    """Print a result's tables and write its Markdown report with plots."""
    write_report = _report_writer()
    result = load_result(result_file)
    Console().print(result_tables(result))
    Console().print(f"report: {write_report(result, out)}")
