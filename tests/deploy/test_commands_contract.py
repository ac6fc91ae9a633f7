"""The command lines the manifests run are accepted by the real `inferpack` CLI (parsed, not run):
the server, the router, the load-test worker and the pre-pull check."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from inferpack.cli import app
from inferpack.deploy.options import RenderOptions
from inferpack.deploy.render import render_bench_job, render_manifests
from inferpack.plan import Plan
from inferpack.settings import ServerSettings


def parse(argv: list[str]) -> Any:
    """Resolve `inferpack <sub> ... --flags` to its command and parse the flags (raises on unknown ones)."""
    assert argv[0] == "inferpack"
    # typer ships its own copy of click, so groups are recognised by what they can do.
    command: Any = typer.main.get_command(app)
    words = argv[1:]
    while hasattr(command, "get_command"):
        with command.make_context("inferpack", [words[0]], resilient_parsing=True) as ctx:
            sub = command.get_command(ctx, words[0])
        assert sub is not None, f"no command {words[0]!r} in {argv}"
        command, words = sub, words[1:]
    return command.make_context(command.name or "", list(words))


def commands(plan: Plan) -> dict[str, list[str]]:
    options = RenderOptions(bench_args=("--duration", "60", "--users", "8", "--traffic", "zipf"))
    found: dict[str, list[str]] = {}
    for m in [*render_manifests(plan, ServerSettings(), options), render_bench_job(options)]:
        spec = m.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            if c.get("command", [""])[0] == "inferpack":
                found.setdefault(c["command"][1], c["command"])
    return found


def test_every_rendered_inferpack_command_parses(plan: Plan) -> None:
    found = commands(plan)
    assert sorted(found) == ["bench", "router", "serve", "version"]
    for argv in found.values():
        ctx = parse(argv)
        assert ctx.command.name in ("serve", "router", "worker", "version")
    serve = parse(found["serve"]).params
    assert serve["repository"] == "s3://models-bucket/prod/repo" and serve["host"] == "0.0.0.0"
    router = parse(found["router"]).params
    assert str(router["endpoints_file"]).endswith("endpoints.json") and router["port"] == 8080
    worker = parse(found["bench"]).params
    assert worker["out"] == "-" and worker["url"] == ["http://router.inferpack.svc.cluster.local:8080"]


def test_older_flag_names_still_parse() -> None:
    """`--server-map` was the endpoints file's flag before `--endpoints`; deployed manifests may use it."""
    router = parse(["inferpack", "router", "--plan", "p.json", "--server-map", "e.json"]).params
    assert str(router["endpoints_file"]) == "e.json"
    argv = ["inferpack", "bench", "worker", "--plan", "p.json", "--server-map", "e.json"]
    assert str(parse(argv).params["endpoints"]) == "e.json"


def test_the_parser_rejects_an_unknown_flag() -> None:
    """The contract check is real: a flag the CLI lacks fails."""
    with pytest.raises(Exception, match="No such option"):
        parse(["inferpack", "serve", "--no-such-flag", "1"])


def test_the_seq_mode_worker_command_parses() -> None:
    """`seq` in the cluster: the worker takes the endpoints file (per-server Services) instead of a URL."""
    job = render_bench_job(RenderOptions(bench_namespace="loadtest", bench_args=("--mode", "seq")))
    argv = job["spec"]["template"]["spec"]["containers"][0]["command"]
    params = parse(argv).params
    assert params["mode"] == "seq" and not params["url"]
    # the endpoints file, whatever the option's parameter is called
    assert "/etc/inferpack/placement/endpoints.json" in {str(v) for v in params.values()}
    assert str(params["plan"]) == "/etc/inferpack/placement/plan.json.gz"


def test_every_rendered_server_runs_on_its_groups_processor(plan: Plan) -> None:
    """The plan's processor reaches the server: `--device` per group, parsed by the real CLI."""
    expected = {s.name: g.target for g in plan.groups for s in g.servers}
    seen = {}
    for m in render_manifests(plan, ServerSettings(), RenderOptions()):
        if (
            m["kind"] != "Deployment"
            or m["metadata"]["labels"].get("app.kubernetes.io/component") != "server"
        ):
            continue
        pod = m["spec"]["template"]
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "server"]
        seen[pod["metadata"]["labels"]["inferpack.dev/server"]] = parse(container["command"]).params["device"]
    assert seen == expected and {"cpu", "cuda", "neuron"} <= set(seen.values())
