"""A plan is deployed as it was costed: for every instance family of the catalog, the servers that
`inferpack k8s render` and `inferpack up` start run exactly the execution the planner costed (device, dtype,
engine, inference threads, intra-op threads, batching limits, whether they trace their models) and the
plan's latency objective, and the server accepts that device and dtype."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.deploy.test_commands_contract import parse
from tests.planner.test_execution_keys import mixed_plan
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.eks import render_eksctl_config
from inferpack.deploy.options import INSTANCE_TYPE_LABEL, RenderOptions
from inferpack.deploy.render import render_manifests
from inferpack.errors import ConfigError
from inferpack.fleet.ops import server_launch
from inferpack.plan import Execution, Plan, ServerGroup, load_plan, save_plan
from inferpack.planner.catalog import load_catalog
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem, point_allowed
from inferpack.planner.profiles import OperatingPoint, ProfileSet, load_profiles
from inferpack.planner.solve import group_names, solve, to_plan
from inferpack.processes import child_env, server_command
from inferpack.runtime.devices import CPU_DEVICE, CudaDevice, ResolvedDevice, check_dtype
from inferpack.runtime.registry import traces_after
from inferpack.settings import ServerSettings, load_settings

FAMILIES = sorted({inst.family for inst in load_catalog().instances})
# Compute capability of the catalog's GPUs (NVIDIA's tables), to run the server's own dtype check.
CAPABILITY = {"nvidia-t4": (7, 5), "nvidia-a10g": (8, 6)}
SLO_MS = 150.0  # the plans' P90 objective (a percentile: never the servers' deadline)


def family_plan(
    family: str, tmp_path: Path, profiles: ProfileSet | None = None
) -> tuple[Plan, dict[str, Execution]]:
    """The plan of eight bert-base models on one family, read back from its file, and per group (one
    instance type at one execution key) the execution the planner costed (from the problem's choices,
    not from the plan)."""
    models = [ModelDemand(f"m-{i}", 460.0, 1.0 + i) for i in range(8)]
    options = PlanOptions(instance_types=[f"{family}.*"], slo_p90_ms=SLO_MS)
    problem = build_problem(models, load_catalog(), profiles or load_profiles(), options)
    solution = solve(problem, method="heuristic", with_naive=False)
    costed = {}
    names = group_names(problem, solution.servers)  # column -> the name of its group in the plan
    for (_, t), choice in problem.choices.items():
        if t not in names:
            continue
        inst = problem.types[t]
        costed[names[t]] = Execution(
            device=inst.target,
            dtype=choice.point.dtype,
            inference_threads=choice.workers,
            intra_op_threads=choice.point.threads,
            max_batch_size=choice.point.batch_size,
            engine=choice.point.engine,
            traced=choice.point.traced,
        )
    path = tmp_path / "plan.json"
    save_plan(to_plan(problem, solution, options, repository="s3://bucket/repo"), path)
    return load_plan(path), costed


def costed_fields(ex: Execution) -> dict[str, Any]:
    return {
        "device": ex.device,
        "dtype": ex.dtype,
        "engine": ex.engine,
        "inference_threads": ex.inference_threads,
        "intra_op_threads": ex.intra_op_threads,
        "max_batch_size": ex.max_batch_size,
        "max_batch_latency_ms": 0.0,  # no objective: the plan costed batches up to the size
        "max_wait_ms": ex.max_wait_ms,
        "traces": ex.traced,  # the servers trace their models exactly where the plan costed graphs
    }


def traces(settings: ServerSettings, device: str) -> bool:
    """Whether a server with these settings on `device` traces its models (the registry's own rule)."""
    return traces_after(settings, "cpu" if device == "cpu" else "accelerator") > 0


def deployed_fields(ex: Execution) -> dict[str, Any]:
    """What a server of a group with execution `ex` must run: the costed fields, and no latency objective
    (the plan's P90 objective would become every request's deadline: `Plan.server_objective_ms`)."""
    return {**costed_fields(ex), "latency_objective_ms": None}


def server_device(group: ServerGroup) -> ResolvedDevice:
    """The device a server of this group resolves to on its node, for the server's dtype check."""
    if group.target == "cpu":
        return CPU_DEVICE
    if group.target == "neuron":
        return ResolvedDevice(requested="neuron", name="neuron", kind="neuron", detail="", neuron_cores=2)
    cap = CAPABILITY[load_catalog().get(group.instance_type).accelerator or ""]
    gpu = CudaDevice(index=0, name=group.instance_type, capability=cap, total_bytes=2**34, free_bytes=2**34)
    return ResolvedDevice(requested="cuda", name="cuda", kind="cuda", detail="", cuda=(gpu,))


def rendered_settings(manifest: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The settings the rendered server container starts with: its INFERPACK_* env through the real
    settings loader, and its command line through the real CLI parser."""
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    with monkeypatch.context() as m:
        for var in container["env"]:
            if "value" in var and var["name"].startswith("INFERPACK_SERVER__"):
                m.setenv(var["name"], var["value"])
        server = load_settings(None).server
    env = {v["name"]: v.get("value") for v in container["env"]}
    params = parse(container["command"]).params
    return {
        "device": params["device"],
        "dtype": server.dtype,
        "engine": server.engine,
        "inference_threads": server.inference_threads,
        "intra_op_threads": server.intra_op_threads,
        "max_batch_size": server.batching.max_batch_size,
        "max_batch_latency_ms": server.batching.max_batch_latency_ms,
        "max_wait_ms": server.batching.max_wait_ms,
        "latency_objective_ms": server.batching.latency_objective_ms,
        "traces": traces(server, params["device"]),
        "omp": int(env["OMP_NUM_THREADS"] or 0),
    }


def check_deployed_as_costed(
    plan: Plan, costed: dict[str, Execution], family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every server of `plan`, rendered for Kubernetes and started by the local fleet, runs the execution
    the planner costed for its group (instance type and execution key) and the plan's latency objective."""
    manifests = {
        m["metadata"]["name"]: m
        for m in render_manifests(plan, load_settings(None).server, RenderOptions())
        if m["kind"] == "Deployment"
    }
    for group in plan.groups:
        ex = group.execution
        assert ex is not None and group.instance_type.startswith(f"{family}.")
        assert costed_fields(ex) == costed_fields(costed[group.name])
        want = deployed_fields(ex)
        # the server accepts this device and dtype on this hardware (its own start-up check)
        check_dtype(ex.dtype, server_device(group))
        for server in group.servers:
            k8s = rendered_settings(manifests[f"srv-{server.name}"], monkeypatch)
            assert k8s.pop("omp") == ex.intra_op_threads
            assert k8s == want, group.instance_type
            # the local fleet, on a host that has the group's device
            launch = server_launch(
                server.name, 9000, server.models, group, {group.name: ex.device}, 1, 0,
                objective_ms=plan.server_objective_ms(ServerSettings()),
            )  # fmt: skip
            argv = server_command(
                repository="repo",
                models=launch.models,
                port=launch.port,
                threads=launch.threads,
                device=launch.device,
                execution=launch.execution,
                latency_objective_ms=launch.latency_objective_ms,
            )
            local = parse(["inferpack", *argv[argv.index("serve") :]]).params
            got = {
                "device": local["device"],
                "dtype": local["dtype"],
                "engine": local["engine"],
                "inference_threads": local["threads"],
                "intra_op_threads": local["intra_op_threads"],
                "max_batch_size": local["max_batch_size"],
                "max_batch_latency_ms": local["max_batch_latency_ms"],
                "max_wait_ms": local["max_wait_ms"],
                "latency_objective_ms": local["latency_objective_ms"],
                "traces": traces(served_from(local), local["device"]),
            }
            assert got == want, group.instance_type
            assert child_env(launch.threads, ex.intra_op_threads)["OMP_NUM_THREADS"] == str(
                ex.intra_op_threads
            )


def served_from(params: dict[str, Any]) -> ServerSettings:
    """The server settings a parsed `serve` command line gives (the fields tracing depends on; an absent
    flag keeps the default)."""
    flags = {"engine": params["engine"], "trace_after_batches": params["trace_after_batches"]}
    return ServerSettings.model_validate({k: v for k, v in flags.items() if v is not None})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_deployed_as_it_was_costed(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./inferpack.toml in the way of the settings loader
    plan, costed = family_plan(family, tmp_path)
    assert plan.format_version == 2 and plan.groups and plan.slo_p90_ms == SLO_MS
    check_deployed_as_costed(plan, costed, family, monkeypatch)


def with_onnx_points(profiles: ProfileSet, instance_type: str, speedup: float) -> ProfileSet:
    """`profiles` plus, for bert-base on `instance_type`'s profile, every fp32 point measured again on
    ONNX Runtime `speedup` times faster (a later profile wins for the same instance types)."""
    prof = profiles.lookup("bert-base", instance_type)
    assert prof is not None
    onnx = [pt.scaled(1 / speedup, engine="onnxruntime") for pt in prof.points if pt.dtype == "fp32"]
    both = prof.model_copy(update={"points": [*prof.points, *onnx]})
    return profiles.model_copy(update={"profiles": [*profiles.profiles, both]})


def test_a_plan_costed_on_onnx_runtime_is_served_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Points measured on ONNX Runtime (faster here) win the plan; its servers run onnxruntime, fp32, in
    the pods and the local fleet alike. Slower ONNX points leave the plan on eager."""
    monkeypatch.chdir(tmp_path)
    plan, costed = family_plan("c6i", tmp_path, with_onnx_points(load_profiles(), "c6i.2xlarge", 1.5))
    assert {(g.execution.engine, g.execution.dtype) for g in plan.groups if g.execution} == {
        ("onnxruntime", "fp32")
    }
    check_deployed_as_costed(plan, costed, "c6i", monkeypatch)
    slower, _ = family_plan("c6i", tmp_path, with_onnx_points(load_profiles(), "c6i.2xlarge", 0.5))
    assert {g.execution.engine for g in slower.groups if g.execution} == {"eager"}


def with_traced_points(profiles: ProfileSet, instance_type: str, speedup: float) -> ProfileSet:
    """`profiles` plus, for bert-base on `instance_type`'s profile, every point measured again on its
    traced graph `speedup` times faster, each graph costing 30 MB per model."""
    prof = profiles.lookup("bert-base", instance_type)
    assert prof is not None
    graphs = [pt.scaled(1 / speedup, traced=True) for pt in prof.points if pt.engine == "eager"]
    traced_mb = dict.fromkeys({pt.dtype for pt in graphs}, 30.0)
    both = prof.model_copy(update={"points": [*prof.points, *graphs], "traced_mb": traced_mb})
    return profiles.model_copy(update={"profiles": [*profiles.profiles, both]})


def test_a_plan_costed_on_traced_graphs_makes_its_servers_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traced points (faster here) win the plan; its servers trace their models, in the pods and the local
    fleet alike (and the eager plans of every other test never do)."""
    monkeypatch.chdir(tmp_path)
    plan, costed = family_plan("c6i", tmp_path, with_traced_points(load_profiles(), "c6i.2xlarge", 1.5))
    assert {g.execution.traced for g in plan.groups if g.execution} == {True}
    check_deployed_as_costed(plan, costed, "c6i", monkeypatch)


def test_two_keys_on_one_instance_type_deploy_as_two_groups_each_as_costed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan that runs onnxruntime servers for hot models and eager bf16 servers for the cold tail on
    one instance type (tests/planner/test_execution_keys.py): each group's servers are rendered and
    started with their own group's execution, and the EKS node group counts both groups' servers."""
    monkeypatch.chdir(tmp_path)
    problem, solution, plan = mixed_plan()
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    plan = load_plan(path)
    names = group_names(problem, solution.servers)
    costed = {
        names[t]: Execution(
            device="cpu",
            dtype=choice.point.dtype,
            inference_threads=choice.workers,
            intra_op_threads=choice.point.threads,
            max_batch_size=choice.point.batch_size,
            engine=choice.point.engine,
            traced=choice.point.traced,
        )
        for (_, t), choice in problem.choices.items()
        if t in names
    }
    assert len(plan.groups) == 2 and {g.execution.engine for g in plan.groups if g.execution} == {
        "onnxruntime",
        "eager",
    }
    check_deployed_as_costed(plan, costed, "box", monkeypatch)
    # one EKS node group for the type, sized for both groups' servers, whose taint both tolerate
    (nodes,) = [
        g for g in render_eksctl_config(plan)["managedNodeGroups"] if g["instanceType"] == "box.2xlarge"
    ]
    assert nodes["desiredCapacity"] == len(plan.servers())
    for manifest in render_manifests(plan, load_settings(None).server, RenderOptions()):
        if manifest["kind"] == "Deployment" and manifest["metadata"]["name"].startswith("srv-"):
            spec = manifest["spec"]["template"]["spec"]
            assert spec["nodeSelector"][INSTANCE_TYPE_LABEL] == "box.2xlarge"
            (taint,) = nodes["taints"]
            assert {**taint, "operator": "Equal"} in spec["tolerations"]


def test_onnx_points_are_never_costed_where_the_server_cannot_run_them() -> None:
    """ONNX Runtime computes fp32 on CPUs (runtime/engines.py): such points on a GPU type, or in bf16,
    are not the planner's to choose."""
    catalog, options = load_catalog(), PlanOptions()
    point = OperatingPoint(latency_ms=10.0, engine="onnxruntime")
    assert point_allowed(catalog.get("c6i.2xlarge"), point, None, options)
    assert not point_allowed(catalog.get("g5.xlarge"), point, None, options)
    bf16 = point.model_copy(update={"dtype": "bf16"})
    assert not point_allowed(catalog.get("c6i.2xlarge"), bf16, None, options)
    assert point_allowed(
        catalog.get("c6i.2xlarge"), bf16.model_copy(update={"engine": "eager"}), None, options
    )


def test_an_execution_the_server_would_refuse_is_refused_in_the_plan() -> None:
    base = {
        "device": "cpu",
        "dtype": "fp32",
        "inference_threads": 1,
        "intra_op_threads": 1,
        "max_batch_size": 1,
    }
    assert Execution.model_validate(base).engine == "eager"  # plans before the field: eager profiles
    assert (
        Execution.model_validate(base | {"engine": "onnxruntime"}).server_fields()["engine"] == "onnxruntime"
    )
    with pytest.raises(ValueError, match="onnxruntime computes fp32 on the CPU"):
        Execution.model_validate(base | {"engine": "onnxruntime", "dtype": "bf16"})
    with pytest.raises(ValueError, match="onnxruntime computes fp32 on the CPU"):
        Execution.model_validate(base | {"engine": "onnxruntime", "device": "cuda"})


def test_cpu_groups_use_physical_cores_and_meet_the_objective_at_their_point(tmp_path: Path) -> None:
    plan, _ = family_plan("c6i", tmp_path)
    catalog = load_catalog()
    for group in plan.groups:
        ex = group.execution
        assert ex is not None and ex.latency_ms is not None
        cores = catalog.get(group.instance_type).physical_cores
        assert ex.inference_threads * ex.intra_op_threads <= min(cores, group.resources.cpu)
        assert ex.latency_ms <= 150.0  # never the 1-thread point that cannot meet the objective
        assert ex.profile_source


def test_a_fallen_back_group_runs_with_cpu_defaults_not_the_gpu_settings() -> None:
    group = ServerGroup.model_validate(
        {
            "name": "g5",
            "instance_type": "g5.xlarge",
            "target": "cuda",
            "resources": {"cpu": 3, "memory_mb": 14000, "accelerators": 1},
            "execution": {
                "device": "cuda",
                "dtype": "fp16",
                "inference_threads": 1,
                "intra_op_threads": 1,
                "max_batch_size": 8,
            },
            "servers": [{"name": "g5-0", "models": ["a"]}],
        }
    )
    launch = server_launch("g5-0", 9000, ["a"], group, {"g5": "cpu"}, 2, 0, objective_ms=100.0)
    assert launch.execution is None and launch.device == "cpu" and launch.threads == 2
    # nor the objective the plan sized for the GPU: on the CPU it would shed most requests
    assert launch.latency_objective_ms is None
    here = server_launch("g5-0", 9000, ["a"], group, {"g5": "cuda"}, 2, 0, objective_ms=100.0)
    assert here.latency_objective_ms == 100.0 and here.execution is not None


def test_format_1_plans_still_load_and_a_format_1_execution_is_refused(tmp_path: Path) -> None:
    old = {
        "format_version": 1,
        "created_by": "milp",
        "groups": [
            {
                "name": "c6i",
                "instance_type": "c6i.2xlarge",
                "resources": {"cpu": 7.5, "memory_mb": 14000},
                "servers": [{"name": "c6i-0", "models": ["a"]}],
            }
        ],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    plan = load_plan(path)
    assert plan.format_version == 1 and plan.groups[0].execution is None
    old["groups"][0]["execution"] = {  # type: ignore[index]
        "device": "cpu",
        "dtype": "fp32",
        "inference_threads": 1,
        "intra_op_threads": 4,
        "max_batch_size": 1,
    }
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="format_version 1 plans have no 'execution'"):
        load_plan(path)


def test_an_execution_must_match_its_group_target() -> None:
    base: dict[str, Any] = {
        "name": "c6i",
        "resources": {"cpu": 4, "memory_mb": 8000},
        "servers": [],
        "execution": {"device": "cuda", "dtype": "fp32", "inference_threads": 1, "intra_op_threads": 1,
                      "max_batch_size": 1},
    }  # fmt: skip
    with pytest.raises(ValueError, match="differs from target"):
        ServerGroup.model_validate(base)
    base["execution"] |= {"device": "cpu", "dtype": "fp16"}
    with pytest.raises(ValueError, match="fp16 is computed on GPUs only"):
        ServerGroup.model_validate(base)


def test_serve_turns_the_execution_flags_into_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local fleet's `serve` flags reach the server's settings (the run step is replaced by a recorder:
    what is checked is the CLI's mapping, the server itself starts in the fleet's end-to-end tests)."""
    monkeypatch.chdir(tmp_path)
    seen: list[ServerSettings] = []
    monkeypatch.setattr("inferpack.server.run.serve", lambda settings, **_: seen.append(settings))
    ex = Execution(device="cpu", dtype="bf16", inference_threads=3, intra_op_threads=2, max_batch_size=4)
    argv = server_command(
        repository="repo", models=["a"], port=9000, threads=None, execution=ex, latency_objective_ms=123.25
    )
    result = CliRunner().invoke(app, argv[argv.index("serve") :])
    assert result.exit_code == 0, result.output
    got = seen[0]
    assert (got.device, got.dtype, got.inference_threads, got.intra_op_threads) == ("cpu", "bf16", 3, 2)
    assert (got.batching.max_batch_size, got.batching.max_wait_ms) == (4, 0.0)
    assert got.batching.max_batch_latency_ms == 0.0  # the plan's batch size, not an objective it did not cost
    assert got.engine == "eager" and got.batching.latency_objective_ms == 123.25


def test_plan_and_profile_files_name_the_engine_only_when_it_is_not_eager(tmp_path: Path) -> None:
    """Readers from before the field reject unknown fields: an eager plan or profile file stays readable by
    them (it runs what it says there), one that needs onnxruntime is refused there, not run on eager."""
    plan, _ = family_plan("c6i", tmp_path)
    text = (tmp_path / "plan.json").read_text()
    assert '"execution"' in text and '"engine"' not in text
    assert all(g.execution is not None and g.execution.engine == "eager" for g in plan.groups)
    assert all(
        g.execution is not None and g.execution.engine == "eager"
        for g in load_plan(tmp_path / "plan.json").groups
    )
    onnx, _ = family_plan("c6i", tmp_path, with_onnx_points(load_profiles(), "c6i.2xlarge", 1.5))
    assert (
        json.loads((tmp_path / "plan.json").read_text())["groups"][0]["execution"]["engine"] == "onnxruntime"
    )
    assert load_plan(tmp_path / "plan.json") == onnx
    point = OperatingPoint(latency_ms=5.0)
    assert "engine" not in point.model_dump_json() and point.model_dump()["engine"] == "eager"
    assert (
        json.loads(point.model_copy(update={"engine": "onnxruntime"}).model_dump_json())["engine"]
        == "onnxruntime"
    )
