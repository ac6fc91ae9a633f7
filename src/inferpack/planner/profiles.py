"""Profile files: how fast and how big a class of models is on a given piece of hardware.

`inferpack profile` writes these (one file per machine it runs on); the package ships a reference file
for bert-base-class models on the catalog's instance types (built from published figures, see
`data/reference_profiles.json`) plus the figures measured for MiniLM and a bert-base-shaped model on the
development machine. The planner needs, per (model class, instance type): host and accelerator memory per
loaded model, the server's own memory, and one or more operating points (batch size, threads, dtype,
latency) from which it picks the cheapest one that keeps the latency objective.

Trust: every point of the reference file says where it comes from (`source`: a publication or a
measurement, or "derived: <rule> from <entry>"), and `check_peak` refuses any point faster than the
hardware's peak arithmetic allows (the model class's FLOPs per request over the processor's peak FLOPS,
both stated in the file with their sources). `load_profiles` runs that check on every file it reads.
On x86 a vCPU is a hyperthread: a point's `threads` counts physical cores (see catalog.physical_cores).
"""

from __future__ import annotations

import fnmatch
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from inferpack.errors import ConfigError
from inferpack.jsonfile import StrictModel, parse_json_model
from inferpack.plan import Engine, omit_default_engine, omit_untraced
from inferpack.repository.footprint import ORT_SESSION_FACTOR  # what a session holds, measured

DType = Literal["fp32", "bf16", "fp16", "int8"]

MB = 2**20


