"""`inferpack profile`: measure models on this machine and write a profile file for the planner.

Per architecture (models whose weights differ but whose shape does not are measured once): cold-load
time, resident memory added (an RSS delta, measured), latency at each batch size, thread count and
dtype, and peak throughput per core. The result is tagged with the hardware it ran on.

Where a server would trace the model (compile/tracing.py `traceable`: an eager module of a safetensors
version on the CPU; servers costed on such points run engine eager, which traces), every point is timed a
second time on the traced graph made by `traced` itself (the server's own function: packed weights,
warm-up and fidelity checks included), its forwards alternating with the eager ones (a shared host's
load weighs on both alike), and the graph's extra memory per model is recorded
(`ModelProfile.traced_mb`): a hot model on a server runs that graph, not the eager forward.

Measurement needs a clock, an RSS reader and a model loader; they are parameters so the logic can be
tested without timing real models.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from inferpack.compile.tracing import WARM_UP_CALLS, traceable, traced
from inferpack.errors import ConfigError, InferpackError, ModelLoadFailed
from inferpack.planner.profiles import (
    DType,
    HardwareTag,
    ModelClass,
    ModelProfile,
    OperatingPoint,
    ProfileFile,
)
from inferpack.repository.local import ModelRepository
from inferpack.repository.manifest import Manifest
from inferpack.runtime.hardware import cpu_model, usable_cores
from inferpack.runtime.modeling import LoadedModel, load_model, model_storages
from inferpack.runtime.tasks import TextInput, handler_for

MB = 2**20
log = logging.getLogger("inferpack.profile")
# Long enough to be truncated to any model's max_sequence_length, so latencies are at full length.
_WORDS = (
    "inferpack serves thousands of unique models behind one endpoint and plans the cheapest fleet "
    "that keeps every request within its latency objective across instance types "
) * 40

Loader = Callable[[ModelRepository, str, DType], LoadedModel]
# a loaded eager model -> the same model with its traced graph, as the server makes it (`traced`)
Tracer = Callable[[LoadedModel], LoadedModel]


@dataclass
class ProfileRequest:
    """What to measure."""

    batch_sizes: list[int]
    threads: list[int]
    dtypes: list[DType]
    repeats: int = 10
    instance_types: list[str] | None = None  # catalog names this machine stands for; default "local"
    model_class: str | None = (
        None  # the planner class these models belong to (e.g. bert-base); default: shape key
    )
    traced: bool = True  # also time the traced graph where a server would trace the model


def default_loader(repository: ModelRepository, model_id: str, dtype: DType) -> LoadedModel:
    """Load with the runtime (warm-up included, so the load time is files-to-first-answer)."""
    if dtype not in ("fp32", "bf16"):
        raise ConfigError(f"dtype {dtype} cannot be profiled on CPU yet (use fp32 or bf16)")
    return load_model(repository, model_id, dtype="bf16" if dtype == "bf16" else "fp32")


def process_rss() -> int:
    """Resident set size of this process, bytes."""
    return int(psutil.Process().memory_info().rss)


def _model_config(repository: ModelRepository, model_id: str) -> dict[str, Any]:
    """The model's config.json (transformers' shape fields), or {} when it has none or it is unreadable."""
    version = repository.versions(model_id)[-1]
    manifest = repository.manifest(model_id, version)
    if not manifest.config:
        return {}
    try:
        config = json.loads((repository.version_dir(model_id, version) / manifest.config).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def model_shape(repository: ModelRepository, model_id: str) -> dict[str, int]:
    """The encoder shape the planner derives FLOPs per request from (`ModelClass` fields): layers, hidden
    and feed-forward sizes from config.json, and the sequence length the profiler times (the manifest's
    maximum); {} when the config lacks them."""
    config = _model_config(repository, model_id)
    manifest = repository.manifest(model_id, repository.versions(model_id)[-1])
    fields = {"layers": "num_hidden_layers", "hidden": "hidden_size", "intermediate": "intermediate_size"}
    shape = {k: config.get(v) for k, v in fields.items()}
    if not all(isinstance(v, int) and v > 0 for v in shape.values()):
        return {}
    return {**{k: int(v) for k, v in shape.items() if v}, "sequence_length": manifest.max_sequence_length}


def architecture_key(repository: ModelRepository, model_id: str) -> str:
    """A name for the model's shape: same key, same speed and size (weights may differ)."""
    versions = repository.versions(model_id)
    manifest = repository.manifest(model_id, versions[-1])
    parts = [manifest.format, manifest.dtype, manifest.quantization, str(manifest.max_sequence_length)]
    config = _model_config(repository, model_id)
    if config:
        shape = (
            f"{config.get('model_type', 'model')}-l{config.get('num_hidden_layers')}"
            f"-h{config.get('hidden_size')}-i{config.get('intermediate_size')}"
        )
    else:
        shape = f"{manifest.task}-h{manifest.hidden_size}-p{manifest.parameters}"
    return "-".join([shape, *[p for p in parts if p not in ("none",)]]).lower()


