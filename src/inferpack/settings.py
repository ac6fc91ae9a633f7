"""Typed settings: one TOML config file plus `INFERPACK_*` environment overrides.

Precedence (highest first): command-line flags (passed as init values), environment variables
(`INFERPACK_SERVER__PORT=9000`, nested with `__`), the config file (`--config`, `INFERPACK_CONFIG`, or
`./inferpack.toml` when present), then the defaults documented on each field.
"""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from inferpack.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("inferpack.toml")
_config_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("inferpack_config", default=None)

DTypeChoice = Literal["auto", "fp32", "bf16", "fp16"]
EngineChoice = Literal["eager", "onnxruntime", "mixed", "auto"]
EvictionPolicy = Literal["slru", "frequency"]
# The tag `inferpack image build` gives the image, and the image `up --runtime podman|docker` runs.
DEFAULT_IMAGE = "inferpack:latest"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingSettings(_Section):
    """Per-model dynamic batching and load shedding."""

    max_batch_size: int = Field(
        default=8,
        ge=1,
        le=1024,
        description=(
            "Largest batch run in one forward (a hard cap). Within it, each batch is sized from measured "
            "batch compute times: spread over idle threads when cores are free, as large as "
            "max_batch_latency_ms allows when every core is busy."
        ),
    )
    max_batch_latency_ms: float = Field(
        default=100.0,
        ge=0,
        description=(
            "Latency objective for one batch: a batch takes only as many queued requests as keep its "
            "expected compute time (measured per model, or per base with cross-tenant batching) under "
            "this. A queued request waits about one batch and then runs in the next, so set about half "
            "the P90 target. At least one request always runs. 0: no objective (max_batch_size alone)."
        ),
    )
    spread_over_idle_threads: bool = Field(
        default=True,
        description=(
            "Requests queued while other inference threads are idle run as separate batches on them (two "
            "requests, two idle cores: two batches of one side by side) instead of one batch on one thread. "
            "Off: a batch takes what is queued up to its size whatever the other threads do (where Python "
            "overhead or a shared CPU makes one batch of two cheaper than two batches of one)."
        ),
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Extra wait for a fuller batch once a thread is free. 0 (default): batches form from what "
            "queued while every thread was busy, which costs no latency; CPUs gain little from bigger "
            "batches. Raise it (e.g. 2-5 ms) on GPUs."
        ),
    )
    settle_ms: float = Field(
        default=2.0,
        ge=0,
        description=(
            "With every other inference thread running a batch and more requests in the server than "
            "threads, a freed thread waits for a fuller batch while requests keep arriving, each within "
            "this many ms of the previous (the next requests of clients just answered), at most about a "
            "batch of 1's measured time, and never past the largest size the objective allows. It costs "
            "no idle core and stops batch sizes alternating between 1 and the cap under load. 0: off."
        ),
    )
    max_queue: int = Field(
        default=64, ge=1, description="Requests queued per model before new ones are shed with 503."
    )
    deadline_ms: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Deadline of a request that sets none (header inferpack-deadline-ms), counted from when it "
            "reaches its model's queue: a request whose expected wait + service would exceed it is shed "
            "at once with 503 + Retry-After, and one still queued when it can no longer make it is "
            "dropped with 504. None (default): derived, from latency_objective_ms when set, else "
            "deadline_factor x the model's measured time for a full batch (at least 50 ms, at most "
            "10 s; 10 s until a batch was timed). 0: no default deadline (only a full queue sheds "
            "requests that set none)."
        ),
    )
    latency_objective_ms: float | None = Field(
        default=None,
        gt=0,
        description=(
            "A latency every answer of this server must meet (a hard bound, not a percentile: a plan's "
            "P90 objective is not passed on as one): requests that set no deadline get it as their "
            "deadline (unless deadline_ms is set), so what is admitted stays within it under overload."
        ),
    )
    deadline_factor: float = Field(
        default=8.0,
        gt=0,
        description=(
            "With neither deadline_ms nor latency_objective_ms: the default deadline is this many times "
            "the model's measured full-batch time (what a request takes at capacity), so overload keeps "
            "the threads busy with full batches while the queue holds only work clients still wait for. "
            "8, not less: a server planned at batch 1 and run at its planned rate queues a few batches "
            "in its tail (at 4, the predicted-vs-measured bench saw 5-9 sheds per level at 100-120%)."
        ),
    )
    cross_tenant: bool = Field(
        default=True,
        description=(
            "A batch with room left takes queued requests of other models of the same base (models "
            "sharing weight files): their shared layers run once for all rows, each model's own layers "
            "on its rows. Off: a batch holds one model's requests."
        ),
    )


