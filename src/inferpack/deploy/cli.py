"""`inferpack k8s ...`, `inferpack eks ...` and `inferpack image ...`: parse flags, call one function of
`inferpack.deploy`, print what happened. Every kubectl command is printed before it runs."""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from inferpack.deploy.eks import ClusterOptions, render_eksctl_config, render_karpenter_node_pools
from inferpack.deploy.image import (
    build_commands,
    find_builder,
    push_commands,
    push_image,
    push_script,
    run_streamed,
)
from inferpack.deploy.kubectl import (
    Kubectl,
    KubectlError,
    run,
    run_attached,
    secret_copy,
    wait_for_job,
)
from inferpack.deploy.kustomize import (
    HEADER,
    rendered_bench_namespace,
    rendered_bench_secret,
    set_start_at,
    write_base,
)
from inferpack.deploy.options import INSTANCE_TYPE_LABEL, HpaOptions, RenderOptions
from inferpack.deploy.render import (
    local_repository_note,
    render_bench_job,
    render_bench_namespace,
    render_idle_bench_job,
    render_manifests,
    start_at_patch,
)
from inferpack.deploy.rollout import base_plan, base_resources, rollout_waves, summarise_waves
from inferpack.errors import ConfigError
from inferpack.plan import Plan, load_plan
from inferpack.planner.allocatable import DAEMONSET_CPU, DAEMONSET_MEMORY_MB, node_allocatable
from inferpack.planner.catalog import load_catalog
from inferpack.settings import DEFAULT_IMAGE, load_settings

k8s_app = typer.Typer(help="Render, apply and load-test a plan on Kubernetes (EKS).", no_args_is_help=True)
eks_app = typer.Typer(help="Amazon EKS cluster configs for a plan (eksctl, Karpenter).", no_args_is_help=True)
image_app = typer.Typer(help="Build the inferpack container image.", no_args_is_help=True)
console = Console(stderr=True)

PlanOpt = Annotated[Path, typer.Option("--plan", help="Plan file (JSON) from `inferpack plan`.")]
DirOpt = Annotated[Path, typer.Option("--dir", help="Folder written by `inferpack k8s render`.")]
NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", help="Kubernetes namespace.")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: current).")]
KubeconfigOpt = Annotated[Path | None, typer.Option("--kubeconfig", help="kubeconfig file.")]
KubectlOpt = Annotated[str, typer.Option("--kubectl", help="kubectl binary.")]
BenchNamespaceOpt = Annotated[
    str | None, typer.Option(help="Namespace of the load-test pods (default: --namespace).")
]
# `k8s exec` without a command: a login shell of the image (python:3.11-slim has bash).
DEFAULT_EXEC_COMMAND = ["bash"]


def _key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def _json_list(text: str | None, flag: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} must be a JSON list of strings: {exc}") from exc
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{flag} must be a non-empty JSON list of strings")
    return tuple(value)


