"""The cost model: models + catalog + profiles + options -> a packing problem with normalised demands.

Every server of instance type `t` has capacity 1 in three resources, and each copy of model `i` uses a
fraction `D[i, t, r]` of it:

- r=0 host memory: the model's footprint (its `memory_mb`, scaled by the profile of its class on `t`
  for the chosen point's dtype and engine: an ONNX Runtime session holds its own copy of the weights,
  `ModelProfile.resident_for`) over the usable memory: the server pod's memory (an EKS node's
  allocatable minus the DaemonSet allowance, `allocatable.server_share`) x `max_memory_fraction`, minus
  the server's own overhead (a type without `max_pods`: the whole instance, minus the OS reserve too);
- r=1 compute: the copy's request rate over the server's capacity at the latency objective (see
  `queueing`), i.e. the share of rate x service time the objective allows;
- r=2 accelerator memory: per device, since a model is placed on every device of its server.

Plus a limit on the number of models per server, and copies of one model on different servers. A model
hotter than `max_copy_load` of the best server gets extra copies, and its rate is split evenly between
copies (the router spreads load across copies).

A "type" `t` of the problem is an instance type at one execution key (threads, dtype, batch size, engine
or traced graphs: what one server runs for every model it holds). An instance type appears once per key
worth offering on it (`type_variants`: every key not dominated in both capacity and memory by another),
each column with that key's capacity and that key's memory per model, so the solvers choose the key by
cost, and one server, being one column, never mixes keys.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from pydantic import Field

from inferpack.errors import PlanError
from inferpack.jsonfile import StrictModel
from inferpack.planner.allocatable import DAEMONSET_CPU, DAEMONSET_MEMORY_MB, NodeShare, server_share
from inferpack.planner.catalog import Catalog, InstanceType
from inferpack.planner.profiles import DType, ModelProfile, OperatingPoint, ProfileSet
from inferpack.planner.queueing import ServiceTime, max_rate_rps
from inferpack.runtime.targets import dtype_unservable_reason

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

RESOURCES = ("memory", "compute", "accelerator memory")
_DEFAULT_DTYPES: tuple[DType, ...] = ("fp32", "bf16", "fp16")
EPS = 1e-9  # tolerance on capacity checks, so sums of floats that equal 1 still fit
# What one server runs for every model it holds: intra-op threads, dtype, batch size, runtime (the engine,
# or "traced" for the eager module's traced graphs: `OperatingPoint.runtime`).
ExecKey = tuple[int, str, int, str]


class PlanOptions(StrictModel):
    """What the user asks of a plan (every `inferpack plan` option that shapes the problem)."""

    slo_p90_ms: float = Field(default=100.0, gt=0, description="P90 latency objective per request.")
    max_utilisation: float = Field(default=0.8, gt=0, le=1, description="Cap on worker utilisation.")
    min_copies: int = Field(default=1, ge=1, description="Copies of every model, on different servers.")
    max_models_per_server: int | None = Field(default=None, ge=1)
    instance_types: list[str] | None = Field(
        default=None, description="Allowed instance types (names or shell patterns); None: all."
    )
    reserved_memory_mb: float = Field(
        default=512.0,
        ge=0,
        description="Host memory kept for the OS on a type without max_pods (on EKS nodes kube-reserved and "
        "the eviction threshold are that reserve).",
    )
    max_memory_fraction: float = Field(
        default=0.9, gt=0, le=1, description="Share of the server's memory to fill (the rest: working room)."
    )
    daemonset_cpu: float = Field(
        default=DAEMONSET_CPU,
        ge=0,
        description="CPU cores per EKS node kept for DaemonSets (CNI, kube-proxy...).",
    )
    daemonset_memory_mb: float = Field(
        default=DAEMONSET_MEMORY_MB, ge=0, description="Memory (MiB) per EKS node kept for DaemonSets."
    )
    max_copy_load: float = Field(
        default=0.5, gt=0, le=1, description="A copy may use at most this share of the best server."
    )
    reserved_cpus: float = Field(
        default=0.0,
        ge=0,
        description="vCPUs per CPU server kept from the workers (HTTP, tokenising, a co-located router).",
    )
    request_overhead_ms: float | None = Field(
        default=None,
        ge=0,
        description="Time per request outside the profiled forward (tokenising, HTTP, JSON); None: the "
        "profile's measured `request_overhead_ms` (0 where it has none).",
    )
    dtypes: list[DType] = Field(
        default_factory=lambda: list(_DEFAULT_DTYPES),
        description="Operating points allowed (int8 is off by default: it needs a quality check).",
    )


@dataclass(frozen=True)
class ModelDemand:
    """One model to place: its id, resident memory on CPU, expected request rate and class."""

    id: str
    memory_mb: float
    rate_rps: float
    model_class: str = "bert-base"


@dataclass(frozen=True)
class TypeChoice:
    """How a class of models runs on an instance type: the chosen operating point and its capacity."""

    point: OperatingPoint
    workers: int
    capacity_rps: float
    service_s: float  # mean per request per worker, overhead included
    latency_ms: float  # median of one batch, overhead included
    cv: float = 0.0  # coefficient of variation of the service time (from the point's median and P90)
    source: str = ""  # where the point's figure comes from (the profile's or the point's source)

    @property
    def key(self) -> ExecKey:
        """What a server must be told to run this point: intra-op threads, dtype, batch size, runtime
        (engine, or traced: a server that traces its models is told so, `plan.Execution.traced`)."""
        return (self.point.threads, self.point.dtype, self.point.batch_size, self.point.runtime)


@dataclass
class Problem:
    """A packing problem in normalised form (see the module docstring)."""

    model_ids: list[str]
    model_classes: list[str]
    class_index: IntArray  # (n,) index into model_classes... of each model
    memory_mb: FloatArray  # (n,)
    rate_per_copy: FloatArray  # (n,)
    copies: IntArray  # (n,)
    types: list[InstanceType]  # (T,) one per column: an instance type run at one execution key
    prices: FloatArray  # (T,)
    coef: FloatArray  # (C, T, 3): D[i,t,0]=mem*coef0, D[i,t,1]=rate*coef1, D[i,t,2]=mem*coef2
    max_models: int
    choices: dict[tuple[int, int], TypeChoice] = field(default_factory=dict)  # (class, type) -> choice
    # (T,) the execution key of each column: `types` may repeat an instance type, once per key worth
    # offering on it (`type_variants`); empty for a problem built without profiles (tests)
    keys: list[ExecKey | None] = field(default_factory=list)
    demand: FloatArray = field(init=False)  # (n, T, 3)
    fits: BoolArray = field(init=False)  # (n, T): one copy fits an empty server of that type

    def __post_init__(self) -> None:
        self.demand = demand_matrix(self.class_index, self.memory_mb, self.rate_per_copy, self.coef)
        self.fits = np.all(self.demand <= 1.0 + EPS, axis=2)
        if self.max_models < 1:
            self.fits[:] = False

    @property
    def n_models(self) -> int:
        """Number of distinct models."""
        return len(self.model_ids)

    @property
    def n_types(self) -> int:
        """Number of instance types in play."""
        return len(self.types)


def demand_matrix(class_index: IntArray, mem: FloatArray, rate: FloatArray, coef: FloatArray) -> FloatArray:
    """D[i, t, r] for models given by class, memory and per-copy rate (inf where a type cannot serve)."""
    c = coef[class_index]  # (n, T, 3)
    with np.errstate(invalid="ignore"):
        d = np.stack(
            [mem[:, None] * c[:, :, 0], rate[:, None] * c[:, :, 1], mem[:, None] * c[:, :, 2]], axis=2
        )
    # 0 * inf (a zero-rate model on a type that cannot meet the objective) is still "cannot serve".
    return np.where(np.isnan(d), np.inf, d)


def _allowed(name: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _on_accelerator(inst: InstanceType) -> bool:
    return inst.target != "cpu" and inst.accelerator_count > 0


def server_resources(inst: InstanceType, options: PlanOptions) -> NodeShare:
    """CPU and memory one server of this type may use (its pod's requests and limits on EKS)."""
    return server_share(
        inst, daemonset_cpu=options.daemonset_cpu, daemonset_memory_mb=options.daemonset_memory_mb
    )


def compute_cores(inst: InstanceType, options: PlanOptions) -> int:
    """Cores the workers of a CPU server may keep busy: the instance's physical cores (an x86 vCPU is a
    hyperthread, and two hyperthreads share one core's vector units), and no more busy threads than the
    pod's CPU limit (less `reserved_cpus`) allows, or the CFS quota throttles them. The sibling
    hyperthreads are left to HTTP and tokenising."""
    quota = int(server_resources(inst, options).cpu - options.reserved_cpus + 1e-9)
    return max(0, min(inst.physical_cores, quota))


def _workers(inst: InstanceType, point: OperatingPoint, per_device: int, options: PlanOptions) -> int:
    if _on_accelerator(inst):
        return inst.accelerator_count * per_device
    return compute_cores(inst, options) // point.threads


def point_allowed(
    inst: InstanceType, point: OperatingPoint, native: list[DType] | None, options: PlanOptions
) -> bool:
    """Whether the planner may cost `point` on `inst`: a dtype the user allows, that the server accepts
    on this hardware (runtime.targets), and that the processor computes natively (fp32 always); a point
    measured on ONNX Runtime only where the server runs it (CPU servers, fp32: runtime/engines.py)."""
    if point.dtype not in options.dtypes:
        return False
    accelerator = inst.accelerator if _on_accelerator(inst) else None
    target = inst.target if _on_accelerator(inst) else "cpu"
    if point.engine == "onnxruntime" and (target != "cpu" or point.dtype != "fp32"):
        return False
    if point.traced and target != "cpu":  # the server traces eager models on the CPU only
        return False
    if dtype_unservable_reason(target, accelerator, point.dtype) is not None:
        return False
    return point.dtype == "fp32" or native is None or point.dtype in native


def usable_memory_mb(inst: InstanceType, options: PlanOptions) -> float:
    """Memory the models and the server's overhead may fill on one server of this type."""
    reserve = 0.0 if inst.max_pods is not None else options.reserved_memory_mb
    return server_resources(inst, options).memory_mb * options.max_memory_fraction - reserve


def service_shape(
    point: OperatingPoint, overhead_ms: float, overhead_p90_ms: float | None = None
) -> ServiceTime:
    """The lognormal of one batch's time through the server: the point's median and P90 (or the default
    spread) plus the request overhead's median and P90 (`overhead_p90_ms`, default the median): at the
    profiled batch-1 point this is the service time measured through the server under load."""
    p90 = point.latency_p90_ms
    shape = ServiceTime.from_quantiles(point.latency_ms / 1000.0, None if p90 is None else p90 / 1000.0)
    extra_p90 = overhead_ms if overhead_p90_ms is None else overhead_p90_ms
    return ServiceTime.from_quantiles(
        shape.median_s + overhead_ms / 1000.0, shape.quantile_s(0.9) + extra_p90 / 1000.0
    )


def point_choices(
    inst: InstanceType, prof: ModelProfile, options: PlanOptions, native: list[DType] | None = None
) -> dict[ExecKey, TypeChoice]:
    """Every allowed point that meets the objective, by execution key (the best one per key)."""
    out: dict[ExecKey, TypeChoice] = {}
    for point in prof.points:
        if not point_allowed(inst, point, native, options):
            continue
        measured = (prof.request_overhead_ms, prof.request_overhead_p90_ms)
        choice = choose_point(inst, [point], prof.workers_per_accelerator, options, *measured)
        if choice is not None and (
            choice.key not in out or choice.capacity_rps > out[choice.key].capacity_rps
        ):
            out[choice.key] = replace(choice, source=point.source or prof.source)
    return out


def _resident(prof: ModelProfile, point: OperatingPoint, parameters: int | None) -> float:
    """Host memory of one model of the profile's class served at `point` (its dtype and engine, and its
    traced graph for a traced point)."""
    return prof.resident_for(point.dtype, point.engine, parameters, traced=point.traced)


def type_variants(
    inst: InstanceType,
    profs: dict[int, ModelProfile],
    options: PlanOptions,
    native: list[DType] | None,
    parameters: dict[int, int | None] | None = None,
) -> list[dict[int, TypeChoice]]:
    """The execution keys worth offering on `inst`, each as class index -> its choice at that ONE key (a
    server runs one setting for every model it holds; a class that cannot run a key is not in its dict).

    Which key is cheapest is the optimisation's business, not this function's: capacity alone is not
    cost, since a key also sets each model's memory (`ModelProfile.resident_for`: bf16 halves the eager
    weights, an ONNX Runtime session holds its own fp32 copy), and in a memory-bound plan servers fill by
    memory long before by throughput. So every key is offered as its own variant of the type, except keys
    that can never be needed: key K is dominated by K' when K' serves every class K serves, with at least
    its capacity and at most its memory per model for each (ties: the earlier in the capacity order wins).
    The order is the former single choice's: the key most classes can run, then the one losing least
    capacity (the sum over classes of capacity / that class's best), so the first variant is that key."""
    by_class = {c: point_choices(inst, prof, options, native) for c, prof in profs.items()}
    best = {c: max((x.capacity_rps for x in ch.values()), default=0.0) for c, ch in by_class.items()}
    keys = sorted({k for ch in by_class.values() for k in ch})
    params = parameters or {}

    def score(key: ExecKey) -> tuple[int, float]:
        covered = [c for c, ch in by_class.items() if key in ch]
        return len(covered), sum(by_class[c][key].capacity_rps / best[c] for c in covered)

    order = sorted(keys, key=score, reverse=True)  # stable: ties keep the sorted keys' order
    # (capacity, memory) of each class at each key it can run
    figures = {
        key: {
            c: (ch[key].capacity_rps, _resident(profs[c], ch[key].point, params.get(c)))
            for c, ch in by_class.items()
            if key in ch
        }
        for key in order
    }

    def dominates(a: ExecKey, b: ExecKey) -> bool:
        fa, fb = figures[a], figures[b]
        if not fb.keys() <= fa.keys():
            return False
        if any(fa[c][0] < fb[c][0] or fa[c][1] > fb[c][1] for c in fb):
            return False
        strictly = fa.keys() > fb.keys() or any(fa[c][0] > fb[c][0] or fa[c][1] < fb[c][1] for c in fb)
        return strictly or order.index(a) < order.index(b)

    kept = [k for k in order if not any(dominates(other, k) for other in order if other != k)]
    return [{c: ch[key] for c, ch in by_class.items() if key in ch} for key in kept]


def choose_point(
    inst: InstanceType,
    points: list[OperatingPoint],
    per_device: int,
    options: PlanOptions,
    measured_overhead_ms: float | None = None,
    measured_overhead_p90_ms: float | None = None,
) -> TypeChoice | None:
    """The operating point with the highest capacity under the objective, or None if none meets it.
    The request overhead is `options.request_overhead_ms` when given (median and P90 alike), else the
    profile's measurement (its median and P90)."""
    best: TypeChoice | None = None
    overhead_ms, overhead_p90_ms = options.request_overhead_ms, None
    if overhead_ms is None:
        overhead_ms, overhead_p90_ms = measured_overhead_ms or 0.0, measured_overhead_p90_ms
    for point in points:
        if point.dtype not in options.dtypes:
            continue
        workers = _workers(inst, point, per_device, options)
        if workers < 1:
            continue
        # On CPU servers the per-request overhead runs on the workers' cores; on accelerator servers the
        # host CPUs do it alongside the device, so it adds latency but not device time.
        shape = service_shape(point, overhead_ms, overhead_p90_ms)
        median_service = 1.0 / point.worker_rps() + (0.0 if _on_accelerator(inst) else overhead_ms / 1000.0)
        service = median_service * shape.mean_s / shape.median_s
        latency = point.latency_ms + overhead_ms
        cap = max_rate_rps(workers, latency, service, options.slo_p90_ms, options.max_utilisation, shape.cv)
        if cap > 0 and (best is None or cap > best.capacity_rps):
            best = TypeChoice(point, workers, cap, service, latency, shape.cv)
    return best


def build_problem(
    models: list[ModelDemand], catalog: Catalog, profiles: ProfileSet, options: PlanOptions
) -> Problem:
    """Turn models, catalog, profiles and options into a `Problem`; PlanError when no plan can exist."""
    if not models:
        raise PlanError("no models to plan")
    if len({m.id for m in models}) != len(models):
        raise PlanError("model ids must be unique")
    classes = sorted({m.model_class for m in models})
    missing = [c for c in classes if c not in profiles.classes]
    if missing:
        raise PlanError(f"no profile for model class(es) {missing}", hint="pass --profiles FILE")
    types = [i for i in catalog.instances if _allowed(i.name, options.instance_types)]
    types = [i for i in types if any(profiles.lookup(c, i.name) is not None for c in classes)]
    if not types:
        raise PlanError("no allowed instance type has a profile for these models")

    # One column per (instance type, execution key): a server is one column, so it runs one key by
    # construction, and the solvers pick the cheapest mix of types AND keys (see `type_variants`).
    n_c = len(classes)
    columns: list[InstanceType] = []
    keys: list[ExecKey | None] = []
    column_coef: list[FloatArray] = []
    choices: dict[tuple[int, int], TypeChoice] = {}
    for inst in types:
        profs = {
            c: p for c, name in enumerate(classes) if (p := profiles.lookup(name, inst.name)) is not None
        }
        usable = usable_memory_mb(inst, options) - max(p.server_overhead_mb for p in profs.values())
        usable_acc = inst.accelerator_memory_mb - max(p.accelerator_overhead_mb for p in profs.values())
        proc = profiles.processor(inst.name)
        params = {c: profiles.classes[classes[c]].parameters for c in profs}
        variants = type_variants(inst, profs, options, proc.native_dtypes if proc else None, params)
        placed = False
        for variant in variants if usable > 0 else []:
            col = np.full((n_c, 3), np.inf)
            t = len(columns)
            for c, choice in variant.items():
                name, prof = classes[c], profs[c]
                scale = 1.0 / profiles.classes[name].reference_memory_mb
                if prof.accelerator_mb > 0:
                    if inst.accelerator_count == 0 or usable_acc <= 0:
                        continue
                    acc_coef = scale * prof.accelerator_mb / usable_acc
                else:
                    acc_coef = 0.0
                # the key's own memory: bf16 halves eager weights, an ONNX Runtime session holds its own
                # fp32 copy of them
                resident = _resident(prof, choice.point, params[c])
                col[c] = (scale * resident / usable, 1.0 / choice.capacity_rps, acc_coef)
                choices[(c, t)] = choice
            if np.isfinite(col).any():
                columns.append(inst)
                keys.append(next(iter(variant.values())).key)
                column_coef.append(col)
                placed = True
        if not placed:  # kept as a column nothing fits, as every allowed type always was
            columns.append(inst)
            keys.append(None)
            column_coef.append(np.full((n_c, 3), np.inf))
    coef = np.stack(column_coef, axis=1)

    class_of = {name: c for c, name in enumerate(classes)}
    class_index = np.array([class_of[m.model_class] for m in models], dtype=np.int64)
    mem = np.array([m.memory_mb for m in models], dtype=np.float64)
    rate = np.array([m.rate_rps for m in models], dtype=np.float64)
    if np.any(mem <= 0) or np.any(rate < 0):
        raise PlanError("memory_mb must be > 0 and rate_rps >= 0 for every model")
    copies = _copies(class_index, mem, rate, coef, options)
    max_models = options.max_models_per_server or (1 << 30)
    problem = Problem(
        model_ids=[m.id for m in models],
        model_classes=classes,
        class_index=class_index,
        memory_mb=mem,
        rate_per_copy=rate / copies,
        copies=copies,
        types=columns,
        prices=np.array([i.price_per_hour for i in columns], dtype=np.float64),
        coef=coef,
        max_models=max_models,
        choices=choices,
        keys=keys,
    )
    homeless = np.flatnonzero(~problem.fits.any(axis=1))
    if homeless.size:
        ids = [problem.model_ids[i] for i in homeless[:3]]
        raise PlanError(
            f"{homeless.size} model(s) fit no allowed instance type (memory or latency), e.g. {ids}",
            hint="allow larger instance types, relax --slo-p90-ms, or check memory_mb",
        )
    return problem


def _copies(
    class_index: IntArray, mem: FloatArray, rate: FloatArray, coef: FloatArray, options: PlanOptions
) -> IntArray:
    """Copies per model: at least `min_copies`, more for models hotter than `max_copy_load` of a server."""
    n = len(mem)
    copies = np.full(n, options.min_copies, dtype=np.int64)
    # Capacity of the best type for each model's class, among types where the model's memory fits.
    c = coef[class_index]
    mem_ok = (mem[:, None] * c[:, :, 0] <= 1.0 + EPS) & (mem[:, None] * c[:, :, 2] <= 1.0 + EPS)
    with np.errstate(divide="ignore"):
        cap = np.where(mem_ok, 1.0 / c[:, :, 1], 0.0)
    best = cap.max(axis=1) if cap.shape[1] else np.zeros(n)
    hot = (rate > 0) & (best > 0)
    need = np.ones(n, dtype=np.int64)
    need[hot] = np.ceil(rate[hot] / (options.max_copy_load * best[hot]) - 1e-12).astype(np.int64)
    return np.maximum(copies, need)