class AuthSettings(_Section):
    """Optional bearer-token auth (docs/security.md). Liveness probes stay open; metrics and readiness
    details follow these settings."""

    tokens_file: Path | None = Field(
        default=None,
        description="File of inference tokens, one a line: `TOKEN [SCOPE ...]` or `sha256:HEX [SCOPE ...]`, "
        "where a scope entry is a model id or an id prefix ending in '*' (blank lines and # ignored).",
    )
    tokens: list[str] = Field(
        default_factory=list,
        description="Inference tokens, each in the tokens-file line form (prefer the file or env).",
    )
    admin_token: str | None = Field(
        default=None,
        description="Token for the repository load/unload API (falls back to inference auth); it may also "
        "call every model and read metrics.",
    )
    metrics_token: str | None = Field(
        default=None,
        description="Token for /metrics and the model names in readiness answers (Prometheus sends it); "
        "the admin token works too.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Keep /metrics open to anyone although tokens are set (only where the network alone "
        "keeps strangers out: per-model series name the models).",
    )
    repository_api: bool = Field(default=True, description="Switch the load/unload API off entirely.")


class ServerSettings(_Section):
    """One multi-model server process."""

    # a str, not a Path: Path("s3://b/p") would collapse the "//" and lose the scheme
    repository: str = Field(
        default="demo-repo", description="Model repository: a folder or s3://bucket/prefix."
    )
    models: list[str] | None = Field(
        default=None, description="Models to load at start-up; None means every model in the repository."
    )
    lazy_load: bool = Field(
        default=False, description="Load a known but unloaded model on its first request (cold start)."
    )
    memory_budget_mb: float | None = Field(
        default=None,
        gt=0,
        description="Model memory budget (measured tensor bytes); least-recently-used idle models are "
        "evicted to fit. None: no limit.",
    )
    pinned_models: list[str] = Field(
        default_factory=list, description="Models loaded at start and never evicted."
    )
    ready_requires_models: bool = Field(
        default=True,
        description="The server is not ready (/v2/health/ready answers 503) while a model it must hold "
        "(named in `models` or `pinned_models`) failed to load. Loading every model of the repository "
        "(no `models`) is best effort and never holds readiness back.",
    )
    idle_unload_s: float | None = Field(
        default=None, gt=0, description="Unload models unused for this long (None: never)."
    )
    max_concurrent_loads: int = Field(default=2, ge=1, description="Model loads running at once.")
    eviction_policy: EvictionPolicy = Field(
        default="slru",
        description="Which idle model the memory budget evicts first. slru: models used fewer than 2 "
        "times since loading before the others, least recently used first within each group. "
        "frequency: the lowest decayed use count first (the access statistics, kept across unloads; "
        "see access_half_life_s), least recently used among equals.",
    )
    warm_start: bool = Field(
        default=False,
        description="Persist per-model access statistics to access_stats_file (every "
        "access_stats_save_s and at shutdown) and, at start, load the hottest models that fit the memory "
        "budget in the background, on the load lane. The server is ready without waiting for them.",
    )
    access_stats_file: str | None = Field(
        default=None,
        description="The access statistics file (JSON, written atomically) warm start reads and writes. "
        "None: ~/.cache/inferpack/access/<hash of repository, host and port>.json.",
    )
    access_stats_save_s: float = Field(
        default=60.0, gt=0, description="Seconds between two writes of the access statistics file."
    )
    access_half_life_s: float = Field(
        default=3600.0,
        gt=0,
        description="A use counts half as much after this long (access statistics: warm start and "
        "frequency eviction).",
    )
    warm_start_max_models: int = Field(
        default=1000, ge=0, description="At most this many models load at a warm start."
    )
    load_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description=(
            "Scheduling niceness of the load threads (Linux; 0: as the inference threads). A cold load is "
            "on its request's path and costs ~3 ms of CPU (MiniLM tenant of a held base, its module shell "
            "built in the background): niced, it waits behind every busy thread of the host (~5x longer "
            "loads measured on shared cores) for little CPU saved; a positive value suits loads that are "
            "large and a host whose other work is this server's inference alone."
        ),
    )
    memory_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="When the budget is full of busy models, how long a load waits for one to go idle "
        "before answering 503.",
    )
    repository_retry_initial_s: float = Field(
        default=1.0,
        gt=0,
        description="A degraded repository (S3 failing, folder unreadable: served from the last listing "
        "and the cache) is listed again after this long, the wait doubling after each failure.",
    )
    repository_retry_max_s: float = Field(
        default=60.0, gt=0, description="Cap on the wait between two listings of a degraded repository."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    inference_threads: int = Field(
        default=0, ge=0, description="Threads running forwards in parallel; 0 means one per core."
    )
    intra_op_threads: int = Field(
        default=1, ge=1, description="torch intra-op threads per forward (1 keeps every core busy)."
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?|neuron)$",
        description="Processor the models compute on: auto (CUDA when a GPU is visible, else the CPU), "
        "cpu, cuda (every visible GPU, models spread over them), cuda:N, or neuron (versions compiled "
        "with --target neuron, through torch-neuronx). An absent device is a start-up error.",
    )
    dtype: DTypeChoice = Field(
        default="auto",
        description="auto: bf16 where the processor computes it natively (CPUs with AVX512-BF16/AMX, "
        "Ampere+ GPUs, NeuronCores), fp16 on older GPUs (T4), else fp32. fp16 is for GPUs only.",
    )
    engine: EngineChoice = Field(
        default="auto",
        description="Runtime that computes: eager (torch modules; cross-tenant batching), onnxruntime "
        "(versions compiled with `inferpack compile --format onnx`, CPU, fp32; a cold model answers "
        "from its eager source version until its ONNX Runtime session is ready), mixed (eager in the "
        "server's dtype, plus an ONNX Runtime session beside each model with an ONNX version, loaded in "
        "the background; each single-model batch runs on the runtime measured faster at its size in "
        "this server, mixed-tenant batches on eager), or auto (the default: mixed on CPUs with "
        "onnxruntime installed where eager computes fp32 (AVX2-only CPUs, dtype fp32), else eager: "
        "a bf16 server never answers the same request in two precisions). onnxruntime and mixed "
        "need the `onnx` extra. See docs/runtimes.md.",
    )
    trace_after_batches: int = Field(
        default=16,
        ge=0,
        description="CPU, eager models: once a model has run this many batches since its load, its "
        "forward is traced to a TorchScript graph over the same weights in the background (checked "
        "against eager first), and its batches run on the graph (mixed batches across tenants of one base "
        "on graphs of its own layer and of the base's shared ones): no Python between the operators, the "
        "GIL released for the forward "
        "(measured 1.6x faster at batch 1 on the MiniLM demo models). 0: never trace. See "
        "docs/runtimes.md.",
    )
    trunk_after_batches: int = Field(
        default=256,
        ge=0,
        description="CPU, eager models: once the loaded tenants of one base (models sharing its layers) "
        "have run this many batches together, the registry makes the base's trunk in the background: "
        "graphs of its shared layers (checked against eager first), which every tenant of the base then "
        "runs its shared layers on, traced or not (cold tenants of a density server included). Held while "
        "a tenant of the base is loaded, charged once to the memory budget. The default is where making it "
        "(~0.55 s of background CPU for a MiniLM base) has paid for itself at the forwards it saves "
        "(~1.6-2.7 ms each). 0: only traced tenants make one. See docs/runtimes.md.",
    )
    pack_weights: bool = Field(
        default=True,
        description="bf16 on a CPU with native bf16: traced graphs run their linear layers on a copy of the "
        "weights prepacked for oneDNN (the same answers, bit for bit; measured 1.44x faster at batch 1 "
        "and 1.28x at batch 8 on the MiniLM demo models with AMX), at the memory of that copy for hot "
        "models (once per weight and process: a base's shared layers once for all its tenants). false: "
        "graphs read the plain weights (memory-tight hosts running many server processes). See "
        "docs/runtimes.md.",
    )
    share_packed_weights: bool = Field(
        default=True,
        description="With pack_weights: the packed copies live in files (server.packed_weights_dir) that "
        "every server process on this host maps, so a hot model's packed weights are held once per host, "
        "not once per process (a local fleet keeps each model on fleet.copies servers). false: each "
        "process packs in its own memory. See docs/runtimes.md.",
    )
    packed_weights_dir: str | None = Field(
        default=None,
        description="Where shared packed weights are kept (default: $XDG_CACHE_HOME or ~/.cache, under "
        "inferpack/packed-weights). Must be one directory for all the servers that should share them.",
    )
    packed_weights_max_bytes: int = Field(
        default=4 * 2**30,
        ge=0,
        description="Disk kept for shared packed weights; past it, the least recently used files go "
        "(a process still mapping one keeps its pages).",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger bodies get 413.")
    max_sequence_length: int | None = Field(
        default=None, ge=8, description="Cap on tokens per text (default: each model's manifest)."
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="SIGTERM: time to finish in-flight work.")
    metrics_top_k: int = Field(
        default=50, ge=0, description="Per-model metric labels for the K busiest models; the rest: 'other'."
    )
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @field_validator("repository", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value


ApiChoice = Literal["seed", "v2"]


class FleetTestSettings(_Section):
    """The load test `inferpack demo` runs through the router (see also `inferpack bench`)."""

    models: int = Field(default=8, ge=1, description="Unique demo models to create.")
    users: int = Field(default=4, ge=1, description="Closed-loop concurrent users.")
    rate: float | None = Field(
        default=None, gt=0, description="Open-loop request frequency (req/s); None runs a closed loop."
    )
    duration_s: float = Field(default=20.0, gt=0, description="Measured seconds of load.")
    requests: int | None = Field(
        default=None, ge=1, description="Measured requests instead of a duration (None: use duration_s)."
    )
    warmup_s: float = Field(default=2.0, ge=0, description="Seconds of load sent before measuring.")
    workers: int = Field(default=1, ge=1, description="Load-generator processes.")
    api: ApiChoice = Field(default="seed", description="seed (/predictions) or v2 (Open Inference Protocol).")


class FleetSettings(_Section):
    """The local fleet: server processes on this host behind one router (`inferpack up`)."""

    run_dir: Path = Field(
        default=Path(".inferpack/fleet"), description="State, plan, logs of the running fleet."
    )
    plan: Path | None = Field(default=None, description="Plan file; None makes a simple plan (below).")
    servers: int = Field(default=2, ge=1, description="Servers of the simple plan.")
    copies: int = Field(default=2, ge=1, description="Copies of each model in the simple plan.")
    base_port: int = Field(
        default=8101, ge=0, le=65535, description="Server i listens on base_port + i; 0 picks free ports."
    )
    router_port: int = Field(default=8100, ge=0, le=65535, description="Router port; 0 picks a free one.")
    threads_per_server: int = Field(
        default=0, ge=0, description="Inference threads per server; 0 splits the cores evenly (at least 1)."
    )
    ready_timeout_s: float = Field(default=180.0, gt=0, description="`up` fails if not ready by then.")
    stop_timeout_s: float = Field(
        default=20.0, ge=0, description="`down`: time to drain after SIGTERM before SIGKILL."
    )
    restart_backoff_s: float = Field(default=0.5, gt=0, description="First restart delay of a dead server.")
    restart_backoff_max_s: float = Field(default=30.0, gt=0, description="Restart delay cap (doubling).")
    liveness_interval_s: float = Field(
        default=2.0, gt=0, description="Supervisor: seconds between liveness probes of each ready process."
    )
    liveness_timeout_s: float = Field(
        default=2.0, gt=0, description="Supervisor: a liveness probe not answered within this fails."
    )
    liveness_failures: int = Field(
        default=3,
        ge=1,
        description="Supervisor: consecutive failed liveness probes after which a process is killed "
        "(SIGKILL: a stopped or deadlocked process ignores SIGTERM) and restarted.",
    )
    allow_cpu_fallback: bool = Field(
        default=False,
        description="Run the servers of plan groups whose processor (cuda, neuron) this host lacks on the "
        "CPU, with a warning, instead of refusing to start.",
    )
    runtime: Literal["host", "podman", "docker"] = Field(
        default="host",
        description="Where servers and router run: host processes of this interpreter, or containers of "
        "`image` run by podman or docker (ports published on 127.0.0.1, the repository mounted read-only).",
    )
    image: str = Field(
        default=DEFAULT_IMAGE,
        description="The inferpack image containers run (runtime podman/docker): the tag `inferpack image "
        "build` makes by default.",
    )
    test: FleetTestSettings = Field(default_factory=FleetTestSettings)


class RouterSettings(_Section):
    """The router (`inferpack router`: started by `up`, or a Kubernetes pod): per-request deadlines derived
    from each model's observed latency, and ejection of servers that keep missing them."""

    upstream_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Ceiling of the deadline per forwarded call; the deadline while a model (and the whole "
        "fleet) has too few latency samples.",
    )
    deadline_floor_s: float = Field(
        default=2.0, gt=0, description="Shortest deadline per forwarded call, however fast the model is."
    )
    deadline_factor: float = Field(
        default=5.0, ge=1, description="Deadline = this x the P99 of the model's recent upstream latencies."
    )
    deadline_min_samples: int = Field(
        default=20,
        ge=1,
        description="Latency samples a model needs before its own P99 sets its deadline "
        "(below: the P99 of every model's samples, then the ceiling).",
    )
    latency_window: int = Field(
        default=200, ge=10, description="Recent successful latencies kept per model for its P99."
    )
    eject_after_failures: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed calls (deadline missed, connection refused or broken) after which a "
        "server is ejected: no request goes to it until a readiness probe brings it back.",
    )
    eject_base_s: float = Field(
        default=5.0, gt=0, description="First ejection period; it doubles on each repeat, up to the max."
    )
    eject_max_s: float = Field(
        default=120.0,
        gt=0,
        description="Longest ejection period; a server that stayed in for this long starts again from the "
        "first period.",
    )
    probe_interval_s: float = Field(
        default=0.5, gt=0, description="Seconds between readiness probes of each server."
    )
    probe_timeout_s: float = Field(
        default=2.0, gt=0, description="A readiness probe not answered within this marks the server down."
    )


class Settings(BaseSettings):
    """Every setting inferpack reads, grouped by job. `inferpack config show` prints the effective values."""

    model_config = SettingsConfigDict(
        env_prefix="INFERPACK_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


ENV_PREFIX = "INFERPACK_"


def env_overrides(section: BaseModel, name: str, *, skip: Collection[str] = ()) -> dict[str, str]:
    """The environment variables that give a process the settings of `section` (the `name` section of
    `Settings`, e.g. "server" or "router") wherever they differ from the defaults: what `load_settings`
    reads back as these values (`INFERPACK_SERVER__BATCHING__CROSS_TENANT=false`). Nested sections recurse;
    `skip` names top-level fields left out (set another way, or meaningless elsewhere). A field set to
    None where its default is not None has no spelling in the environment and is left out too (TOML has
    no null either, so no configuration file sets one)."""
    return _overrides(section, f"{ENV_PREFIX}{name.upper()}", skip)


def _overrides(section: BaseModel, prefix: str, skip: Collection[str] = ()) -> dict[str, str]:
    out: dict[str, str] = {}
    defaults = type(section)()
    for field in type(section).model_fields:
        if field in skip:
            continue
        value, default = getattr(section, field), getattr(defaults, field)
        key = f"{prefix}__{field.upper()}"
        if isinstance(value, BaseModel):
            out.update(_overrides(value, key))
        elif value != default and value is not None:
            out[key] = _env_value(value)
    return out


def _env_value(value: Any) -> str:
    """One setting as pydantic-settings parses it from the environment: JSON for lists and dicts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def resolve_config_path(config: Path | None) -> Path | None:
    """The config file in force: the flag, else INFERPACK_CONFIG, else ./inferpack.toml when it exists."""
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"config file {config} not found")
        return config
    env = os.environ.get("INFERPACK_CONFIG")
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"INFERPACK_CONFIG names {env}, which does not exist")
        return Path(env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the effective settings: `overrides` (e.g. CLI flags, nested dicts) beat env beat file."""
    token = _config_path.set(resolve_config_path(config))
    try:
        return Settings(**(overrides or {}))
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
    finally:
        _config_path.reset(token)
