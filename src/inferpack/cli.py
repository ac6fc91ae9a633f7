"""The command line: the only place that reads argv. Each command parses flags, builds settings, calls one
function of the Python API, and turns InferpackError into a clear message and exit code 2."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from inferpack import __version__
from inferpack.compile.cli import compile_command
from inferpack.deploy.cli import eks_app, image_app, k8s_app
from inferpack.errors import InferpackError
from inferpack.fleet.cli import register as register_fleet
from inferpack.imports.cli import import_command
from inferpack.loadtest.cli import app as bench_app
from inferpack.planner.cli import plan_command, profile_command
from inferpack.progress import counting_progress
from inferpack.repository.manifest import TASKS, Task
from inferpack.settings import DTypeChoice, EngineChoice, EvictionPolicy, load_settings

app = typer.Typer(
    name="inferpack",
    help="Serve thousands of unique PyTorch models cheaply: server, fleet, planner, load tests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Create and inspect models in a repository.", no_args_is_help=True)
app.add_typer(models_app, name="models")
models_app.command("import")(import_command)
app.add_typer(bench_app, name="bench")
app.add_typer(k8s_app, name="k8s")
app.add_typer(eks_app, name="eks")
app.add_typer(image_app, name="image")
app.command("plan")(plan_command)
app.command("compile")(compile_command)
app.command("profile")(profile_command)
register_fleet(app)  # up, status, logs, down, router, demo, config
console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: ./inferpack.toml).")
]


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def version() -> None:
    """Print the inferpack version."""
    print(__version__)


@app.command()
def serve(
    repository: Annotated[
        str | None, typer.Option(help="Model repository: a folder or s3://bucket/prefix.")
    ] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated model ids to load at start-up.")] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Load every model in the repository (default).")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080; 0 picks a free one).")] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto (CUDA when a GPU is visible, else CPU), cpu, cuda, cuda:N or neuron."),
    ] = None,
    dtype: Annotated[
        DTypeChoice | None,
        typer.Option(help="auto (bf16 where native, else fp16 on GPUs), fp32, bf16, fp16."),
    ] = None,
    engine: Annotated[
        EngineChoice | None,
        typer.Option(
            help="auto (default: mixed on CPUs with onnxruntime where eager computes fp32, else eager), "
            "eager, onnxruntime (ONNX versions, CPU) or mixed (eager plus ONNX Runtime, per batch by "
            "measured speed)."
        ),
    ] = None,
    trace_after_batches: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="CPU, eager: trace a model to a TorchScript graph once it has run this many batches "
            "(default 16; 0: never).",
        ),
    ] = None,
    pack_weights: Annotated[
        bool | None,
        typer.Option(
            "--pack-weights/--no-pack-weights",
            help="bf16 on native-bf16 CPUs: traced graphs run on linear weights prepacked for oneDNN "
            "(default) or on the plain weights (less memory per process).",
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: one per core).")] = None,
    intra_op_threads: Annotated[
        int | None, typer.Option(min=1, help="torch intra-op threads per forward (default 1).")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Largest batch one forward runs (default 8).")
    ] = None,
    max_batch_latency_ms: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Objective for one batch's expected compute time, ms: batches take only as many queued "
            "requests as keep it (default 100; 0: max batch size alone).",
        ),
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(min=0.0, help="Extra wait for a fuller batch, ms (default 0).")
    ] = None,
    latency_objective_ms: Annotated[
        float | None,
        typer.Option(
            help="Latency objective, ms (a hard bound, not a percentile): the deadline of requests that "
            "set none, unless batching.deadline_ms is set (default: none, deadlines derived).",
        ),
    ] = None,
    lazy: Annotated[
        bool | None, typer.Option("--lazy/--no-lazy", help="Load models on first request.")
    ] = None,
    memory_budget_mb: Annotated[
        float | None, typer.Option(help="Model memory budget in MiB; LRU idle models are evicted to fit.")
    ] = None,
    pinned: Annotated[str | None, typer.Option(help="Comma-separated models never evicted.")] = None,
    idle_unload_s: Annotated[float | None, typer.Option(help="Unload models idle this many seconds.")] = None,
    eviction_policy: Annotated[
        EvictionPolicy | None,
        typer.Option(help="slru (default: once-used models first, then LRU) or frequency (decayed counts)."),
    ] = None,
    warm_start: Annotated[
        bool | None,
        typer.Option(
            "--warm-start/--no-warm-start",
            help="Persist access statistics; at start load the hottest models that fit, in the background.",
        ),
    ] = None,
    access_stats_file: Annotated[
        str | None, typer.Option(help="Access statistics file for --warm-start (default: in ~/.cache).")
    ] = None,
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Start a multi-model server (seed-compatible /predictions API and Open Inference Protocol V2)."""
    from inferpack.server.run import serve as run_server

    server: dict[str, Any] = _drop_none(
        {
            "repository": repository,
            "host": host,
            "port": port,
            "device": device,
            "dtype": dtype,
            "engine": engine,
            "trace_after_batches": trace_after_batches,
            "pack_weights": pack_weights,
            "inference_threads": threads,
            "intra_op_threads": intra_op_threads,
            "lazy_load": lazy,
            "memory_budget_mb": memory_budget_mb,
            "idle_unload_s": idle_unload_s,
            "eviction_policy": eviction_policy,
            "warm_start": warm_start,
            "access_stats_file": access_stats_file,
            "pinned_models": [m.strip() for m in pinned.split(",") if m.strip()] if pinned else None,
        }
    )
    batching = _drop_none(
        {
            "max_batch_size": max_batch_size,
            "max_batch_latency_ms": max_batch_latency_ms,
            "max_wait_ms": max_wait_ms,
            "latency_objective_ms": latency_objective_ms,
        }
    )
    if batching:
        server["batching"] = batching
    if models and all_models:
        raise typer.BadParameter("use either --models or --all")
    if models:
        server["models"] = [m.strip() for m in models.split(",") if m.strip()]
    elif all_models:
        server["models"] = None
    settings = load_settings(config, {"server": server})
    run_server(settings.server, log_level=log_level)