def group_by_architecture(repository: ModelRepository, model_ids: list[str]) -> dict[str, list[str]]:
    """Model ids per architecture key, in the given order."""
    groups: dict[str, list[str]] = {}
    for model_id in model_ids:
        groups.setdefault(architecture_key(repository, model_id), []).append(model_id)
    return groups


def request_item(manifest: Manifest) -> TextInput:
    """One full-length input for the model's task: as many words as its sequence length (each word is
    at least one token), so it is truncated to full length without tokenising much more than that."""
    words = " ".join(_WORDS.split()[: manifest.max_sequence_length])
    pair = handler_for(manifest.task).pair_input
    return TextInput("what does inferpack plan?", words) if pair else TextInput(words)


def batch_of(model: LoadedModel, size: int) -> list[TextInput]:
    """A batch of full-length inputs for the model's task."""
    return [request_item(model.manifest)] * size


def time_forward(
    model: LoadedModel,
    size: int,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    warm_up: int = 2,
) -> tuple[float, float]:
    """Median and P90 milliseconds of one forward of a batch of `size` (tokenised once, `warm_up`
    runs first: a traced graph's profiling executor optimises for a new shape over its first calls)."""
    return time_side_by_side([model], size, repeats, clock, warm_up)[0]


def time_side_by_side(
    models: list[LoadedModel],
    size: int,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
    warm_up: int = 2,
) -> list[tuple[float, float]]:
    """`time_forward` of each of `models` (runtimes of one model: the eager module, its traced graph),
    their forwards alternating, so a change in what else runs on the cores (a shared host) weighs on
    each alike and their ratio holds."""
    encoded = models[0].tokenizer.encode(batch_of(models[0], size))
    for model in models:
        for _ in range(warm_up):
            model.forward(encoded)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(max(1, repeats)):
        for model, taken in zip(models, times, strict=True):
            start = clock()
            model.forward(encoded)
            taken.append((clock() - start) * 1000.0)
    return [(float(statistics.median(t)), float(np.quantile(t, 0.9))) for t in times]


def hardware() -> HardwareTag:
    """This machine's tag (CPU only for now)."""
    machine = platform.machine().lower()
    arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
    accel = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return HardwareTag(
        cpu_model=cpu_model(),
        architecture=arch,
        cores=usable_cores(),
        accelerator=accel,
        accelerator_count=torch.cuda.device_count() if accel else 0,
        torch_version=torch.__version__,
    )


@dataclass
class Measured:
    """One architecture's measurements, before they become a `ModelProfile`."""

    key: str
    model_ids: list[str]
    cold_load_s: float
    resident_mb: float
    resident_from_second_model: bool
    parameters: int | None
    points: list[OperatingPoint]
    failed: dict[str, str]
    shape: dict[str, int] = field(default_factory=dict)  # ModelClass shape fields (FLOPs per request)
    traced_mb: dict[DType, float] = field(default_factory=dict)  # a traced graph's memory per model
    traced_notes: list[str] = field(default_factory=list)  # how each traced_mb figure was found


