"""The placement plan: the one file format shared by the planner, the local fleet and Kubernetes rendering.

A plan says which servers exist, on what kind of machine, and which models each server holds. A model held
by several servers has several copies (for hot models and for availability). One server is one process
locally and one pod (on its own node of `instance_type`) on Kubernetes.

The format is JSON, versioned, validated with pydantic; unknown fields are rejected so a typo fails loudly.

Format 2 adds each group's `execution`: the settings its servers were costed with (inference threads,
intra-op threads per thread, dtype, engine, batching limits, device). `inferpack up` and `inferpack k8s
render` apply exactly those (`served_settings`), so a plan is deployed as it was costed; the plan's P90
objective is not passed on as the servers' deadline (`Plan.server_objective_ms`). Format 1 plans (no
execution) still load:
their servers run with the server's defaults, as before; a format 1 plan that names an execution is refused.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from inferpack.errors import PlanError
from inferpack.jsonfile import StrictModel, read_json_model
from inferpack.settings import ServerSettings

TargetName = Literal["cpu", "cuda", "neuron"]  # the processor kind a server or a compiled version runs on
ExecDType = Literal[
    "fp32", "bf16", "fp16"
]  # the dtypes a server computes in (settings.DTypeChoice less auto)
# the engines a server runs (settings.EngineChoice less auto; runtime.engines.Engine, which the plan does
# not import: the runtime depends on the repository, which depends on the plan)
Engine = Literal["eager", "onnxruntime"]
PLAN_FORMAT_VERSION: Literal[2] = 2


def omit_default_engine(data: Any, info: SerializationInfo) -> Any:
    """A serialised plan execution or profile point without `engine` when it is eager (JSON only: what
    files hold). Readers from before the field reject unknown fields, so they still read what they would
    run as written, and refuse a file that needs onnxruntime instead of running it on eager."""
    if info.mode_is_json() and isinstance(data, dict) and data.get("engine") == "eager":
        data = {k: v for k, v in data.items() if k != "engine"}
    return data


# What a traced execution's servers wait for before tracing a model: the server's default (measured there)
TRACE_AFTER_BATCHES: int = ServerSettings.model_fields["trace_after_batches"].default


def omit_untraced(data: Any, info: SerializationInfo) -> Any:
    """A serialised plan execution or profile point without `traced` when it is False (JSON only), as
    `omit_default_engine` does for eager: readers from before the field still read untraced files, and
    refuse a file whose servers must trace."""
    if info.mode_is_json() and isinstance(data, dict) and data.get("traced") is False:
        data = {k: v for k, v in data.items() if k != "traced"}
    return data


class Resources(StrictModel):
    """What one server may use: CPU cores, memory, and accelerators of the group's kind."""

    cpu: float = Field(gt=0, description="CPU cores (Kubernetes request/limit; local thread budget).")
    memory_mb: int = Field(gt=0, description="Memory for the server process, model weights included.")
    accelerators: int = Field(default=0, ge=0, description="GPUs or Neuron devices per server.")
    accelerator_memory_mb: int = Field(default=0, ge=0, description="Memory per accelerator.")