@models_app.command("demo")
def models_demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Repository folder to create models in.")] = Path(
        "demo-repo"
    ),
    count: Annotated[int, typer.Option(help="How many unique models.")] = 10,
    arch: Annotated[
        str, typer.Option(help="minilm (real MiniLM weights), bert-base (random, 110M) or tiny (random, 4M).")
    ] = "minilm",
    task: Annotated[
        str,
        typer.Option(
            help="question-answering, text-classification, token-classification or feature-extraction."
        ),
    ] = ("question-answering"),
    prefix: Annotated[str | None, typer.Option(help="Model id prefix (default: <arch>-<task>).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for heads and perturbations.")] = 0,
    share_base: Annotated[
        bool,
        typer.Option(
            "--share-base/--no-share-base",
            help="Store the common base once in _shared/weights/ (per-tenant fine-tunes of one base).",
        ),
    ] = True,
    copies_of: Annotated[
        str | None,
        typer.Option(
            help="Make --count copies of this model instead (one set of weights on disk and in memory)."
        ),
    ] = None,
    from_repo: Annotated[
        Path | None, typer.Option("--from", help="Repository of the --copies-of model (default: --out).")
    ] = None,
    seed_names: Annotated[
        bool,
        typer.Option(
            "--seed-names", help="Name the models model0..model{N-1} as the reference does (prefix: model)."
        ),
    ] = False,
) -> None:
    """Create N unique demo models offline (untrained heads; see docs/server.md), or N copies of one model
    (--copies-of; the reference's benchmark set-up)."""
    from inferpack.repository.demo import make_demo_models

    if copies_of is not None:
        _models_copies(out_dir, copies_of, count, from_repo=from_repo, seed_names=seed_names, prefix=prefix)
        return
    if arch not in ("minilm", "bert-base", "tiny"):
        raise typer.BadParameter("--arch must be minilm, bert-base or tiny")
    if task not in TASKS:
        raise typer.BadParameter(f"--task must be one of {', '.join(TASKS)}")
    task_name: Task = task  # narrowed by the check against TASKS above
    with _progress() as progress:
        bar = progress.add_task(f"creating {count} {arch} models", total=count)
        ids = make_demo_models(
            out_dir,
            count,
            arch=arch,  # type: ignore[arg-type]
            task=task_name,
            share_base=share_base,
            prefix=prefix,
            seed=seed,
            progress=lambda _m: progress.advance(bar),
            names=[f"{prefix or 'model'}{i}" for i in range(count)] if seed_names else None,
        )
        progress.update(bar, completed=count)
    console.print(f"{len(ids)} models in {out_dir} ({ids[0]} .. {ids[-1]})")


def _models_copies(
    out_dir: Path, source: str, count: int, *, from_repo: Path | None, seed_names: bool, prefix: str | None
) -> None:
    from inferpack.repository.copies import copy_ids, make_copies
    from inferpack.repository.local import LocalRepository

    ids = copy_ids(source, count, seed_names=seed_names, prefix=prefix)
    repo = LocalRepository(out_dir)
    with _progress() as progress:
        bar = progress.add_task(f"copying {source} {count} times", total=count)
        make_copies(
            repo,
            source,
            ids,
            source_repo=LocalRepository(from_repo) if from_repo is not None else None,
            progress=lambda _m: progress.advance(bar),
        )
        progress.update(bar, completed=count)
    console.print(f"{len(ids)} copies of {source} in {out_dir} ({ids[0]} .. {ids[-1]})")