def measure_architecture(
    repository: ModelRepository,
    key: str,
    model_ids: list[str],
    request: ProfileRequest,
    *,
    loader: Loader = default_loader,
    rss: Callable[[], int] = process_rss,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] | None = None,
    tracer: Tracer = traced,
    can_trace: Callable[[LoadedModel], bool] = traceable,
) -> Measured:
    """Load one or two models of an architecture and time it at every requested point, and at every
    point again on its traced graph where a server would trace it (`trace_memory`, `time_points`).

    Memory is the RSS delta of loading (and running) a model. The first model of a process also pays
    one-off costs (kernels, tokenizer), so when a second model of the same shape exists its delta is
    the one reported: the marginal memory of one more model on a server."""
    first_dtype = request.dtypes[0]
    loaded: list[tuple[str, LoadedModel, float, float]] = []
    failed: dict[str, str] = {}
    for model_id in model_ids:
        if len(loaded) == 2:
            break
        before = rss()
        start = clock()
        try:
            candidate = loader(repository, model_id, first_dtype)
        except InferpackError as exc:  # a broken model is reported; its shape-mates stand in for it
            failed[model_id] = str(exc)
            continue
        loaded.append((model_id, candidate, clock() - start, (rss() - before) / MB))
    if not loaded:
        raise ModelLoadFailed(f"no model of architecture {key} loads: {failed}")
    first_id, model, load_s, resident = loaded[0]
    from_second = len(loaded) > 1
    # the second model stays for the traced graph's memory: a second graph's is the marginal one
    mate_id, mate = (loaded[1][0], loaded[1][1]) if from_second and request.traced else (None, None)
    if from_second:
        _, _, load_s, resident = loaded[1]
    del loaded, candidate
    parameters = model.manifest.parameters
    points: list[OperatingPoint] = []
    traced_mb: dict[DType, float] = {}
    traced_notes: list[str] = []
    old_threads = torch.get_num_threads()
    try:
        for dtype in request.dtypes:
            if dtype != first_dtype:
                del model, mate
                gc.collect()
                model = loader(repository, first_id, dtype)
                mate = None if mate_id is None else loader(repository, mate_id, dtype)
            fast = None
            if request.traced and can_trace(model):
                found = trace_memory(model, dtype, tracer, mate=mate, can_trace=can_trace, rss=rss)
                if found is not None:
                    fast, traced_mb[dtype], note = found
                    traced_notes.append(note)
                else:
                    traced_notes.append(f"{dtype}: no traced points (tracing failed or disagreed)")
            points += time_points(model, fast, dtype, request, clock, progress, label=key)
            del fast
    finally:
        torch.set_num_threads(old_threads)
        del model, mate
        gc.collect()
    shape = model_shape(repository, model_ids[0])
    return Measured(
        key,
        model_ids,
        load_s,
        max(resident, 1.0),
        from_second,
        parameters,
        points,
        failed,
        shape,
        traced_mb,
        traced_notes,
    )


def time_points(
    model: LoadedModel,
    fast: LoadedModel | None,
    dtype: DType,
    request: ProfileRequest,
    clock: Callable[[], float],
    progress: Callable[[str], None] | None,
    *,
    label: str,
) -> list[OperatingPoint]:
    """One point per (threads, batch size) of `request` on `model`'s eager forward, and with `fast` (the
    same model traced) one more on its graph (`traced`), timed side by side with the eager one; eager
    points first, then traced ones."""
    eager: list[OperatingPoint] = []
    graph: list[OperatingPoint] = []
    runtimes = [model] if fast is None else [untraced(model), fast]
    warm_up = 2 if fast is None else max(2, WARM_UP_CALLS)
    for threads in request.threads:
        torch.set_num_threads(threads)
        for size in request.batch_sizes:
            if progress is not None:
                how = "" if fast is None else " eager and traced"
                progress(f"{label}: {dtype}{how}, {threads} thread(s), batch {size}")
            timed = time_side_by_side(runtimes, size, request.repeats, clock, warm_up)
            for (latency, p90), out in zip(timed, (eager, graph), strict=False):
                out.append(
                    OperatingPoint(
                        batch_size=size,
                        threads=threads,
                        dtype=dtype,
                        traced=out is graph,
                        latency_ms=latency,
                        latency_p90_ms=p90,
                    )
                )
    return eager + graph


