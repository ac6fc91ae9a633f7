"""Commands of the local fleet: up, restart, status, logs, exec, down, router, demo, config show, and the
hidden `fleet supervise`. Each parses flags into settings overrides and calls one function of `ops`/`demo`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from inferpack.fleet import change, changeview, journal, ops
from inferpack.fleet.display import print_summary, start_with_progress
from inferpack.fleet.state import FleetState, RunDir, is_stale
from inferpack.plan import load_plan
from inferpack.settings import Settings, load_settings

console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: ./inferpack.toml).")
]
RunDirOpt = Annotated[
    Path | None, typer.Option("--run-dir", help="Run directory of the fleet (default: fleet.run_dir).")
]

fleet_app = typer.Typer(help="Internal commands of the local fleet.", hidden=True, no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _settings(config: Path | None, fleet: dict[str, Any], server: dict[str, Any] | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if fleet := _drop_none(fleet):
        overrides["fleet"] = fleet
    if server and (server := _drop_none(server)):
        overrides["server"] = server
    return load_settings(config, overrides)


def _run_dir(config: Path | None, run_dir: Path | None) -> Path:
    return run_dir if run_dir is not None else load_settings(config).fleet.run_dir


def up_command(
    plan: Annotated[Path | None, typer.Option("--plan", help="Plan file (default: a simple plan).")] = None,
    repository: Annotated[
        Path | None, typer.Option(help="Model repository (default: server.repository).")
    ] = None,
    servers: Annotated[int | None, typer.Option(min=1, help="Servers of the simple plan.")] = None,
    copies: Annotated[int | None, typer.Option(min=1, help="Copies per model in the simple plan.")] = None,
    base_port: Annotated[int | None, typer.Option(help="First server port (0: free ports).")] = None,
    router_port: Annotated[int | None, typer.Option(help="Router port (0: a free one).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Inference threads per server (0: split cores).")
    ] = None,
    allow_cpu_fallback: Annotated[
        bool,
        typer.Option(
            "--allow-cpu-fallback",
            help="Run plan groups whose GPU/Neuron this host lacks on the CPU (warns) instead of failing.",
        ),
    ] = False,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="host (processes of this Python, the default), or podman / docker: servers and router as "
            "containers of --image, ports on 127.0.0.1, the repository mounted read-only.",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="Image of --runtime podman/docker (default: inferpack:latest, as `image build`)."),
    ] = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Start the local fleet (servers + router) in the background; return once all are ready.

    On a fleet already running from the run directory, move it to the plan instead, without a model going
    dark: start new servers and load new copies, wait until they are ready, route to them, then unload
    the old copies and stop the servers the plan drops; print every action and its timing. On a fleet
    whose supervisor died, adopt the servers and router that still run instead of restarting them (then
    re-plan as above when the plan differs; without --plan, keep the fleet's own plan). Only one `up`,
    `restart` or `down` at a time changes a run directory (the others fail at once)."""
    overrides: dict[str, Any] = {
        "plan": plan,
        "servers": servers,
        "copies": copies,
        "base_port": base_port,
        "router_port": router_port,
        "threads_per_server": threads,
        "allow_cpu_fallback": allow_cpu_fallback or None,  # absent: the config file decides
        "runtime": runtime,
        "image": image,
        "run_dir": run_dir,
    }
    settings = _settings(config, overrides, {"repository": repository})
    running = change.is_running(settings.fleet.run_dir)
    resume = None if plan is not None or running else ops.resume_plan(settings.fleet.run_dir)
    if resume is not None:
        found = ops.interrupted_change(settings.fleet.run_dir)
        if found is not None:
            where = RunDir(settings.fleet.run_dir.resolve())
            console.print(escape(journal.explain(where, found[0], supervisor_alive=False)))
        console.print(f"[yellow]resuming:[/] starting the fleet on the cut-short re-plan's target {resume}")
        settings = _settings(config, {**overrides, "plan": resume}, {"repository": repository})
    elif not running and plan is None and servers is None and copies is None and settings.fleet.plan is None:
        # No plan asked for, a dead supervisor's fleet still serving: keep it as it is (adopt it).
        keep = ops.adoptable_plan(settings, config)
        if keep is not None:
            console.print(
                f"[yellow]adopting:[/] the fleet's supervisor is gone; keeping its plan {escape(str(keep))}"
            )
            settings = _settings(config, {**overrides, "plan": keep}, {"repository": repository})
    new_plan = ops.settings_plan(settings)
    if not running and resume is None:
        # A dead supervisor's fleet on another plan: adopted as it runs, then re-planned (no downtime).
        with console.status("adopting the fleet its dead supervisor left running"):
            adopted = ops.adopt_for_replan(settings, new_plan, config)
        if adopted is not None:
            _print_adopted(adopted)
            running = True
    if running:
        report = changeview.with_progress(
            lambda show: change.apply_plan(settings, new_plan, config=config, on_progress=show)
        )
        changeview.print_report(report, f"re-plan of the fleet in {settings.fleet.run_dir}")
        return
    state = start_with_progress(settings, config, new_plan)
    _print_adopted(state)
    print_summary(state, settings.fleet.run_dir)