@models_app.command("dedup")
def models_dedup(
    repository: Annotated[Path, typer.Option(help="Repository folder.")] = Path("demo-repo"),
    min_models: Annotated[int, typer.Option(help="Share a tensor found in at least this many models.")] = 2,
    dry_run: Annotated[bool, typer.Option(help="Report what would be shared; change nothing.")] = False,
) -> None:
    """Store tensors identical across models (by content hash) once, in <repo>/_shared/weights/."""
    from inferpack.repository.dedup import dedup_repository
    from inferpack.repository.local import LocalRepository

    repo = LocalRepository(repository)
    with _progress() as progress:
        bar = progress.add_task("hashing tensors", total=len(repo.model_ids()))
        report = dedup_repository(
            repo, min_models=min_models, dry_run=dry_run, progress=lambda _m: progress.advance(bar)
        )
    table = Table(title="dedup" + (" (dry run)" if dry_run else ""))
    for col in ("models scanned", "models rewritten", "shared files", "MB before", "MB after"):
        table.add_column(col, justify="right")
    after = "-" if dry_run else f"{report.bytes_after / 1e6:.1f}"
    table.add_row(
        str(report.models_scanned),
        str(report.models_rewritten),
        str(len(report.shared_files)),
        f"{report.bytes_before / 1e6:.1f}",
        after,
    )
    out.print(table)


@models_app.command("gc")
def models_gc(
    repository: Annotated[
        str, typer.Option(help="Repository folder, or s3://bucket/prefix (as `models push` wrote it).")
    ] = "demo-repo",
    grace_hours: Annotated[
        float, typer.Option(help="Spare unreferenced files modified less than this long ago.")
    ] = 1.0,
    dry_run: Annotated[
        bool, typer.Option(help="List what would be removed, with the bytes; remove nothing.")
    ] = False,
) -> None:
    """Remove the files of <repo>/_shared/ that no version's manifest references (left by deleted versions
    or models). Files younger than the grace period are spared: a concurrent writer stores a shared file
    before the manifest naming it."""
    from inferpack.repository.gc import collect_garbage, collect_s3_garbage

    grace_s = grace_hours * 3600
    if repository.startswith("s3://"):
        report = collect_s3_garbage(repository, grace_s=grace_s, dry_run=dry_run)
    else:
        report = collect_garbage(Path(repository), grace_s=grace_s, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for relative, size in report.removed:
        out.print(f"{verb} {relative} ({size / 1e6:.2f} MB)")
    console.print(
        f"{verb} {len(report.removed)} unreferenced file(s), {report.bytes_removed / 1e6:.2f} MB; "
        f"kept {report.referenced} referenced, {len(report.kept_young)} unreferenced but younger than "
        f"{grace_hours:g} h"
    )


@models_app.command("list")
def models_list(
    repository: Annotated[Path, typer.Option(help="Repository folder.")] = Path("demo-repo"),
) -> None:
    """List the models of a repository with their versions, formats and tasks, then the folders that are
    not valid models, each with the reason."""
    from inferpack.errors import RepositoryError
    from inferpack.repository.local import LocalRepository

    repo = LocalRepository(repository)
    # No vertical rules, and only the id may fold: on 80 columns (a pipe too) the task stays whole (a boxed
    # table cut it to "question-answe…").
    table = Table(title=f"models in {repo.describe()}", box=box.SIMPLE_HEAD)
    table.add_column("model", overflow="fold")
    for col in ("versions", "latest format", "task", "dtype", "max seq"):
        table.add_column(col, no_wrap=True)
    for model_id in repo.model_ids():
        try:
            m = repo.manifest(model_id)
        except RepositoryError:
            continue  # listed with its reason below
        versions = ",".join(str(v) for v in repo.versions(model_id))
        table.add_row(model_id, versions, m.format, m.task, m.dtype, str(m.max_sequence_length))
    out.print(table)
    problems = repo.problems()
    if problems:
        bad = Table(title="not valid models")
        bad.add_column("folder")
        bad.add_column("reason")
        for name, reason in problems:
            bad.add_row(name, reason)
        out.print(bad)


@models_app.command("push")
def models_push(
    destination: Annotated[str, typer.Argument(help="s3://bucket/prefix to upload to.")],
    repository: Annotated[Path, typer.Option(help="Local repository folder.")] = Path("demo-repo"),
) -> None:
    """Upload a local repository to S3 (unchanged files skipped; manifests last). See docs/kubernetes.md."""
    from inferpack.repository.s3push import push_repository

    counts = push_repository(repository, destination)
    console.print(f"{destination}: uploaded {counts['uploaded']}, unchanged {counts['skipped']}")


def _progress() -> Progress:
    return counting_progress(console)


def one_line_summaries(group: typer.Typer) -> None:
    """Give every command of `group` (and of its sub-groups) without a `short_help` the first paragraph
    of its docstring on one line. Typer's rich help lists commands with their docstrings' line breaks
    kept, so `inferpack --help` broke summaries mid-sentence ("... instance types within the" / "latency
    objective") wherever a docstring wrapped."""
    for command in group.registered_commands:
        doc = command.help or (command.callback.__doc__ if command.callback else None)
        if command.short_help is None and doc:
            command.short_help = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            one_line_summaries(sub.typer_instance)


one_line_summaries(app)  # after every command is registered (all of them above)


def main() -> None:
    """Entry point: run the app, mapping InferpackError to a one-line message and exit status 2."""
    try:
        app()
    except InferpackError as exc:
        # Escaped: messages quote shapes and lists ("[batch, tokens, 2]"), which rich would take for markup
        # tags and drop.
        console.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            console.print(f"[yellow]next:[/] {escape(exc.hint)}")
        sys.exit(2)


if __name__ == "__main__":
    main()