class OperatingPoint(StrictModel):
    """One way to run the model: a batch of `batch_size` on a worker using `threads` intra-op threads."""

    batch_size: int = Field(default=1, ge=1)
    threads: int = Field(default=1, ge=1, description="intra-op threads per worker (CPU cores it uses).")
    dtype: DType = "fp32"
    engine: Engine = Field(
        default="eager",
        description="Runtime the figure was measured on: eager (torch modules; what `inferpack profile` "
        "measures) or onnxruntime (ONNX versions, CPU, fp32). A plan's servers run the engine their "
        "point was measured on.",
    )
    traced: bool = Field(
        default=False,
        description="True for a figure of the eager module's traced graph (compile/tracing.py `traced`: "
        "what a server runs for a model once it has run `server.trace_after_batches` batches; CPU, "
        "safetensors versions). A plan's servers costed on a traced point trace every model they hold "
        "(`plan.Execution.traced`), and its memory per model counts the graph "
        "(`ModelProfile.traced_mb`). Absent: the eager forward.",
    )
    latency_ms: float = Field(gt=0, description="Median time to run one batch.")
    latency_p90_ms: float | None = Field(
        default=None,
        gt=0,
        description="P90 time to run one batch: with the median it gives the service-time spread the "
        "queueing model uses (absent: queueing.DEFAULT_CV).",
    )
    throughput_rps: float | None = Field(
        default=None, gt=0, description="Requests/s one worker sustains (default batch_size / latency)."
    )
    source: str | None = Field(
        default=None,
        description="Where this figure comes from: 'published: <title, URL, what was measured>', "
        "'measured: <how>', or 'derived: <rule> from <entry>'.",
    )

    @model_serializer(mode="wrap")
    def _omit_eager(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return omit_untraced(omit_default_engine(handler(self), info), info)

    @property
    def runtime(self) -> str:
        """What computes this point: its engine, or "traced" for the eager module's traced graph (the
        planner's execution keys tell them apart: their capacity and memory differ)."""
        return "traced" if self.traced else self.engine

    def scaled(self, factor: float, **update: Any) -> OperatingPoint:
        """This point with every time `factor` times longer (its median and P90; its throughput `factor`
        times lower), and the fields of `update` replaced (e.g. another engine for a derived point)."""
        p90, rps = self.latency_p90_ms, self.throughput_rps
        return self.model_copy(
            update={
                "latency_ms": self.latency_ms * factor,
                "latency_p90_ms": None if p90 is None else p90 * factor,
                "throughput_rps": None if rps is None else rps / factor,
                **update,
            }
        )

    @model_validator(mode="after")
    def _p90_not_below_median(self) -> OperatingPoint:
        if self.traced and self.engine != "eager":
            raise ValueError(f"a traced point is a graph of the eager module, not of {self.engine}")
        if self.latency_p90_ms is not None and self.latency_p90_ms < self.latency_ms:
            raise ValueError(f"latency_p90_ms {self.latency_p90_ms} is below latency_ms {self.latency_ms}")
        return self

    def worker_rps(self) -> float:
        """Requests per second one worker sustains at this point."""
        if self.throughput_rps is not None:
            return self.throughput_rps
        return self.batch_size * 1000.0 / self.latency_ms


class HardwareTag(StrictModel):
    """What the profile ran on; `inferpack profile` fills this from the machine."""

    cpu_model: str
    architecture: Literal["x86_64", "arm64"]
    cores: int = Field(gt=0, description="vCPUs seen by the process.")
    accelerator: str | None = None
    accelerator_count: int = Field(default=0, ge=0)
    torch_version: str | None = None


class ModelProfile(StrictModel):
    """One model class on one kind of hardware."""

    model_class: str = Field(min_length=1, description="Architecture key, e.g. bert-base, minilm-l6.")
    instance_types: list[str] = Field(
        min_length=1, description="Catalog names or shell patterns this applies to (c6i.*, local)."
    )
    hardware: HardwareTag
    cold_load_s: float = Field(ge=0, description="Load time of one model, from files to first answer.")
    resident_mb: float = Field(gt=0, description="Host memory added by one loaded model.")
    accelerator_mb: float = Field(default=0, ge=0, description="Device memory per model on each device.")
    memory_by_dtype: dict[DType, float] = Field(
        default_factory=dict,
        description="Host memory per loaded model by dtype (bf16 halves the weights); absent: resident_mb.",
    )
    memory_by_engine: dict[Engine, float] = Field(
        default_factory=dict,
        description="Host memory per loaded model on an engine other than eager (onnxruntime: a session's "
        "own copy of the fp32 weights); absent: derived (`resident_for`).",
    )
    traced_mb: dict[DType, float] = Field(
        default_factory=dict,
        description="Host memory one traced model adds beside its eager one, by dtype: its graph's own IR "
        "and plans and the prepacked copies of its linear weights (bf16 on native-bf16 CPUs). "
        "`inferpack profile` records the larger of the RSS growth of tracing and the server ledger's "
        "estimate. Every traced point's dtype needs a figure; absent: no traced points.",
    )
    server_overhead_mb: float = Field(ge=0, description="Host memory of a server holding no model.")
    accelerator_overhead_mb: float = Field(default=0, ge=0, description="Device memory per device, idle.")
    workers_per_accelerator: int = Field(
        default=1, ge=1, description="Parallel executors per device (NeuronCores per chip, streams per GPU)."
    )
    points: list[OperatingPoint] = Field(min_length=1)
    request_overhead_ms: float | None = Field(
        default=None,
        ge=0,
        description="Time per request through a real server beyond the bare forward (HTTP, JSON, "
        "tokenising, sharing the cores under load): the median service time under open-loop load minus "
        "the bare forward's, measured by `inferpack profile`; `plan --request-overhead-ms` overrides it.",
    )
    request_overhead_p90_ms: float | None = Field(
        default=None,
        ge=0,
        description="The P90 of that service time minus the bare forward's P90 (batch 1); the planner adds "
        "it to each point's P90 (absent: the median overhead).",
    )
    peak_throughput_per_core: float | None = Field(default=None, gt=0, description="Requests/s per core.")
    estimated: bool = Field(description="True when figures are estimates rather than measurements.")
    source: str = Field(description="Where the figures come from (measurement command or citation).")

    @model_serializer(mode="wrap")
    def _omit_no_engine_memory(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """No `memory_by_engine` in a file when empty: readers from before the field (which reject unknown
        fields) still read an eager profile, as `OperatingPoint` omits its eager engine."""
        data = handler(self)
        if info.mode_is_json() and isinstance(data, dict):
            empty = {k for k in ("memory_by_engine", "traced_mb") if not getattr(self, k)}
            data = {k: v for k, v in data.items() if k not in empty}
        return data

    @model_validator(mode="after")
    def _traced_memory_known(self) -> ModelProfile:
        # a traced point without its graph's memory would be costed as if the graph were free
        missing = sorted({p.dtype for p in self.points if p.traced} - set(self.traced_mb))
        if missing:
            raise ValueError(f"traced points in {missing} have no traced_mb figure (a graph's own memory)")
        return self

    def matches(self, instance_type: str) -> bool:
        """Whether this profile applies to the named instance type."""
        return any(fnmatch.fnmatchcase(instance_type, pat) for pat in self.instance_types)

    def resident_for(
        self,
        dtype: DType,
        engine: Engine = "eager",
        parameters: int | None = None,
        *,
        traced: bool = False,
    ) -> float:
        """Host memory one loaded model adds when served in `dtype` on `engine` (`traced`: with its traced
        graph, `traced_mb` beside the eager figure). On onnxruntime without a
        figure of its own: `session_resident_mb` of the class's `parameters`, and never less than the
        eager fp32 figure (a profile's eager figure counts only the weight pages its forwards touched:
        a session copies them all); without parameters, the eager fp32 figure x ORT_SESSION_FACTOR."""
        eager = self.memory_by_dtype.get(dtype, self.resident_mb)
        if engine == "eager":
            return eager + (self.traced_mb[dtype] if traced else 0.0)
        if engine in self.memory_by_engine:
            return self.memory_by_engine[engine]
        fp32 = self.memory_by_dtype.get("fp32", self.resident_mb)
        if parameters is None:
            return fp32 * ORT_SESSION_FACTOR
        return max(fp32, session_resident_mb(parameters))


def session_resident_mb(parameters: int) -> float:
    """Host memory of one ONNX Runtime session of a model of `parameters` fp32 weights (see
    ORT_SESSION_FACTOR: it holds its own copy of every weight, a second session over the same file a
    second copy, and an eager model's file-mapped weights are not reused): the memory a server on the
    onnxruntime engine holds per model once its tier's eager stand-in is gone (runtime/tier.py)."""
    return parameters * 4 / MB * ORT_SESSION_FACTOR


class ModelClass(StrictModel):
    """A class of models sharing a shape: memory of a typical member lets the planner scale footprints."""

    name: str = Field(min_length=1)
    parameters: int | None = Field(default=None, gt=0)
    reference_memory_mb: float = Field(
        gt=0, description="Host memory of a typical member on CPU; footprints scale by memory_mb / this."
    )
    description: str = ""
    layers: int | None = Field(default=None, ge=1, description="Encoder layers (for FLOPs per request).")
    hidden: int | None = Field(default=None, ge=1, description="Hidden size.")
    intermediate: int | None = Field(default=None, ge=1, description="Feed-forward size.")
    sequence_length: int | None = Field(default=None, ge=1, description="Tokens per request profiled.")

    def gflops_per_request(self) -> float | None:
        """Forward FLOPs of one request (GFLOP) from the encoder shape: per token and layer, 2 x the
        weights of the four attention projections and the feed-forward (8h^2 + 4hi), plus 4 x seq x h
        for the attention scores and their weighted sum; None when the shape is not given."""
        if None in (self.layers, self.hidden, self.intermediate, self.sequence_length):
            return None
        assert self.layers and self.hidden and self.intermediate and self.sequence_length
        h, i, seq = self.hidden, self.intermediate, self.sequence_length
        per_token_layer = 8 * h * h + 4 * h * i + 4 * seq * h
        return self.layers * seq * per_token_layer / 1e9


class Processor(StrictModel):
    """Peak arithmetic of the processor behind some instance types: the ceiling no profile may beat."""

    name: str = Field(min_length=1)
    instance_types: list[str] = Field(min_length=1, description="Catalog names or shell patterns.")
    unit: Literal["core", "device"] = Field(
        description="What the peak is per: a physical core (CPUs) or one accelerator device."
    )
    peak_gflops: dict[DType, float] = Field(
        min_length=1, description="Peak GFLOPS per unit by dtype (dense; FMA = 2 FLOPs)."
    )
    native_dtypes: list[DType] = Field(
        min_length=1, description="Dtypes it computes natively; the planner costs no other (fp32 always)."
    )
    source: str = Field(min_length=1, description="Where the peak figures come from.")

    def matches(self, instance_type: str) -> bool:
        """Whether this processor is behind the named instance type."""
        return any(fnmatch.fnmatchcase(instance_type, pat) for pat in self.instance_types)


class ProfileFile(StrictModel):
    """A file of profiles (the format `inferpack profile` writes and `inferpack plan --profiles` reads)."""

    format_version: Literal[1] = 1
    kind: Literal["inferpack-profile"] = "inferpack-profile"
    created_by: str
    notes: str = ""
    sources: list[str] = Field(default_factory=list)
    model_classes: list[ModelClass] = Field(default_factory=list)
    processors: list[Processor] = Field(default_factory=list)
    profiles: list[ModelProfile] = Field(default_factory=list)

    @model_validator(mode="after")
    def _classes_known(self) -> ProfileFile:
        names = {c.name for c in self.model_classes}
        for prof in self.profiles:
            if prof.model_class not in names:
                raise ValueError(f"profile for {prof.model_class!r} has no entry in model_classes")
        return self


class ProfileSet(StrictModel):
    """Profiles merged from several files; later files win for the same (class, instance type)."""

    classes: dict[str, ModelClass]
    profiles: list[ModelProfile]
    processors: list[Processor] = Field(default_factory=list)

    def processor(self, instance_type: str) -> Processor | None:
        """The last-given processor record behind `instance_type`, or None."""
        for proc in reversed(self.processors):
            if proc.matches(instance_type):
                return proc
        return None

    def lookup(self, model_class: str, instance_type: str) -> ModelProfile | None:
        """The last-given profile of `model_class` that applies to `instance_type`, or None."""
        for prof in reversed(self.profiles):
            if prof.model_class == model_class and prof.matches(instance_type):
                return prof
        return None


def parse_profile_file(text: str, label: str) -> ProfileFile:
    """Validate profile JSON text; errors name the file."""
    return parse_json_model(text, ProfileFile, f"profile file {label}")


def reference_profile_text() -> str:
    """The shipped reference profiles' JSON text."""
    return resources.files("inferpack.planner").joinpath("data/reference_profiles.json").read_text()


def merge_profiles(files: list[ProfileFile]) -> ProfileSet:
    """Combine files in order: later classes and profiles take precedence."""
    classes: dict[str, ModelClass] = {}
    profiles: list[ModelProfile] = []
    processors: list[Processor] = []
    for f in files:
        classes.update({c.name: c for c in f.model_classes})
        profiles.extend(f.profiles)
        processors.extend(f.processors)
    return ProfileSet(classes=classes, profiles=profiles, processors=processors)


def peak_violations(profiles: ProfileSet) -> list[str]:
    """Points faster than their hardware's peak allows: a point's GFLOPS (requests/s of one worker x
    GFLOP per request) over the peak of the cores (CPU: `threads` physical cores) or of its share of a
    device (1 / workers_per_accelerator). A profile without a processor record or a class without a
    shape cannot be checked and is skipped (`unchecked` lists those)."""
    errors: list[str] = []
    for prof in profiles.profiles:
        gflop = profiles.classes[prof.model_class].gflops_per_request()
        for pattern in prof.instance_types:
            proc = profiles.processor(pattern)
            if gflop is None or proc is None:
                continue
            for point in prof.points:
                peak = proc.peak_gflops.get(point.dtype) or proc.peak_gflops.get("fp32")
                if peak is None:
                    continue
                units = point.threads if proc.unit == "core" else 1.0 / prof.workers_per_accelerator
                need = point.worker_rps() * gflop
                if need > peak * units * (1 + 1e-9):
                    errors.append(
                        f"{prof.model_class} on {pattern} ({point.dtype}, {point.threads} thread(s), batch "
                        f"{point.batch_size}, {point.latency_ms:g} ms): {need:.0f} GFLOPS exceeds the peak "
                        f"{peak * units:.0f} GFLOPS of {proc.name}"
                    )
    return errors


def unchecked(profiles: ProfileSet) -> list[str]:
    """Profiles `peak_violations` cannot check: no class shape, or no processor for an instance type."""
    out = []
    for prof in profiles.profiles:
        if profiles.classes[prof.model_class].gflops_per_request() is None:
            out.append(f"{prof.model_class}: no layers/hidden/intermediate/sequence_length")
        out += [
            f"{prof.model_class} on {p}: no processor"
            for p in prof.instance_types
            if not profiles.processor(p)
        ]
    return out


def check_peak(profiles: ProfileSet) -> None:
    """ConfigError naming every point faster than its hardware's peak allows."""
    errors = peak_violations(profiles)
    if errors:
        raise ConfigError(
            f"{len(errors)} profile point(s) are faster than the hardware's peak FLOPS allows: "
            + "; ".join(errors[:5]),
            hint="fix the profile (a typo? a figure measured at a shorter sequence?) or its processor's peak",
        )


def load_profiles(paths: list[Path] | None = None, *, use_reference: bool = True) -> ProfileSet:
    """The reference profiles (unless `use_reference` is False) followed by each given file."""
    files: list[ProfileFile] = []
    if use_reference:
        files.append(parse_profile_file(reference_profile_text(), "reference"))
    for path in paths or []:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read profile file {path}: {exc}") from exc
        files.append(parse_profile_file(text, str(path)))
    merged = merge_profiles(files)
    if not merged.profiles:
        raise ConfigError("no profiles given", hint="drop --no-reference-profiles or pass --profiles FILE")
    check_peak(merged)
    return merged