def _print_adopted(state: FleetState) -> None:
    for p in state.processes():
        if p.adopted:  # the dead supervisor's process kept serving: watched now, not restarted
            console.print(
                f"adopted {p.name} (pid {p.pid}): its supervisor had died; it kept running and is now "
                f"watched by supervisor pid {state.supervisor.pid}"
            )


def restart_command(
    servers: Annotated[
        list[str] | None, typer.Argument(help="Servers to restart, in order (default: every server).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Restart even a server holding a model's only ready copy (that model is down)."
        ),
    ] = False,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Rolling restart: one server at a time, routed around, stopped, started, ready, routed to again.

    A server holding a model with no other ready copy is refused (the message names the models); with
    --force it restarts anyway. New launch settings of the plan (threads, device) take effect at the
    restart."""
    where = _run_dir(config, run_dir)
    report = changeview.with_progress(
        lambda show: change.restart(where, servers or [], force=force, on_progress=show)
    )
    changeview.print_report(report, f"rolling restart of the fleet in {where}")


def status_command(run_dir: RunDirOpt = None, config: ConfigOpt = None) -> None:
    """Show every fleet process: pid, port, models, ready, RSS, requests, restarts."""
    run, state = ops.read_state(_run_dir(config, run_dir))
    stale = is_stale(state)
    table = Table(title=f"inferpack fleet: {state.phase}" + (" (STALE)" if stale else ""))
    for col in ("server", "pid", "port", "models", "state", "ready", "RSS MB", "requests", "restarts"):
        left = col in ("server", "models", "state")
        table.add_column(col, justify="left" if left else "right", no_wrap=col in ("server", "state"))
    auth = load_settings(config).server.auth
    for row in ops.status_rows(state, ops.runner_of(run), auth.metrics_token or auth.admin_token):
        models = f"{len(row.models)}: {row.models[0]}" if row.models else ""
        models += " .." if len(row.models) > 1 else ""
        table.add_row(
            row.name,
            str(row.pid) if row.alive else "-",
            str(row.port),
            models if row.role == "server" else "(all)",
            row.status + (" (adopted)" if row.adopted else ""),
            "[green]yes[/]" if row.ready else "[red]no[/]",
            f"{row.rss_mb:.0f}" if row.rss_mb is not None else "-",
            f"{row.requests:.0f}" if row.requests is not None else "-",
            str(row.restarts),
        )
    out.print(table)
    if stale:
        console.print(
            "[yellow]stale state:[/] the supervisor is gone; `inferpack down` stops any leftover process "
            "and marks the fleet stopped"
        )
    elif state.message:
        console.print(escape(state.message))
    found = ops.interrupted_change(run.root)
    if found is not None:
        console.print(escape(journal.explain(run, found[0], supervisor_alive=found[1])))


def logs_command(
    server: Annotated[
        str | None, typer.Argument(help="Process: a server name, router or supervisor.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines of each log to show.")] = 40,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print a process's log (all of them without SERVER); -f follows them."""
    from inferpack.processes import tail

    run, state = ops.read_state(_run_dir(config, run_dir))
    files = ops.log_files(run, state, server)
    for name, path in files:
        if len(files) > 1:
            out.rule(f"{name} ({path})")
        text = tail(path, lines)
        if text:
            out.print(escape(text), highlight=False)
    if follow:
        try:
            for name, line in ops.follow(files, lambda: False):
                prefix = f"{name}: " if len(files) > 1 else ""
                out.print(escape(prefix + line), highlight=False)
        except KeyboardInterrupt:
            return


def exec_command(
    server: Annotated[str, typer.Argument(help="A server of the fleet (or `router`).")],
    command: Annotated[
        list[str] | None, typer.Argument(help="Command to run after `--` (default: your shell).")
    ] = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A shell (or CMD) in a server's environment, in the run directory: `inferpack exec server-0 -- env`.

    The environment is the running server's own (else the one it would start with); INFERPACK_EXEC_URL,
    _PID, _LOG, _MODELS and INFERPACK_ROUTER_URL say where it is. The command's exit status is returned."""
    from inferpack.fleet.shell import exec_spec, replace_process

    run, state = ops.read_state(_run_dir(config, run_dir))
    spec = exec_spec(run, state, server, command)
    if sys.stdin.isatty():
        how = "its environment" if spec.live else "the environment it starts with (not running)"
        console.print(f"[dim]{server}: {' '.join(spec.argv)} in {how}, in {spec.cwd}[/]", highlight=False)
    replace_process(spec)


def down_command(
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for the supervisor before killing.")
    ] = None,
    run_dir: RunDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Stop the fleet: SIGTERM, servers drain in-flight requests, SIGKILL after the timeout."""
    with console.status("stopping the fleet"):
        state, left = ops.down(_run_dir(config, run_dir), timeout)
    if left:
        console.print(f"stopped {len(left)} leftover process(es): {', '.join(p.name for p in left)}")
    console.print(f"fleet {state.phase}")


def router_command(
    plan: Annotated[Path, typer.Option(help="Plan file (which server holds which model).")],
    endpoints_file: Annotated[
        Path,
        typer.Option(
            "--endpoints",
            "--server-map",  # its older name, still accepted
            help='Endpoints file {"format_version":1,"servers":{name: url}} (endpoints.json).',
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8100,
    upstream_timeout: Annotated[
        float | None,
        typer.Option(
            help="Ceiling of the deadline per forwarded call, s (default: router.upstream_timeout_s)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    config: ConfigOpt = None,
) -> None:
    """Run the model-aware router in front of a plan's servers (what `up` starts, and the Kubernetes pod).
    Deadlines, ejection and probes: the router settings (`router` in the config file, INFERPACK_ROUTER__*).

    SIGHUP makes it re-read both files and route by them (`inferpack up --plan` on a running fleet).
    It takes the servers' auth settings (`server.auth` of the config file, INFERPACK_SERVER__AUTH__*) and
    checks tokens and scopes itself (docs/security.md)."""
    from inferpack.endpoints import load_endpoints
    from inferpack.fleet.placementfiles import PlacementFiles
    from inferpack.fleet.router import serve_router

    loaded = load_plan(plan)
    endpoints = load_endpoints(endpoints_file)
    endpoints.check_covers(loaded)
    overrides = _drop_none({"upstream_timeout_s": upstream_timeout})
    settings = load_settings(config, {"router": overrides} if overrides else None)
    serve_router(
        loaded,
        endpoints.servers,
        host=host,
        port=port,
        settings=settings.router,
        auth=settings.server.auth,
        log_level=log_level,
        files=PlacementFiles(plan, endpoints_file),
    )


@fleet_app.command("supervise")
def supervise_command(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory prepared by `up`.")],
    adopt: Annotated[
        bool,
        typer.Option("--adopt", help="Take over the live processes a dead supervisor left (not restart)."),
    ] = False,
) -> None:
    """Run and supervise the fleet of a run directory (started by `inferpack up`)."""
    from inferpack.fleet.apply import attach
    from inferpack.fleet.supervisor import supervise

    sys.exit(supervise(run_dir, attach, adopt=adopt))


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE as a flag would set it, e.g. fleet.servers=4."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Print every effective setting and where it came from (default, file, env or flag)."""
    from inferpack.fleet.configview import parse_assignments, show

    path, rows = show(config, parse_assignments(set_ or []))
    if as_json:
        print(json.dumps({"config_file": str(path) if path else None, "settings": rows}, indent=1))
        return
    table = Table(title=f"effective settings (config file: {path or 'none'})")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    colour = {"default": "dim", "file": "cyan", "env": "yellow", "flag": "green"}
    for key, value, source in rows:
        table.add_row(key, escape(json.dumps(value)), f"[{colour[source]}]{source}[/]")
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the fleet's commands to the main `inferpack` app."""
    from inferpack.fleet.demo import demo_command

    app.command("up")(up_command)
    app.command("status")(status_command)
    app.command("logs")(logs_command)
    app.command("down")(down_command)
    app.command("restart")(restart_command)
    app.command("exec")(exec_command)
    app.command("router")(router_command)
    app.command("demo")(demo_command)
    app.add_typer(config_app, name="config")
    app.add_typer(fleet_app, name="fleet")