def untraced(model: LoadedModel) -> LoadedModel:
    """`model` as a server that never traces runs it: its eager module alone. (Beside a traced tenant of
    its base, an eager tenant runs the base's shared layers through that tenant's trunk of graphs,
    runtime/modeling.py `_module_for`; a plan's eager servers trace nothing, so no trunk exists there.)"""
    extra = {k: v for k, v in model.extra.items() if k != "own_paths"}
    return dataclasses.replace(model, extra=extra)


def trace_memory(
    model: LoadedModel,
    dtype: DType,
    tracer: Tracer,
    *,
    mate: LoadedModel | None = None,
    can_trace: Callable[[LoadedModel], bool] = traceable,
    rss: Callable[[], int] = process_rss,
) -> tuple[LoadedModel, float, str] | None:
    """`model` traced (as a server traces it), the graph's extra memory per model (MiB) and how that was
    found; None when the model cannot be traced (tracing fails or the graph disagrees: the server then
    keeps eager too, so the profile has no traced point).

    Memory is that of the second traced model (`mate`, a model of the same shape, traced while the first
    graph lives) when there is one, as `resident_mb` is the second model's: the first trace of a process
    pays one-off costs (TorchScript's and oneDNN's own state), and the first tenant of a base also makes
    the graphs and packed weights its base's other tenants share (compile/tracing.py). Of that model it
    is the larger of two figures: the RSS growth of tracing, what a server process grows by (its memory
    limit is RSS; it may read low where freed pages of an earlier dtype are reused), and the ledger's
    growth (runtime/modeling.py `model_storages`: graph IR estimates and prepacked weights, each shared
    one once), what the server's memory budget charges before it keeps a graph. The larger never
    under-counts what the plan must hold."""
    gc.collect()
    before_rss, before_ledger = rss(), _ledger_bytes([model, *([mate] if mate else [])])
    try:
        fast = tracer(model)
    except InferpackError as exc:
        log.warning("%s %s: no traced points: %s", model.model_id, dtype, exc)
        return None
    grown = (rss() - before_rss) / MB
    ledger = (_ledger_bytes([fast, *([mate] if mate else [])]) - before_ledger) / MB
    which = "first"
    if mate is not None and can_trace(mate):
        before_rss, before_ledger = rss(), _ledger_bytes([fast, mate])
        try:
            second = tracer(mate)
        except InferpackError as exc:  # the first model's figures stand
            log.warning("%s %s: not traced: %s", mate.model_id, dtype, exc)
        else:
            grown = (rss() - before_rss) / MB
            ledger = (_ledger_bytes([fast, second]) - before_ledger) / MB
            which = "second"
            del second
            gc.collect()
    note = (
        f"{dtype}: {which} traced model's max(RSS growth {grown:.1f} MiB, ledger growth {ledger:.1f} MiB) "
        f"= {'RSS' if grown >= ledger else 'ledger'}"
    )
    return fast, max(grown, ledger, 0.1), note


def _ledger_bytes(models: list[LoadedModel]) -> int:
    """What the server's ledger holds for `models` together: each storage (a shared layer, a packed
    weight, a base's trunk of graphs) once."""
    storages: dict[int, int] = {}
    for m in models:
        storages.update(model_storages(m))
    return sum(storages.values())