@k8s_app.command("render")
def render(
    plan: PlanOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for the kustomize base.")] = Path("k8s"),
    image: Annotated[str | None, typer.Option(help="Container image (registry/name:tag).")] = None,
    cuda_image: Annotated[str | None, typer.Option(help="Image for cuda groups (default: --image).")] = None,
    neuron_image: Annotated[
        str | None, typer.Option(help="Image for neuron groups (default: --image).")
    ] = None,
    namespace: NamespaceOpt = "inferpack",
    repository: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix, or a path on the models PVC (default: plan's).")
    ] = None,
    role_arn: Annotated[
        str | None, typer.Option(help="IAM role for the ServiceAccount (IRSA, S3 read).")
    ] = None,
    s3_endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint for the servers.")
    ] = None,
    aws_region: Annotated[str | None, typer.Option(help="AWS_REGION for the servers.")] = None,
    router_replicas: Annotated[int, typer.Option(min=1, help="Router replicas (without --hpa).")] = 2,
    hpa: Annotated[bool, typer.Option("--hpa/--no-hpa", help="Autoscale the router on CPU.")] = False,
    hpa_max: Annotated[int, typer.Option(min=1, help="Most router replicas with --hpa.")] = 10,
    bench_workers: Annotated[int, typer.Option(min=1, help="Load-test Job workers (pods).")] = 4,
    bench_arg: Annotated[
        list[str] | None,
        typer.Option(help="Extra `bench worker` argument (repeatable; replaces --duration 60)."),
    ] = None,
    bench_command: Annotated[str | None, typer.Option(help="Whole worker command as a JSON list.")] = None,
    bench_namespace: Annotated[
        str | None, typer.Option(help="Run load tests in this namespace (default: --namespace).")
    ] = None,
    bench_instance_type: Annotated[
        str | None, typer.Option(help="Run load-test pods on nodes of this instance type only.")
    ] = None,
    bench_node_selector: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE node label for load-test pods (repeatable)."),
    ] = None,
    system_node_selector: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE node label for router (and load-test) pods (repeatable; replaces the default "
            "inferpack.dev/role=system + kubernetes.io/arch=amd64; `none`: no selector)."
        ),
    ] = None,
    bench_idle_timeout: Annotated[
        int, typer.Option(min=1, help="Seconds the idle test pod (`k8s bench --idle`) waits.")
    ] = 86400,
    router_command: Annotated[str | None, typer.Option(help="Whole router command as a JSON list.")] = None,
    prepull: Annotated[
        bool, typer.Option("--prepull/--no-prepull", help="Image pre-pull DaemonSets.")
    ] = True,
    auth_secret: Annotated[str | None, typer.Option(help="Secret with key `tokens` (bearer tokens).")] = None,
    admin_secret: Annotated[
        str | None,
        typer.Option(help="Secret with key `admin-token`: switches the repository API on (default: off)."),
    ] = None,
    metrics_namespace: Annotated[
        str | None, typer.Option(help="Namespace allowed to scrape servers.")
    ] = None,
    cache_size_mb: Annotated[
        int | None, typer.Option(help="Cap (MiB) of each server's S3 model cache (default: 2x its memory).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config (server and router settings).")
    ] = None,
) -> None:
    """Render a plan to a kustomize base (`kubectl kustomize DIR` builds it; patch it with overlays)."""
    the_plan = load_plan(plan)
    loaded = load_settings(config)
    settings = loaded.server
    defaults = RenderOptions()
    selector = _key_values(bench_node_selector, "--bench-node-selector")
    if bench_instance_type:
        selector[INSTANCE_TYPE_LABEL] = bench_instance_type
    system = defaults.system_node_selector
    if system_node_selector:
        system = (
            {}
            if system_node_selector == ["none"]
            else _key_values(system_node_selector, "--system-node-selector")
        )
    options = RenderOptions(
        system_node_selector=system,
        image=image or defaults.image,
        cuda_image=cuda_image,
        neuron_image=neuron_image,
        namespace=namespace,
        repository=repository,
        role_arn=role_arn,
        s3_endpoint_url=s3_endpoint_url,
        aws_region=aws_region,
        router_replicas=router_replicas,
        router_hpa=HpaOptions(min_replicas=router_replicas, max_replicas=max(hpa_max, router_replicas))
        if hpa
        else None,
        bench_workers=bench_workers,
        bench_args=tuple(bench_arg) if bench_arg else defaults.bench_args,
        bench_command=_json_list(bench_command, "--bench-command"),
        bench_namespace=bench_namespace,
        bench_node_selector=selector,
        bench_idle_seconds=bench_idle_timeout,
        router_command=_json_list(router_command, "--router-command"),
        prepull=prepull,
        auth_secret=auth_secret,
        admin_secret=admin_secret,
        metrics_namespace=metrics_namespace,
        model_cache_size_mb=cache_size_mb,
    )
    manifests = render_manifests(the_plan, settings, options, loaded.router)
    written = write_base(
        out,
        manifests,
        render_bench_job(options),
        render_bench_namespace(the_plan, options),
        render_idle_bench_job(options),
        start_at_patch(options),
    )
    if image is None:
        console.print(f"[yellow]note:[/] no --image given; using {options.image}, which no cluster can pull")
    local_note = local_repository_note(the_plan, settings, options)
    if local_note:
        console.print(f"[yellow]note:[/] {local_note}")
    console.print(
        f"{len(manifests)} objects for {len(the_plan.servers())} servers in {len(written)} files under {out}"
    )
    console.print(f"review: kubectl kustomize {out}    apply: inferpack k8s apply --dir {out}")


