"""The model registry: which models this server knows, their lifecycle, their memory, and their batchers.

States: `unavailable` (known, not loaded) -> `loading` -> `ready`; `failed` (with the reason) when a load
fails; `unloading` while draining; `evicted` after the memory budget or the idle timer unloaded it.

Policies:
- single flight: one load per model at a time (a per-model lock; concurrent first requests share it), and a
  bounded number of loads at once, so one slow load never blocks other models;
- lazy loading (optional): a known model loads on its first request, which is marked cold;
- a memory budget: before a load, least-recently-used idle models are evicted until the newcomer fits;
  memory is what loaded models measurably hold (distinct tensor storages, shared ones counted once);
- thrash protection (segmented LRU, the default `eviction_policy`): a model loaded once and used once is
  evicted before any model that has been used repeatedly, so a stream of one-off cold models cannot flush
  the hot set; or (`frequency`) the model with the lowest decayed use count goes first, counted over its
  whole history, loaded or not (`inferpack.runtime.accessstats`);
- pinned models load at start and are never evicted; busy models (queued or running work) are never evicted;
- idle unload (optional): models unused for `idle_unload_s` are unloaded in the background;
- base trunks (CPU, eager): once the loaded tenants of one base have run `trunk_after_batches` batches
  together, the base's trunk (graphs of its shared layers, compile/tracing.py `base_trunk`) is made on the
  upgrade lane and held here while any tenant of the base is loaded: every tenant, traced or not, runs its
  shared layers on it. It is charged once, to the base (`BaseTrunk.record`), and may evict idle tenants
  when it is small beside the budget (`TRUNK_EVICTS_UNDER`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from inferpack.errors import (
    InferpackError,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
    ModelTooLarge,
    Overloaded,
)
from inferpack.repository.footprint import estimate_resident_bytes
from inferpack.repository.ids import validate_model_id
from inferpack.repository.local import ModelRepository
from inferpack.runtime.accessstats import AccessStats
from inferpack.runtime.batcher import BatchObserver, DropObserver, InferencePool, ModelBatcher
from inferpack.runtime.crossbatch import TRUNKS, Peers, Trunk
from inferpack.runtime.devices import CPU_DEVICE, ResolvedDevice, cuda_free_bytes
from inferpack.runtime.hardware import resolve_dtype
from inferpack.runtime.lanes import BACKGROUND_NICE, load_lane_thread
from inferpack.runtime.memory import MemoryLedger, Storages, module_storages, release_free_memory
from inferpack.runtime.modeling import (
    LoadedModel,
    graphs_bytes,
    load_model,
    model_storages,
    recycle,
    trunk_storages,
)
from inferpack.runtime.shared import SHARED
from inferpack.runtime.skeletons import SKELETONS, SpareShells
from inferpack.runtime.tier import Upgrades
from inferpack.runtime.versions import choose_version, manifest_dtype, onnx_alternate
from inferpack.settings import ServerSettings

log = logging.getLogger("inferpack.registry")
State = Literal["unavailable", "loading", "ready", "unloading", "failed", "evicted"]
Loader = Callable[[ModelRepository, str, int | None, bool], LoadedModel]  # repo, id, version, cold
LoadObserver = Callable[[str, float, bool], None]  # model, seconds, succeeded
PROTECTED_AFTER_HITS = 2  # uses after which a model counts as hot (segmented LRU)


# a loaded model -> the work that makes its traced graph, or None when it cannot be traced
Tracer = Callable[[LoadedModel], Callable[[], LoadedModel] | None]
# a loaded tenant -> the work that makes its base's trunk, or None when it has no base to share one with
Trunker = Callable[[LoadedModel], Callable[[], Trunk] | None]
# A base's trunk may evict idle tenants for its memory when it is at most this share of the budget: it
# makes every forward of every tenant of the base ~18-28% cheaper (MiniLM bf16), for about a dozen
# tenants' worth of memory (a MiniLM base's: ~24 MiB of graphs, estimated, and ~17 MiB of packed weights,
# against ~3.5 MiB of a tenant's own layer), a small share of a density server's resident tenants, and
# the least valued of them (docs/benchmarks.md, Density). Bigger (a budget that holds a few tenants), it
# takes only free budget, as a traced graph does.
TRUNK_EVICTS_UNDER = 0.1


@dataclass
class BaseTrunk:
    """A base some loaded tenants share (`crossbatch.Trunks.key`): its tenants here, the batches they ran
    together since the first of them loaded, and its trunk once made. `record` names its ledger record."""

    record: str
    tenants: set[str] = field(default_factory=set)
    batches: int = 0
    trunk: Trunk | None = None
    making: str | None = None  # the tenant whose module the trunk is being made from
    failed: bool = False  # its trunk could not be made or disagreed: not tried again while it is loaded


@dataclass
class ModelEntry:
    """What the registry knows about one model."""

    model_id: str
    state: State = "unavailable"
    reason: str = ""
    version: int | None = None
    loaded: LoadedModel | None = None
    batcher: ModelBatcher | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = 0.0
    hits: int = 0  # uses since this load
    batches: int = 0  # batches run since this load (a hot eager model is traced: compile/tracing.py)
    reserved: int = 0  # requests holding the model (see ModelRegistry.use): never evicted meanwhile
    memory_bytes: int = 0
    load_seconds: float = 0.0


@dataclass
class RegistryStats:
    """Counters the metrics read at scrape time."""

    hits: int = 0
    misses: int = 0
    evictions: dict[str, int] = field(default_factory=lambda: {"budget": 0, "idle": 0})
    load_failures: int = 0
    swaps: int = 0  # stand-ins replaced by their fast runtime (runtime/tier.py)
    trunks: dict[str, int] = field(default_factory=lambda: {"made": 0, "dropped": 0})  # bases' trunks
    trunks_held: int = 0
    warm_start_loads: int = 0
    warm_start_pending: int = 0
    upgrades_busy: int = 0  # jobs on the upgrade lane: fast runtimes, traced graphs, trunks (runtime/tier.py)


def traces_after(settings: ServerSettings, device_kind: str) -> int:
    """Batches since its load after which a server with these settings traces a model (compile/tracing.py),
    0 for never: only engine eager computing on the CPU traces (the planner costs traced points only for
    servers that do: plan.Execution.traced)."""
    return settings.trace_after_batches if settings.engine == "eager" and device_kind == "cpu" else 0


class ModelRegistry:
    """Owns model lifecycles and memory for one server."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServerSettings,
        pool: InferencePool,
        *,
        loader: Loader | None = None,
        measure: Callable[[LoadedModel], Storages] | None = None,
        estimate: Callable[[str, int | None], int] | None = None,
        batch_observer: BatchObserver | None = None,
        drop_observer: DropObserver | None = None,
        load_observer: LoadObserver | None = None,
        tracer: Tracer | None = None,
        trunker: Trunker | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        device: ResolvedDevice = CPU_DEVICE,
    ) -> None:
        self.repository = repository
        self.device = device
        self.settings = settings
        self.pool = pool
        self.lazy_load = settings.lazy_load
        # On a GPU the budget is device memory: as configured, else what the GPUs had free at start-up
        # less headroom; the ledger measures the models' tensors wherever they live.
        configured = settings.memory_budget_mb
        self.budget_bytes = int(configured * 2**20) if configured else device.memory_budget_bytes()
        self.pinned = set(settings.pinned_models)
        self.ledger = MemoryLedger()
        self.stats = RegistryStats()
        self._loader = loader or self._default_loader
        self._measure = measure or model_storages
        self._estimate = estimate or self._estimate_from_files
        self._clock = clock
        self._wall = wall_clock  # access statistics outlive the process: wall-clock times
        self.access = AccessStats(settings.access_half_life_s)
        self._load_slots = asyncio.Semaphore(settings.max_concurrent_loads)
        self._load_executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_loads,
            thread_name_prefix="load",
            initializer=load_lane_thread,
            initargs=(settings.load_nice,),
        )
        self._entries: dict[str, ModelEntry] = {}
        self._batch_observer = batch_observer
        # hot eager models are traced by `tracer` (compile/tracing.py, given by the server): where the
        # eager engine computes on the CPU
        self._tracer = tracer
        self._trace_after = traces_after(settings, device.kind) if tracer is not None else 0
        self._graph_bytes: dict[object, int] = {}  # module layout (skeleton) -> its last graph's size
        # busy bases get a trunk of graphs (`trunker`: compile/tracing.py), where models are traced
        self._trunker = trunker
        self._trunk_after = (
            settings.trunk_after_batches
            if trunker is not None and settings.engine == "eager" and device.kind == "cpu"
            else 0
        )
        self._bases: dict[tuple[Any, ...], BaseTrunk] = {}  # by `Trunks.key`
        self._base_of: dict[str, tuple[Any, ...]] = {}  # loaded tenant -> its base
        self._base_records = 0  # bases seen: each base's ledger record gets a name of its own
        self._trunk_tasks: set[asyncio.Task[None]] = set()
        self._drop_observer = drop_observer
        self._peers = Peers() if settings.batching.cross_tenant else None
        self._load_observer = load_observer
        self._known: set[str] = set()
        self._idle_task: asyncio.Task[None] | None = None
        self._claimed = 0  # bytes reserved by loads in progress
        # fast runtimes of stand-ins (runtime/tier.py) load on the upgrade lane: background work, niced
        # whatever loads are (a cold load never queues behind a session being created)
        self._upgrades = Upgrades(
            self._swap,
            max(settings.load_nice, BACKGROUND_NICE),
            claim=self._claim_upgrade,
            release=self._release_upgrade,
            on_busy=self._upgrades_busy,
        )
        # module shells for the next cold loads, built in the background (one per load lane)
        self._spares = SpareShells(SKELETONS, settings.max_concurrent_loads)
        self.refresh()

    def _upgrades_busy(self, jobs: int) -> None:
        self.stats.upgrades_busy = jobs

    # loading helpers ------------------------------------------------------------------------------------
    def _default_loader(
        self, repository: ModelRepository, model_id: str, version: int | None, cold: bool
    ) -> LoadedModel:
        return load_model(
            repository,
            model_id,
            version,
            dtype=self.settings.dtype,
            device=self.device.place(cuda_free_bytes if self.device.kind == "cuda" else None),
            max_sequence_length=self.settings.max_sequence_length,
            warmup=None if cold else True,  # a cold request is the warm-up of an eager model
            engine=self.settings.engine,
            tier=True,  # an ONNX version answers from its eager source until its session is ready
            intra_op_threads=self.settings.intra_op_threads,
        )

    def default_version(self, model_id: str) -> int:
        """The version a load without a version picks here (not merely the newest: see choose_version)."""
        device = self.device.name
        dtype = resolve_dtype(self.settings.dtype, device)
        return choose_version(self.repository, model_id, device, dtype, self.settings.engine)

    def _estimate_from_files(self, model_id: str, version: int | None) -> int:
        """Bytes a load will add, before loading (see `repository.footprint`): shared files count only
        when no loaded model holds them already."""
        chosen = version or self.default_version(model_id)
        # a measured footprint is host memory (RSS): on a GPU the weights' size is the estimate
        serving = resolve_dtype(self.settings.dtype, self.device.name)
        return estimate_resident_bytes(
            self.repository,
            model_id,
            chosen,
            already_held=SHARED.holds,
            measured=self.device.kind == "cpu",
            serving_dtype=manifest_dtype(serving),
        )

    # catalogue ------------------------------------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Re-read the repository's model list (new models become known, loaded ones stay)."""
        self._known = set(self.repository.model_ids())
        return sorted(self._known)

    def knows(self, model_id: str) -> bool:
        """Whether the repository (as last listed) has this model."""
        return model_id in self._known

    def estimate(self, model_id: str) -> int:
        """Bytes loading the model's default version would add now (see `_estimate_from_files`)."""
        return self._estimate(model_id, None)

    def access_score(self, model_id: str) -> float:
        """The model's decayed use count now (its access statistics)."""
        return self.access.score(model_id, self._wall())

    def free_budget_bytes(self) -> int | None:
        """Budget not held by loaded models or claimed by loads in flight; None without a budget."""
        if self.budget_bytes is None:
            return None
        return max(0, self.budget_bytes - self.ledger.total_bytes - self._claimed)

    def entry(self, model_id: str) -> ModelEntry:
        """The model's entry; ModelNotFound (404) for an id the repository lacks."""
        validate_model_id(model_id)
        found = self._entries.get(model_id)
        if found is not None:
            return found
        if model_id not in self._known:
            self.refresh()  # a model added to the repository after start-up
            if model_id not in self._known:
                raise ModelNotFound(
                    f"model {model_id!r} not found on this server",
                    hint="the repository index lists the models this server knows",
                    model_id=model_id,
                )
        return self._entries.setdefault(model_id, ModelEntry(model_id))

    def entries(self) -> list[ModelEntry]:
        """An entry for every known model, sorted by id."""
        return [self._entries.get(m) or ModelEntry(m) for m in sorted(self._known | set(self._entries))]

    def required_models(self) -> list[str]:
        """Models this server must hold: those named at start-up (`models`) and the pinned ones; an empty
        list when the settings switch the requirement off or the server loads the whole repository."""
        if not self.settings.ready_requires_models:
            return []
        named = list(self.settings.models or [])
        return list(dict.fromkeys([*self.settings.pinned_models, *named]))

    def failed_required(self) -> dict[str, str]:
        """Required models whose last load failed, with the reason, and those the repository lacks (a typo
        in --models: the load found no entry to mark failed), sorted by id."""
        failed: dict[str, str] = {}
        for model_id in sorted(self.required_models()):
            entry = self._entries.get(model_id)
            if entry is not None and entry.state == "failed":
                failed[model_id] = entry.reason
            elif entry is None and model_id not in self._known:
                failed[model_id] = f"model {model_id!r} is not in the repository"
        return failed

    def ready_models(self) -> list[str]:
        """Ids of the loaded models."""
        return sorted(m for m, e in self._entries.items() if e.state == "ready")

    def ready_batcher(self, model_id: str) -> ModelBatcher | None:
        """The batcher of a loaded, ready model, else None; a plain lookup (no refresh, no load, no
        counters), for the server's early shed before a request is parsed."""
        entry = self._entries.get(model_id)
        return entry.batcher if entry is not None and entry.state == "ready" else None

    def queue_depth(self) -> int:
        """Requests queued over all loaded models."""
        return sum(e.batcher.queue_depth for e in self._entries.values() if e.batcher is not None)

    # lifecycle ------------------------------------------------------------------------------------------
    async def load_startup(self) -> None:
        """Load the start-up models: pinned ones first (they must fit the budget), then those named in the
        settings, or every model in the repository unless the server loads lazily. A model that fails is
        kept as `failed` with its reason and logged; it never stops the others or the server."""
        if self.settings.models is not None:
            wanted = list(self.settings.models)
        elif self.lazy_load:
            wanted = []  # lazy servers load on first use
        else:
            wanted = self.refresh()
        pinned = list(dict.fromkeys(self.settings.pinned_models))
        wanted = [m for m in wanted if m not in self.pinned]

        async def one(model_id: str) -> None:
            try:
                await self.load(model_id)
            except InferpackError as exc:
                log.error("model %s failed to load: %s", model_id, exc)

        await asyncio.gather(*(one(m) for m in pinned))  # before the others, or they could fill the budget
        await asyncio.gather(*(one(m) for m in wanted))

    async def load(
        self, model_id: str, version: int | None = None, *, cold: bool = False
    ) -> tuple[ModelEntry, bool]:
        """Load (single flight); returns the entry and whether this call did the load. Raises on failure."""
        entry = self.entry(model_id)
        if entry.state == "ready" and (version is None or version == entry.version):
            return entry, False
        async with entry.lock:
            if entry.state == "ready" and (version is None or version == entry.version):
                return entry, False  # someone else loaded it while we waited
            if entry.state == "ready":
                await self._unload_locked(entry, "unavailable")
            entry.state, entry.reason = "loading", ""
            started = time.perf_counter()
            try:
                async with self._load_slots:
                    claim = 0
                    if self.budget_bytes is not None:
                        claim = self._estimate(model_id, version)
                        self._check_fits(model_id, claim)  # before evicting anything for it
                        await self._make_room(claim, exclude=model_id)
                        self._claimed += claim  # loads in flight hold their share of the budget
                    try:
                        loaded = await asyncio.get_running_loop().run_in_executor(
                            self._load_executor, self._loader, self.repository, model_id, version, cold
                        )
                    finally:
                        self._claimed -= claim
            except Exception as exc:
                self._load_failed(entry, exc, time.perf_counter() - started)
                if isinstance(exc, ModelNotFound | ModelLoadFailed | Overloaded):
                    raise
                hint = exc.hint if isinstance(exc, InferpackError) else None
                raise ModelLoadFailed(entry.reason, hint=hint) from exc
            self.ledger.add(model_id, self._measure(loaded))
            entry.memory_bytes = self.ledger.model_bytes(model_id)
            entry.loaded, entry.version = loaded, loaded.version
            entry.batcher = ModelBatcher(
                loaded,
                self.pool,
                self.settings.batching,
                self._observe_batch,
                self._peers,
                drop_observer=self._drop_observer,
            )
            entry.state, entry.hits, entry.batches, entry.last_used = "ready", 0, 0, self._clock()
            self._join_base(model_id, loaded)
            entry.load_seconds = time.perf_counter() - started
            if self._load_observer:
                self._load_observer(model_id, entry.load_seconds, True)
            self._upgrades.start(model_id, loaded)  # a stand-in: its fast runtime loads in the background
            self._spares.top_up(loaded.extra.get("skeleton"))  # replace the shell this load took
        if self.budget_bytes is not None and self.ledger.total_bytes > self.budget_bytes:
            await self._make_room(0, exclude=model_id)  # the estimate was low: settle with the measurement
        return entry, True

    def _load_failed(self, entry: ModelEntry, exc: Exception, seconds: float) -> None:
        if isinstance(exc, Overloaded):
            entry.state, entry.reason = "unavailable", ""
            return
        entry.state = "failed"
        entry.reason = (
            exc.message
            if isinstance(exc, InferpackError)
            else f"model {entry.model_id!r} failed to load: {type(exc).__name__}: {exc}"
        )
        self.stats.load_failures += 1
        if self._load_observer:
            self._load_observer(entry.model_id, seconds, False)

    async def unload(self, model_id: str) -> None:
        """Drain and drop a model; its other requests finish first."""
        entry = self.entry(model_id)
        async with entry.lock:
            await self._unload_locked(entry, "unavailable")

    async def _unload_locked(self, entry: ModelEntry, final: State, reason: str = "") -> None:
        # a trace still running reads the module: its shell is then not handed to the next load
        upgrading = self._upgrades.pending(entry.model_id) or self._trunk_source(entry.model_id)
        self._upgrades.cancel(entry.model_id)  # a session still being created is dropped when it arrives
        if entry.state != "ready" or entry.batcher is None:
            if entry.state != "failed":
                entry.state = final
            return
        entry.state = "unloading"
        await entry.batcher.close(drain=True)
        self.ledger.remove(entry.model_id)
        self._leave_base(entry.model_id)
        if entry.loaded is not None:
            recycle(entry.loaded, shell=not upgrading)  # drained: no batch runs on it any more
        entry.batcher, entry.loaded, entry.version, entry.memory_bytes = None, None, None, 0
        entry.state, entry.reason = final, reason
        # hand the freed pages back to the OS, off the event loop (measured: ~2 ms after a big free, ~0 else)
        await asyncio.get_running_loop().run_in_executor(self._load_executor, release_free_memory)

    def _observe_batch(self, model_id: str, size: int, waited_s: float, compute_s: float) -> None:
        """A batch the model took part in has run (on the event loop): the metrics hear of it, and a model
        that has now run `trace_after_batches` batches since its load is traced on the upgrade lane
        (compile/tracing.py), its graph taking over through `_swap`."""
        if self._batch_observer is not None:
            self._batch_observer(model_id, size, waited_s, compute_s)
        if self._trunk_after:
            self._count_base_batch(model_id)
        entry = self._entries.get(model_id) if self._trace_after else None
        if entry is None or entry.state != "ready" or entry.loaded is None:
            return
        entry.batches += 1
        loaded = entry.loaded
        job = self._tracer(loaded) if entry.batches == self._trace_after and self._tracer else None
        if job is None:
            return
        # a graph takes only free budget (see `_swap`): none is made that could not be kept, e.g. on a
        # density server whose budget is full of tenants (sized from an earlier graph of the same layout)
        known = self._graph_bytes.get(loaded.extra.get("skeleton"), 0)
        if self._fits_free(known):
            self._upgrades.start(model_id, loaded, job)

    async def _swap(self, model_id: str, stand_in: LoadedModel, fast: LoadedModel) -> bool:
        """Put a stand-in's fast runtime in its place (see runtime/tier.py); False when the model was
        unloaded, evicted or reloaded meanwhile (the fast runtime is then dropped)."""
        entry = self._entries.get(model_id)
        if entry is None:
            return False
        async with entry.lock:
            if entry.state != "ready" or entry.loaded is not stand_in or entry.batcher is None:
                return False
            if fast.alternate is not None and not self._fits_free(
                sum(module_storages(fast.alternate.module).values())
            ):
                log.info(
                    "model %s stays eager: its ONNX Runtime session does not fit the free budget", model_id
                )
                return False
            if fast.graph is not None:
                # what the graphs add: its base's trunk (and the packed weights it shares) already held
                # for the base is charged already
                size = self.ledger.added_bytes(self._measure(fast))
                self._graph_bytes[fast.extra.get("skeleton")] = graphs_bytes(fast)
                if not self._fits_free(size):
                    log.info("model %s stays eager: its traced graph does not fit the free budget", model_id)
                    return False
            self.ledger.add(model_id, self._measure(fast))  # replaces the stand-in's record
            entry.memory_bytes = self.ledger.model_bytes(model_id)
            entry.loaded = fast
            entry.batcher.replace_model(fast)
            self.stats.swaps += 1
            base = self._bases.get(self._base_of.get(model_id, ()))
            if base is not None and fast.pieces is not None and fast.pieces.trunk is not None:
                self._hold_trunk(
                    base, fast.pieces.trunk, model_id
                )  # its base keeps it: one trunk, one charge
        if self.budget_bytes is not None and self.ledger.total_bytes > self.budget_bytes:
            await self._make_room(0, exclude=model_id)
        return True

    # base trunks ----------------------------------------------------------------------------------------
    def _join_base(self, model_id: str, loaded: LoadedModel) -> None:
        """A tenant of a base is loaded: count it among the base's tenants (its trunk is held meanwhile)."""
        key = TRUNKS.key(loaded) if self._trunk_after else None
        if key is None:
            return
        base = self._bases.get(key)
        if base is None:
            self._base_records += 1  # no model id has a colon: the record's name is no model's
            base = self._bases[key] = BaseTrunk(record=f"trunk:{self._base_records}:{model_id}")
        base.tenants.add(model_id)
        self._base_of[model_id] = key

    def _leave_base(self, model_id: str) -> None:
        """A tenant is unloaded: with the last tenant of its base the base's trunk is dropped, and its
        memory (graphs, packed weights) freed with it."""
        key = self._base_of.pop(model_id, None)
        base = self._bases.get(key) if key is not None else None
        if key is None or base is None:
            return
        base.tenants.discard(model_id)
        if base.tenants:
            return
        del self._bases[key]
        if base.trunk is not None:
            freed = self.ledger.remove(base.record)
            self.stats.trunks["dropped"] += 1
            self.stats.trunks_held -= 1
            log.info(
                "base trunk dropped with the base's last tenant %s (%.1f MiB freed)", model_id, freed / 2**20
            )
            base.trunk = None

    def _trunk_source(self, model_id: str) -> bool:
        """True while a base's trunk is being made from this tenant's module (its shell is not reused)."""
        return any(base.making == model_id for base in self._bases.values())

    def _count_base_batch(self, model_id: str) -> None:
        """A batch the tenant took part in has run: once its base's tenants have run `trunk_after_batches`
        together, the base's trunk is made on the upgrade lane from this tenant's module."""
        key = self._base_of.get(model_id)
        base = self._bases.get(key) if key is not None else None
        entry = self._entries.get(model_id)
        if key is None or base is None or entry is None or entry.loaded is None or entry.state != "ready":
            return
        base.batches += 1
        if base.batches < self._trunk_after or base.trunk is not None or base.making or base.failed:
            return
        # a traced tenant may have made one already (its swap on its way, or refused: then it is on no
        # record of the ledger, and takes the budget as a new one would)
        work: Trunk | Callable[[], Trunk] | None = TRUNKS.get(*key)
        if work is None and self._trunker is not None:
            work = self._trunker(entry.loaded)
        if work is None:
            base.failed = True
            return
        base.making = model_id
        made = self._make_trunk(key, base, model_id, work)
        task = asyncio.get_running_loop().create_task(made)
        self._trunk_tasks.add(task)
        task.add_done_callback(self._trunk_tasks.discard)

    async def _make_trunk(
        self, key: tuple[Any, ...], base: BaseTrunk, model_id: str, work: Trunk | Callable[[], Trunk]
    ) -> None:
        """Make a base's trunk on the upgrade lane (`work`; or take one already made), then hold it for
        the base if its memory can be had (see `_fit_trunk`, `_hold_trunk`)."""
        try:
            trunk = work if isinstance(work, Trunk) else await self._upgrades.run(work)
        except Exception as exc:  # its tenants stay eager: slower, never wrong
            base.failed = True
            log.warning("no base trunk for %s's base: %s", model_id, exc)
            return
        finally:
            base.making = None
        if self._bases.get(key) is not base:
            return  # the base's last tenant went meanwhile: the trunk goes with this task
        if await self._fit_trunk(trunk, model_id) and self._bases.get(key) is base:  # evictions may take
            self._hold_trunk(base, trunk, model_id)  # the base's last tenant
        else:
            base.failed = True  # not made again while the base stays loaded

    async def _fit_trunk(self, trunk: Trunk, model_id: str) -> bool:
        """Whether the trunk's memory can be had: free budget, or, for a trunk at most `TRUNK_EVICTS_UNDER`
        of the budget, idle tenants evicted for it (least valued first, as for a load)."""
        if self.budget_bytes is None:
            return True
        size = self.ledger.added_bytes(trunk_storages(trunk))
        if self._fits_free(size):
            return True
        if size > TRUNK_EVICTS_UNDER * self.budget_bytes:
            log.info(
                "no base trunk for %s's base: %.1f MiB do not fit the free budget", model_id, size / 2**20
            )
            return False
        try:
            await self._make_room(size, exclude=model_id)
        except Overloaded:
            log.info("no base trunk for %s's base: no idle tenant to make room", model_id)
            return False
        return True

    def _hold_trunk(self, base: BaseTrunk, trunk: Trunk, model_id: str) -> None:
        """Hold `trunk` for `base` while any of its tenants is loaded, charged once to the base (tenants
        holding it too count its storages once: the ledger's keys are shared); `model_id` made it."""
        if base.trunk is not None:
            return
        base.trunk = trunk
        self.ledger.add(base.record, trunk_storages(trunk))
        self.stats.trunks["made"] += 1
        self.stats.trunks_held += 1
        log.info(
            "base trunk made for %s's base (%d tenants loaded, %d batches): %d graphs, %.1f MiB charged, "
            "%.0f ms",
            model_id,
            len(base.tenants),
            base.batches,
            len(trunk.graph_list()),
            self.ledger.model_bytes(base.record) / 2**20,
            trunk.seconds * 1000,
        )

    async def _claim_upgrade(self, model_id: str, stand_in: LoadedModel) -> int:
        """Budget for the ONNX Runtime session (its own copy of the weights) an upgrade is about to create,
        held while the eager model still is (runtime/tier.py); 0 without a budget. Engine onnxruntime
        (the session replaces a stand-in): evicts idle models for it like a load; ModelTooLarge when the
        model cannot hold both in the whole budget, Overloaded when nothing more can go. Engine mixed
        (the session joins the eager model for good): only from the free budget, evicting no one
        (`_fits_free`), else Overloaded. On any of them the eager model keeps serving."""
        if self.budget_bytes is None:
            return 0
        replaces = "stand_in_for" in stand_in.extra
        version = (
            stand_in.version if replaces else onnx_alternate(self.repository, model_id, stand_in.version)
        )
        claim = self._estimate(model_id, version)
        if not replaces:
            free = self.free_budget_bytes() or 0
            if claim > free:
                raise Overloaded(
                    f"an ONNX Runtime session of {model_id!r} ({claim / 2**20:.0f} MiB) does not fit the "
                    f"free budget ({free / 2**20:.0f} MiB) beside its eager model",
                    reason="memory_budget",
                    model_id=model_id,
                )
        else:
            self._check_fits(model_id, claim + self.ledger.model_bytes(model_id))
            await self._make_room(claim, exclude=model_id)
        self._claimed += claim
        return claim

    def _release_upgrade(self, claimed: int) -> None:
        """Hand back what `_claim_upgrade` held (the session is on the ledger now, or dropped)."""
        self._claimed -= claimed

    def _fits_free(self, size: int) -> bool:
        """Whether `size` bytes of a runtime beside an eager model (engine mixed's session, a traced
        graph) fit the free budget. It only speeds a model up, so it never evicts another (a density
        server keeps its tenants)."""
        if self.budget_bytes is None:
            return True
        taken = self.ledger.total_bytes + self._claimed  # loads in flight hold their share
        return taken + size <= self.budget_bytes

    def _check_fits(self, model_id: str, claim: int) -> None:
        """ModelTooLarge when a model alone needs more than the whole budget: evicting every other model
        could not make room, so none is evicted and the answer says what to change."""
        assert self.budget_bytes is not None
        if claim > self.budget_bytes:
            raise ModelTooLarge(
                f"model {model_id!r} needs about {claim / 2**20:.1f} MiB, more than this server's whole "
                f"memory budget of {self.budget_bytes / 2**20:.1f} MiB",
                hint=f"raise server.memory_budget_mb above {claim / 2**20:.0f}, or place the model on a "
                "server with more memory (`inferpack plan` sizes servers from the models' footprints)",
            )

    # eviction -------------------------------------------------------------------------------------------
    def _victims(self, exclude: str) -> list[ModelEntry]:
        """Evictable models, first to go first: once-used (probation) before hot, each oldest first; or,
        with the frequency policy, the lowest decayed use count first, the oldest among equals."""
        candidates = [
            e
            for e in self._entries.values()
            if e.state == "ready"
            and e.model_id != exclude
            and e.model_id not in self.pinned
            and e.batcher is not None
            and not e.batcher.busy
            and not e.lock.locked()
            and e.reserved == 0
        ]
        if self.settings.eviction_policy == "frequency":
            now = self._wall()
            return sorted(candidates, key=lambda e: (self.access.score(e.model_id, now), e.last_used))
        return sorted(candidates, key=lambda e: (e.hits >= PROTECTED_AFTER_HITS, e.last_used))

    async def _make_room(self, needed: int, exclude: str) -> None:
        """Evict until `needed` more bytes fit the budget; Overloaded when nothing more can go."""
        assert self.budget_bytes is not None
        give_up = time.monotonic() + self.settings.memory_wait_s
        while self.ledger.total_bytes + self._claimed + needed > self.budget_bytes:
            victims = self._victims(exclude)
            if not victims and needed > 0 and time.monotonic() < give_up:
                # every loaded model is busy or pinned: a busy one is usually idle within a forward or two
                await asyncio.sleep(0.005)
                continue
            if not victims:
                if needed == 0:
                    return  # already loaded and nothing else can go: over budget until something idles
                raise Overloaded(
                    f"memory budget full: {self.ledger.total_bytes / 2**20:.0f} MiB of "
                    f"{self.budget_bytes / 2**20:.0f} MiB held by busy or pinned models; cannot load "
                    f"{exclude!r} ({needed / 2**20:.0f} MiB) now",
                    retry_after_s=1.0,
                    reason="memory_budget",
                    hint="retry shortly, raise server.memory_budget_mb, or move models to another server",
                )
            victim = victims[0]
            async with victim.lock:
                if victim.state == "ready" and victim.batcher is not None and not victim.batcher.busy:
                    log.info(
                        "evicting %s (%d bytes) to fit the memory budget",
                        victim.model_id,
                        victim.memory_bytes,
                    )
                    await self._unload_locked(victim, "evicted", "evicted to fit the memory budget")
                    self.stats.evictions["budget"] += 1

    async def evict_idle(self) -> list[str]:
        """Unload every unpinned, idle model unused for `idle_unload_s`; returns their ids."""
        limit = self.settings.idle_unload_s
        if limit is None:
            return []
        now = self._clock()
        done = []
        for entry in list(self._entries.values()):
            stale = now - entry.last_used >= limit
            if (
                entry.state == "ready"
                and stale
                and entry.model_id not in self.pinned
                and not entry.lock.locked()
                and entry.reserved == 0
            ):
                async with entry.lock:
                    if entry.batcher is not None and not entry.batcher.busy:
                        await self._unload_locked(entry, "evicted", f"unloaded after {limit:g} s idle")
                        self.stats.evictions["idle"] += 1
                        done.append(entry.model_id)
        return done

    def start_background(self) -> None:
        """Start the idle-unload timer (when configured)."""
        limit = self.settings.idle_unload_s
        if limit is None or self._idle_task is not None:
            return

        async def tick() -> None:
            while True:
                await asyncio.sleep(max(0.5, limit / 4))
                try:
                    await self.evict_idle()
                except Exception:  # never let the timer die
                    log.exception("idle unload failed")

        self._idle_task = asyncio.get_running_loop().create_task(tick(), name="idle-unload")

    # requests -------------------------------------------------------------------------------------------
    @asynccontextmanager
    async def use(self, model_id: str) -> AsyncIterator[tuple[ModelBatcher, bool]]:
        """Hold a ready model for one request: (batcher, cold). Lazy-loads when enabled. While held, the
        model cannot be evicted, so a model loaded for a request is still there when the request is queued."""
        entry = self.entry(model_id)
        entry.reserved += 1
        try:
            yield await self._acquire(entry)
        finally:
            entry.reserved -= 1

    async def _acquire(self, entry: ModelEntry) -> tuple[ModelBatcher, bool]:
        cold = False
        self.access.record(entry.model_id, self._wall())
        for _ in range(3):  # an explicit unload may race a lazy load; try again a couple of times
            if entry.state == "ready" and entry.batcher is not None:
                if not cold:
                    self.stats.hits += 1
                entry.last_used = self._clock()
                entry.hits += 1
                return entry.batcher, cold
            if not self.lazy_load:
                failed = entry.state == "failed" and entry.reason
                raise ModelNotReady(
                    entry.reason if failed else f"model {entry.model_id!r} is {entry.state}",
                    hint="load it first (the repository's load operation), or turn on lazy loading",
                    model_id=entry.model_id,
                )
            self.stats.misses += 1
            _, loaded_now = await self.load(entry.model_id, cold=True)
            cold = cold or loaded_now
        raise ModelNotReady(f"model {entry.model_id!r} was unloaded while loading; retry")

    async def close(self) -> None:
        """Stop the timer, drain every model, stop the load threads."""
        if self._idle_task is not None:
            self._idle_task.cancel()
        self._upgrades.cancel_all()
        for task in list(self._trunk_tasks):
            task.cancel()
        for entry in list(self._entries.values()):
            async with entry.lock:
                await self._unload_locked(entry, "unavailable")
        self._load_executor.shutdown(wait=False, cancel_futures=True)
        self._upgrades.shutdown()
        self._spares.close()