def dtype_memory(m: Measured, dtypes: list[DType]) -> dict[DType, float]:
    """Host memory per model by dtype: the measured RSS delta for the dtype loaded first; for bf16 after an
    fp32 measurement, that less half the fp32 weights (4 bytes a parameter become 2), a derived figure:
    the RSS of a second dtype in the same process is not measurable (freed memory stays mapped)."""
    first = dtypes[0]
    memory: dict[DType, float] = {first: m.resident_mb}
    if first == "fp32" and "bf16" in dtypes and m.parameters:
        memory["bf16"] = max(1.0, m.resident_mb - m.parameters * 2 / MB)
    return memory


def to_profile_file(
    measured: list[Measured], server_overhead_mb: float, request: ProfileRequest, tag: HardwareTag, when: str
) -> ProfileFile:
    """The profile file for a set of measurements."""
    classes: list[ModelClass] = []
    profiles: list[ModelProfile] = []
    for m in measured:
        one_thread = [p for p in m.points if p.threads == 1]
        peak = max((p.worker_rps() for p in one_thread), default=None)
        name = request.model_class or m.key
        how = (
            f"measured: `inferpack profile` on {when}, {tag.cpu_model}, median of {request.repeats} forwards"
        )
        points = [p.model_copy(update={"source": how}) for p in m.points]
        classes.append(
            ModelClass(
                name=name,
                parameters=m.parameters or None,
                reference_memory_mb=m.resident_mb,
                description=f"measured from {', '.join(m.model_ids[:2])}",
                **m.shape,
            )
        )
        memory = dtype_memory(m, request.dtypes)
        traced_note = f"; traced graph memory = {'; '.join(m.traced_notes)}" if m.traced_notes else ""
        memory_note = (
            "second model's RSS delta" if m.resident_from_second_model else "first model's RSS delta"
        )
        profiles.append(
            ModelProfile(
                model_class=name,
                instance_types=request.instance_types or ["local"],
                hardware=tag,
                cold_load_s=m.cold_load_s,
                resident_mb=m.resident_mb,
                memory_by_dtype=memory,
                traced_mb=m.traced_mb,
                server_overhead_mb=server_overhead_mb,
                points=points,
                peak_throughput_per_core=peak,
                estimated=False,
                source=(
                    f"measured by `inferpack profile` on {when}: median and P90 of {request.repeats} "
                    f"forwards at full sequence length; memory = {memory_note}; "
                    "overhead = process RSS before loading"
                    + (
                        "; bf16 memory derived: less 2 bytes per parameter from the fp32 one"
                        if "bf16" in memory and len(memory) > 1
                        else ""
                    )
                    + traced_note
                ),
            )
        )
    return ProfileFile(
        created_by="inferpack profile",
        notes=f"{tag.cpu_model}, {tag.cores} cores, torch {tag.torch_version}",
        model_classes=classes,
        profiles=profiles,
    )


def profile_repository(
    repository: ModelRepository,
    model_ids: list[str],
    request: ProfileRequest,
    *,
    when: str,
    loader: Loader = default_loader,
    rss: Callable[[], int] = process_rss,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] | None = None,
    tracer: Tracer = traced,
) -> tuple[ProfileFile, dict[str, str]]:
    """Measure every architecture among `model_ids`; returns the file and what failed (model id or
    architecture -> reason)."""
    if not model_ids:
        raise ConfigError("no models to profile")
    overhead = rss() / MB
    groups = group_by_architecture(repository, model_ids)
    measured: list[Measured] = []
    failed: dict[str, str] = {}
    for key, ids in groups.items():
        try:
            result = measure_architecture(
                repository,
                key,
                ids,
                request,
                loader=loader,
                rss=rss,
                clock=clock,
                progress=progress,
                tracer=tracer,
            )
        except InferpackError as exc:
            failed[key] = str(exc)
            continue
        measured.append(result)
        failed.update(result.failed)
    if not measured:
        raise ConfigError(f"no model could be profiled: {failed}")
    return to_profile_file(measured, overhead, request, hardware(), when), failed


def write_profile(profile: ProfileFile, path: Path) -> None:
    """Write a profile file (indented JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.model_dump_json(indent=2, exclude_none=True) + "\n")