@k8s_app.command("profile-job")
def profile_job(
    instance_type: Annotated[
        str, typer.Option("--instance-type", help="One catalog type of the family to profile (c7g.xlarge).")
    ],
    repository: Annotated[
        str, typer.Option(help="s3://bucket/prefix, or a path on the models PVC, holding the models to time.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the Job here (default: stdout).")
    ] = None,
    image: Annotated[str | None, typer.Option(help="Container image (registry/name:tag).")] = None,
    namespace: NamespaceOpt = "inferpack",
    s3_endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint.")] = None,
    aws_region: Annotated[str | None, typer.Option(help="AWS_REGION for the pod.")] = None,
    profile_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra `inferpack profile` argument (repeatable), e.g. --profile-arg=--model-class "
            "--profile-arg=bert-base."
        ),
    ] = None,
    catalog: Annotated[
        list[Path] | None, typer.Option("--catalog", help="Catalog override file(s), applied in order.")
    ] = None,
) -> None:
    """Render a Job that runs `inferpack profile` on one node of an instance family (CPU families): its
    log is the profile file for `inferpack plan --profiles`. See docs/planner.md."""
    from inferpack.deploy.profilejob import profile_job_name, render_profile_job
    from inferpack.planner.problem import PlanOptions
    from inferpack.planner.solve import group_resources

    inst = load_catalog(catalog).get(instance_type)
    defaults = RenderOptions()
    options = RenderOptions(
        image=image or defaults.image,
        namespace=namespace,
        s3_endpoint_url=s3_endpoint_url,
        aws_region=aws_region,
    )
    job = render_profile_job(
        inst, group_resources(inst, PlanOptions()), repository, options, tuple(profile_arg or ())
    )
    text = yaml.safe_dump(job, sort_keys=False)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
    name = profile_job_name(inst.name)
    console.print(
        f"then: kubectl apply -f <the job>; kubectl -n {namespace} wait --for=condition=complete "
        f"job/{name} --timeout=30m; kubectl -n {namespace} logs job/{name} | sed -n '/^{{/,$p' "
        f"> {inst.family}.json"
    )


def _kubectl(
    namespace: str,
    context: str | None,
    kubeconfig: Path | None,
    binary: str,
    bench_namespace: str | None = None,
    directory: Path | None = None,
) -> Kubectl:
    if bench_namespace is None and directory is not None:
        bench_namespace = rendered_bench_namespace(directory)
    return Kubectl(
        namespace=namespace,
        context=context,
        kubeconfig=kubeconfig,
        binary=binary,
        bench_namespace=bench_namespace,
    )


def _check_dir(directory: Path) -> None:
    kust = directory / "kustomization.yaml"
    if not kust.is_file() or not kust.read_text().startswith(HEADER):
        raise ConfigError(
            f"{directory} holds no base rendered by inferpack", hint="run `inferpack k8s render`"
        )