class Execution(StrictModel):
    """How a group's servers compute: the operating point the planner costed them at.

    `inference_threads` forwards run in parallel (the planner's workers), each with `intra_op_threads`
    torch threads; batches hold at most `max_batch_size` requests and wait at most `max_wait_ms` for more.
    """

    device: TargetName = Field(description="Processor the models compute on (the group's target).")
    dtype: ExecDType
    engine: Engine = Field(
        default="eager",
        description="Runtime the costed figures were measured on, which the servers run (`server.engine`): "
        "eager (torch modules) or onnxruntime (ONNX versions; CPU, fp32). Absent: eager, what every "
        "profile before the field was measured with.",
    )
    traced: bool = Field(
        default=False,
        description="Costed on traced graphs (profile points with `traced`): the servers trace every "
        "model they hold once it has run `server.trace_after_batches` batches (kept at the default, "
        "never 0), over packed weights (`server.pack_weights`, as profiled), and the plan sized their "
        "memory for the graphs. False on eager (CPU): the servers "
        "never trace (`trace_after_batches` 0), since the plan counted no graph memory. Absent: False.",
    )
    inference_threads: int = Field(ge=1, description="Parallel forwards per server (the planner's workers).")
    intra_op_threads: int = Field(ge=1, description="torch intra-op threads per forward.")
    max_batch_size: int = Field(ge=1, description="Largest batch one forward runs.")
    max_wait_ms: float = Field(default=0.0, ge=0, description="Extra wait for a fuller batch.")
    latency_ms: float | None = Field(
        default=None, gt=0, description="The profiled time of one batch at this point (what was costed)."
    )
    profile_source: str | None = Field(default=None, description="Where the costed figure comes from.")

    @model_serializer(mode="wrap")
    def _omit_eager(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return omit_untraced(omit_default_engine(handler(self), info), info)

    @model_validator(mode="after")
    def _engine_runs_here(self) -> Execution:
        # the server traces eager models on the CPU only (runtime/registry.py): nothing else can be costed
        if self.traced and (self.engine != "eager" or self.device != "cpu"):
            raise ValueError(
                f"traced graphs run on engine eager on the CPU, not {self.engine} on {self.device}"
            )
        # what the server refuses at start (runtime/engines.py) is refused when the plan is read
        if self.engine == "onnxruntime" and (self.device != "cpu" or self.dtype != "fp32"):
            raise ValueError(
                f"engine onnxruntime computes fp32 on the CPU, not {self.dtype} on {self.device}"
            )
        return self

    def server_fields(self) -> dict[str, Any]:
        """The `ServerSettings` fields this execution sets (everything else keeps the configured value):
        on eager CPU servers `trace_after_batches` too, so they trace exactly when the plan costed traced
        graphs (their speed and their memory) and never otherwise."""
        fields: dict[str, Any] = {
            "device": self.device,
            "dtype": self.dtype,
            "engine": self.engine,
            "inference_threads": self.inference_threads,
            "intra_op_threads": self.intra_op_threads,
        }
        if self.engine == "eager" and self.device == "cpu":
            fields["trace_after_batches"] = TRACE_AFTER_BATCHES if self.traced else 0
        if self.traced:  # the graphs `inferpack profile` timed: `compile.tracing.traced`'s, packed
            fields["pack_weights"] = True
        return fields

    def apply(self, settings: ServerSettings) -> ServerSettings:
        """`settings` with this execution's device, dtype, engine, threads and batching limits: what the
        plan was costed with wins over the configuration (validated like any settings)."""
        # no batch latency objective: the plan costed batches up to its size
        batching = settings.batching.model_copy(
            update={
                "max_batch_size": self.max_batch_size,
                "max_batch_latency_ms": 0.0,
                "max_wait_ms": self.max_wait_ms,
            }
        )
        data = settings.model_dump()
        data.update(self.server_fields(), batching=batching.model_dump())
        return ServerSettings.model_validate(data)


class ServerPlan(StrictModel):
    """One server: a name unique in the plan (DNS-1123 label) and the model ids it holds."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    models: list[str]
    expected_rps: float | None = Field(default=None, ge=0, description="Planned request rate (planner).")


class ServerGroup(StrictModel):
    """Servers of one machine kind: an instance type (or "local"), a target processor and resources."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    instance_type: str = "local"
    target: TargetName = "cpu"
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    price_per_hour: float | None = Field(default=None, ge=0, description="Per server (instance), USD.")
    resources: Resources
    execution: Execution | None = Field(
        default=None, description="Settings the servers were costed with (format 2); None: server defaults."
    )
    servers: list[ServerPlan]

    @model_validator(mode="after")
    def _execution_matches_target(self) -> ServerGroup:
        ex = self.execution
        if ex is not None and ex.device != self.target:
            raise ValueError(
                f"group {self.name!r}: execution.device {ex.device} differs from target {self.target}"
            )
        if ex is not None and ex.dtype == "fp16" and self.target != "cuda":
            raise ValueError(f"group {self.name!r}: fp16 is computed on GPUs only, not on {self.target}")
        return self


class Plan(StrictModel):
    """A whole placement. `placement()` gives model -> servers; `validate_against()` checks a model list."""

    format_version: Literal[1, 2] = PLAN_FORMAT_VERSION
    created_by: str = Field(description="What made it: 'simple', 'milp', 'heuristic', or a person.")
    repository: str | None = None
    slo_p90_ms: float | None = Field(
        default=None, gt=0, description="The P90 latency objective the plan was sized for, ms."
    )
    cost_per_hour: float | None = None
    lower_bound_per_hour: float | None = None
    groups: list[ServerGroup]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_unique(self) -> Plan:
        if self.format_version == 1 and any(g.execution is not None for g in self.groups):
            raise ValueError("format_version 1 plans have no 'execution'; set format_version to 2")
        seen: set[str] = set()
        for server in self.servers():
            if server.name in seen:
                raise ValueError(f"server name {server.name!r} appears twice")
            seen.add(server.name)
            if len(set(server.models)) != len(server.models):
                raise ValueError(f"server {server.name!r} lists a model twice")
        groups = [g.name for g in self.groups]
        if len(set(groups)) != len(groups):
            raise ValueError("group names must be unique")
        return self

    def server_objective_ms(self, settings: ServerSettings) -> float | None:
        """The latency objective (`batching.latency_objective_ms`) the plan's servers run with: the one the
        configuration sets, else None (each server derives its default deadline). The plan's own P90
        objective is deliberately not passed on: a server uses its objective as the deadline of requests
        that set none, and a plan sized for a P90 lets one request in ten be slower, so as a deadline it
        would turn those answers into 503/504 errors (measured: 20-112 errors per ~200 requests at the
        planned rate with it, 0-16 without; docs/benchmarks.md)."""
        return settings.batching.latency_objective_ms

    def servers(self) -> list[ServerPlan]:
        """Every server of every group, in plan order."""
        return [s for g in self.groups for s in g.servers]

    def group_of(self, server_name: str) -> ServerGroup:
        """The group that holds the named server."""
        for group in self.groups:
            if any(s.name == server_name for s in group.servers):
                return group
        raise PlanError(f"no server named {server_name!r} in the plan")

    def placement(self) -> dict[str, list[str]]:
        """Model id -> names of the servers holding a copy, in plan order."""
        where: dict[str, list[str]] = defaultdict(list)
        for server in self.servers():
            for model in server.models:
                where[model].append(server.name)
        return dict(where)

    def models(self) -> list[str]:
        """Every distinct model id in the plan, sorted."""
        return sorted(self.placement())

    def validate_against(self, model_ids: list[str]) -> None:
        """Raise PlanError if the plan holds a model not in `model_ids` or misses one of them."""
        have, want = set(self.placement()), set(model_ids)
        if extra := sorted(have - want):
            raise PlanError(f"plan holds {len(extra)} model(s) not in the repository, e.g. {extra[:3]}")
        if missing := sorted(want - have):
            raise PlanError(f"plan misses {len(missing)} model(s) of the repository, e.g. {missing[:3]}")


def served_settings(group: ServerGroup, settings: ServerSettings) -> ServerSettings:
    """The settings a server of `group` runs with where the group's processor is present (Kubernetes; the
    local fleet unless it fell back to the CPU): the configuration (its latency objective included: the
    one `Plan.server_objective_ms` passes on) with the group's execution over it (what was costed wins).
    `inferpack k8s render` renders these; `inferpack up` passes the same as `serve` flags
    (`processes.server_command`)."""
    if group.execution is None:
        return settings
    served = group.execution.apply(settings)
    budget = traced_memory_budget_mb(group, served)
    return served if budget is None else served.model_copy(update={"memory_budget_mb": budget})


def traced_memory_budget_mb(group: ServerGroup, settings: ServerSettings) -> float | None:
    """The memory budget a server of a traced group must run with instead of the configured one, or None
    when the configured one will do (none, or at least the server's memory). The server traces only into
    free budget (runtime/registry.py), and the planner sized the server's memory (`resources.memory_mb`,
    an RSS figure, above the ledger's tensor bytes) for every model it holds with its graph: a smaller
    configured budget could keep out graphs whose speed the plan counted on."""
    if group.execution is None or not group.execution.traced:
        return None
    budget = settings.memory_budget_mb
    if budget is None or budget >= group.resources.memory_mb:
        return None
    return float(group.resources.memory_mb)


def load_plan(path: Path) -> Plan:
    """Read and validate a plan file; errors name the file and what to fix."""
    return read_json_model(path, Plan, "plan file", missing_hint="make one with `inferpack plan`")


def save_plan(plan: Plan, path: Path) -> None:
    """Write a plan as indented JSON (reviewable, diffable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.model_dump_json(indent=2, exclude_none=True) + "\n")