@k8s_app.command("apply")
def apply(
    directory: DirOpt = Path("k8s"),
    namespace: NamespaceOpt = "inferpack",
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    kubectl: KubectlOpt = "kubectl",
    dry_run: Annotated[
        bool,
        typer.Option(help="Print the rollout plan (waves, models per wave) and its commands; run nothing."),
    ] = False,
    server_dry_run: Annotated[
        bool, typer.Option(help="Server-side dry run: the cluster validates the whole base, nothing changes.")
    ] = False,
) -> None:
    """Apply the rendered base: servers in waves (no two copies of a model restart together, each wave
    rolled out before the next), then the router; servers a re-plan removed are deleted."""
    _check_dir(directory)
    k = _kubectl(namespace, context, kubeconfig, kubectl)
    if server_dry_run:
        run(k.apply(directory, server_dry_run=True))
        return
    plan = base_plan(directory)
    waves = rollout_waves(plan)
    commands = k.apply(directory, resources=base_resources(directory), waves=waves)
    if dry_run:
        _print_rollout(plan, waves, commands)
        return
    run(commands)


def _print_rollout(plan: Plan, waves: list[list[str]], commands: list[list[str]]) -> None:
    out = Console()
    table = Table(title=f"rollout: {len(plan.servers())} servers in {len(waves)} waves")
    for col in ("wave", "servers", "models restarting", "models without a copy meanwhile"):
        table.add_column(col, justify="right" if col.startswith("models r") else "left")
    for i, wave in enumerate(summarise_waves(plan, waves), start=1):
        dark = ", ".join(wave.models_dark[:5]) + (" ..." if len(wave.models_dark) > 5 else "")
        table.add_row(str(i), ", ".join(wave.servers), str(wave.models_restarting), dark or "none")
    out.print(table)
    out.print("commands (each wave waits for its rollouts before the next):")
    for cmd in commands:
        out.print(shlex.join(cmd), markup=False, highlight=False, soft_wrap=True)


@k8s_app.command("status")
def status(
    server: Annotated[
        str | None, typer.Argument(help="One plan server: its objects, and its pod described.")
    ] = None,
    namespace: NamespaceOpt = "inferpack",
    bench_namespace: BenchNamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    kubectl: KubectlOpt = "kubectl",
) -> None:
    """Show workloads, pods (and their nodes), services, autoscalers and disruption budgets; with SERVER,
    that server's Deployment, Service and pod (described, with its events)."""
    run(_kubectl(namespace, context, kubeconfig, kubectl, bench_namespace).status(server))


@k8s_app.command("logs")
def logs(
    target: Annotated[
        str | None, typer.Argument(help="A plan server's name, `router` or `bench-INDEX`.")
    ] = None,
    server: Annotated[str | None, typer.Option(help="A plan server's name (same as TARGET).")] = None,
    component: Annotated[str, typer.Option(help="server, router, bench or prepull.")] = "server",
    tail: Annotated[int, typer.Option(help="Lines per pod.")] = 200,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new lines.")] = False,
    namespace: NamespaceOpt = "inferpack",
    bench_namespace: BenchNamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    kubectl: KubectlOpt = "kubectl",
) -> None:
    """Print recent logs of one pod (server, router, bench-INDEX) or of every pod of a component; -f
    follows them."""
    driver = _kubectl(namespace, context, kubeconfig, kubectl, bench_namespace)
    commands = driver.logs(server=target or server, component=component, tail=tail, follow=follow)
    if follow:
        raise typer.Exit(run_attached(commands[0]))
    run(commands)


@k8s_app.command("exec")
def exec_command(
    target: Annotated[str, typer.Argument(help="A plan server's name, `router` or `bench-INDEX`.")],
    command: Annotated[
        list[str] | None, typer.Argument(help="Command to run after `--` (default: bash).")
    ] = None,
    namespace: NamespaceOpt = "inferpack",
    bench_namespace: BenchNamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    kubectl: KubectlOpt = "kubectl",
) -> None:
    """A shell (or CMD) in a server's pod, the router, or a load-test pod: `k8s exec c7i-0 -- ls /tmp`.

    `bench-0` is the idle test pod of `k8s bench --idle` (or worker 0 of a running load test)."""
    driver = _kubectl(namespace, context, kubeconfig, kubectl, bench_namespace)
    pod = None
    if (lookup := driver.exec_pod_lookup(target)) is not None:
        found = run([lookup], capture=True)[0].split()
        if not found:
            raise KubectlError(
                f"no running pod for {target}",
                hint="start the idle test pod with `inferpack k8s bench --idle`",
            )
        pod = found[0]
    cmd = driver.exec(target, list(command or DEFAULT_EXEC_COMMAND), tty=sys.stdin.isatty(), pod=pod)
    raise typer.Exit(run_attached(cmd))


@k8s_app.command("delete")
def delete(
    directory: DirOpt = Path("k8s"),
    namespace: NamespaceOpt = "inferpack",
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    kubectl: KubectlOpt = "kubectl",
) -> None:
    """Delete the load-test Job and everything the base created (namespace included); to stop only the
    load tests, use `inferpack k8s bench --stop`."""
    _check_dir(directory)
    run(_kubectl(namespace, context, kubeconfig, kubectl, directory=directory).delete(directory))


@k8s_app.command("bench")
def bench(
    directory: DirOpt = Path("k8s"),
    timeout: Annotated[int, typer.Option(help="Seconds to wait for the Job.")] = 3600,
    start_delay: Annotated[
        float,
        typer.Option(min=0, help="Seconds from now to the workers' common start (time to schedule, pull)."),
    ] = 60.0,
    out: Annotated[Path | None, typer.Option(help="Also collect the merged result into this folder.")] = None,
    idle: Annotated[
        bool, typer.Option("--idle", help="Start one test pod that waits (then `k8s exec bench-0`).")
    ] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Only delete the load-test Job and its pods (or the idle pod).")
    ] = False,
    namespace: NamespaceOpt = "inferpack",
    bench_namespace: Annotated[
        str | None,
        typer.Option(
            help="Namespace of the load-test pods (default: the one rendered under --dir, else -n)."
        ),
    ] = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    kubectl: KubectlOpt = "kubectl",
) -> None:
    """Run the load-test Job (rendered under DIR/bench) to completion; with --out, collect its result.

    --idle starts the idle test pod instead (DIR/bench-idle), --stop removes whichever runs."""
    if idle and stop:
        raise ConfigError("use either --idle or --stop")
    rendered = directory if (directory / "kustomization.yaml").is_file() else None
    driver = _kubectl(namespace, context, kubeconfig, kubectl, bench_namespace, rendered)
    if stop:
        run([driver.bench_stop()])
        return
    _check_dir(directory)
    secret = rendered_bench_secret(directory)
    if secret is not None and driver.separate_bench_namespace:
        _copy_bench_secret(driver, secret)
    if idle:
        if not (directory / "bench-idle" / "kustomization.yaml").is_file():
            raise ConfigError(
                f"{directory} has no bench-idle/ folder", hint="render it again with `inferpack k8s render`"
            )
        run(driver.bench_idle(directory, timeout))
        console.print(
            "idle test pod running: `inferpack k8s exec bench-0`; remove it: `inferpack k8s bench --stop`"
        )
        return
    # One start time for all workers: pods scheduled and started at different moments wait until then.
    start_at = time.time() + start_delay
    if set_start_at(directory / "bench", start_at) is not None:
        console.print(f"workers start together at {start_at:.0f} (in {start_delay:g}s, --start-delay)")
    run(driver.bench(directory))
    # Polled, not `kubectl wait --for=condition=complete`: a failed Job stops the wait at once.
    wait_for_job(driver, timeout)
    if out is not None:
        _collect(driver, out)


def _copy_bench_secret(driver: Kubectl, name: str) -> None:
    """Load tests in their own namespace cannot mount the servers' token Secret: copy it there (again on
    every run, so a rotated token follows). The copy passes through a private temporary file."""
    assert driver.bench_namespace is not None
    (text,) = run([driver.get_secret(name)], capture=True)
    try:
        secret = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KubectlError(f"`kubectl get secret {name}` did not answer JSON ({exc})") from exc
    with tempfile.TemporaryDirectory(prefix="inferpack-secret-") as folder:
        path = Path(folder) / "secret.json"
        path.write_text(json.dumps(secret_copy(secret, driver.bench_namespace)))
        run([driver.apply_bench_file(path)], capture=True)
    console.print(f"copied Secret {name} to namespace {driver.bench_namespace} (the workers' token)")


def _collect(driver: Kubectl, out: Path) -> None:
    from inferpack.deploy.collect import collect as collect_results
    from inferpack.loadtest.display import result_tables

    merged, path = collect_results(driver, out)
    Console().print(result_tables(merged))
    console.print(f"merged result of {len(merged.workers)} workers: {path}")


@k8s_app.command("collect")
def collect(
    out: Annotated[Path, typer.Option(help="Folder for worker logs and the merged result.json.")] = Path(
        "k8s-bench"
    ),
    namespace: NamespaceOpt = "inferpack",
    bench_namespace: BenchNamespaceOpt = None,
    context: ContextOpt = None,
    kubeconfig: KubeconfigOpt = None,
    kubectl: KubectlOpt = "kubectl",
) -> None:
    """Fetch every load-test worker's log and merge their histograms exactly into one result."""
    _collect(_kubectl(namespace, context, kubeconfig, kubectl, bench_namespace), out)


@eks_app.command("cluster-config")
def cluster_config(
    plan: PlanOpt,
    out: Annotated[Path | None, typer.Option(help="Write here (default: stdout).")] = None,
    name: Annotated[str, typer.Option(help="Cluster name.")] = "inferpack",
    region: Annotated[str, typer.Option(help="AWS region.")] = "us-east-1",
    version: Annotated[str, typer.Option("--k8s-version", help="Kubernetes version.")] = "1.33",
    karpenter: Annotated[
        Path | None, typer.Option(help="Also write Karpenter NodePools for the same mix to this file.")
    ] = None,
    bench_instance_type: Annotated[
        str | None,
        typer.Option(help="A node group of this type for load tests (label inferpack.dev/role=bench)."),
    ] = None,
    bench_nodes: Annotated[int, typer.Option(min=1, help="Nodes of the load-test node group.")] = 1,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace of the servers' IRSA ServiceAccount.")
    ] = "inferpack",
    cache_size_mb: Annotated[
        int | None,
        typer.Option(help="The servers' S3 cache cap as given to `k8s render` (sizes root volumes)."),
    ] = None,
    system_instance_type: Annotated[
        str, typer.Option(help="Instance type of the system node group (router, load tests, add-ons).")
    ] = "m6i.xlarge",
    system_nodes: Annotated[
        int | None, typer.Option(min=1, help="System nodes (default: sized from what they must hold).")
    ] = None,
    router_replicas: Annotated[
        int, typer.Option(min=1, help="Most router replicas (`k8s render`'s --router-replicas or --hpa-max).")
    ] = 2,
    bench_workers: Annotated[
        int, typer.Option(min=1, help="Load-test workers (`k8s render --bench-workers`).")
    ] = 4,
) -> None:
    """Render an eksctl ClusterConfig: one managed node group per instance type of the plan."""
    the_plan = load_plan(plan)
    options = ClusterOptions(
        name=name,
        namespace=namespace,
        region=region,
        kubernetes_version=version,
        bench_instance_type=bench_instance_type,
        bench_nodes=bench_nodes,
        cache_size_mb=cache_size_mb,
        system_instance_type=system_instance_type,
        system_nodes=system_nodes,
        router_replicas=router_replicas,
        bench_workers=bench_workers,
        system_node_share=_node_share(system_instance_type),
    )
    if options.system_node_share is None and system_nodes is None:
        console.print(
            f"[yellow]note:[/] {system_instance_type} is not in the instance catalog: "
            "the system group gets 2 nodes; size it with --system-nodes"
        )
    text = yaml.safe_dump(render_eksctl_config(the_plan, options), sort_keys=False)
    if out is None:
        print(text, end="")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"eksctl config: {out}  (create: eksctl create cluster -f {out})")
    if karpenter is not None:
        catalog = load_catalog()
        sizes = {n: (catalog.get(n).vcpus, catalog.get(n).memory_mb) for n in catalog.names()}
        pools = render_karpenter_node_pools(the_plan, options, sizes)
        karpenter.parent.mkdir(parents=True, exist_ok=True)
        karpenter.write_text("".join("---\n" + yaml.safe_dump(p, sort_keys=False) for p in pools))
        console.print(f"Karpenter NodePools and EC2NodeClasses: {karpenter}")


def _node_share(instance_type: str) -> tuple[float, float] | None:
    """What one node of the type gives pods (allocatable less the DaemonSet allowance), from the catalog."""
    catalog = load_catalog()
    if instance_type not in catalog.names():
        return None
    node = node_allocatable(catalog.get(instance_type))
    return node.cpu - DAEMONSET_CPU, node.memory_mb - DAEMONSET_MEMORY_MB


@image_app.command("build")
def image_build(
    tag: Annotated[
        str, typer.Option(help="Image name:tag (the default is the image `up --runtime podman` runs).")
    ] = DEFAULT_IMAGE,
    variant: Annotated[str, typer.Option(help="cpu, cuda or neuron.")] = "cpu",
    platform: Annotated[str | None, typer.Option(help="linux/amd64 or linux/arm64 (Graviton).")] = None,
    base_image: Annotated[str | None, typer.Option(help="Override the Containerfile's base image.")] = None,
    context_dir: Annotated[
        Path, typer.Option("--context-dir", help="Build context (the source tree).")
    ] = Path("."),
    builder: Annotated[
        str | None,
        typer.Option(help="podman, docker or buildah (default: the first whose `info` works)."),
    ] = None,
    build_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--build-arg", help="KEY=VALUE passed to the build (repeatable), e.g. TORCH_CPU_INDEX=..."
        ),
    ] = None,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume",
            "-v",
            help="SRC:DST[:ro] mounted into the build's RUN steps (repeatable; podman/buildah only): "
            "a proxy CA, a pip config, a wheel folder.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the command only.")] = False,
) -> None:
    """Build the server image with podman, docker or buildah (the first that works), its output streamed."""
    tool = builder or ("podman" if dry_run else find_builder())
    cmd = build_commands(
        tool,
        tag=tag,
        variant=variant,
        platform=platform,
        base_image=base_image,
        context=context_dir,
        build_args=build_arg or (),
        volumes=volume or (),
    )
    if dry_run:
        print(" ".join(cmd))
        return
    run_streamed(cmd)


@image_app.command("push")
def image_push(
    image: Annotated[str, typer.Argument(help="The local image (name:tag), e.g. inferpack:0.1.0-cpu.")],
    registry: Annotated[str, typer.Option(help="The ECR registry: ACCOUNT.dkr.ecr.REGION.amazonaws.com.")],
    region: Annotated[str | None, typer.Option(help="AWS region (default: the registry's).")] = None,
    builder: Annotated[
        str | None, typer.Option(help="podman, docker or buildah (default: the first whose `info` works).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the commands only.")] = False,
) -> None:
    """Push a local image to ECR: create the repository (if missing), log in, tag, push."""
    tool = builder or ("podman" if dry_run else find_builder())
    if dry_run:
        print(push_script(push_commands(image, registry, tool=tool, region=region)))
        return
    remote = push_image(image, registry, tool=tool, region=region)
    console.print(f"pushed {remote}")
