"""The model registry: which models this server knows, their lifecycle, and their batchers.

States: `unavailable` (known, not loaded) -> `loading` -> `ready`; `failed` (with the reason) when a load
fails; `unloading` while draining. Exactly one load runs per model at a time (a per-model lock: concurrent
first requests wait for the same load), and a bounded number of loads run at once, so one slow load never
blocks other models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from inferpack.errors import ModelLoadFailed, ModelNotFound, ModelNotReady
from inferpack.repository.ids import validate_model_id
from inferpack.repository.local import ModelRepository
from inferpack.runtime.batcher import BatchObserver, InferencePool, ModelBatcher
from inferpack.runtime.modeling import LoadedModel, load_model
from inferpack.settings import ServerSettings

State = Literal["unavailable", "loading", "ready", "unloading", "failed"]
Loader = Callable[[ModelRepository, str, int | None], LoadedModel]
LoadObserver = Callable[[str, float, bool], None]  # model, seconds, succeeded


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


class ModelRegistry:
    """Owns model lifecycles for one server."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServerSettings,
        pool: InferencePool,
        *,
        loader: Loader | None = None,
        max_concurrent_loads: int = 2,
        batch_observer: BatchObserver | None = None,
        load_observer: LoadObserver | None = None,
        lazy_load: bool = False,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.pool = pool
        self.lazy_load = lazy_load
        self._loader = loader or self._default_loader
        self._load_slots = asyncio.Semaphore(max_concurrent_loads)
        self._load_executor = ThreadPoolExecutor(max_workers=max_concurrent_loads, thread_name_prefix="load")
        self._entries: dict[str, ModelEntry] = {}
        self._batch_observer = batch_observer
        self._load_observer = load_observer
        self._known: set[str] = set()
        self.refresh()

    def _default_loader(self, repository: ModelRepository, model_id: str, version: int | None) -> LoadedModel:
        return load_model(
            repository,
            model_id,
            version,
            dtype=self.settings.dtype,
            max_sequence_length=self.settings.max_sequence_length,
        )

    def refresh(self) -> list[str]:
        """Re-read the repository's model list (new models become known, loaded ones stay)."""
        self._known = set(self.repository.model_ids())
        return sorted(self._known)

    def known(self, model_id: str) -> bool:
        """True when the repository has the model."""
        return model_id in self._known or model_id in self._entries

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
                    hint="GET /v2/repository/index (POST) lists the models this server knows",
                )
        return self._entries.setdefault(model_id, ModelEntry(model_id))

    def entries(self) -> list[ModelEntry]:
        """An entry for every known model, sorted by id."""
        return [self._entries.get(m) or ModelEntry(m) for m in sorted(self._known | set(self._entries))]

    def ready_models(self) -> list[str]:
        """Ids of the loaded models."""
        return sorted(m for m, e in self._entries.items() if e.state == "ready")

    async def load(self, model_id: str, version: int | None = None) -> tuple[ModelEntry, bool]:
        """Load (single flight); returns the entry and whether this call did the load. Raises on failure."""
        entry = self.entry(model_id)
        if entry.state == "ready" and (version is None or version == entry.version):
            return entry, False
        async with entry.lock:
            if entry.state == "ready" and (version is None or version == entry.version):
                return entry, False  # someone else loaded it while we waited
            if entry.state == "ready":
                await self._unload_locked(entry)
            entry.state, entry.reason = "loading", ""
            started = time.perf_counter()
            async with self._load_slots:
                try:
                    loaded = await asyncio.get_running_loop().run_in_executor(
                        self._load_executor, self._loader, self.repository, model_id, version
                    )
                except Exception as exc:
                    entry.state = "failed"
                    entry.reason = (
                        exc.message
                        if isinstance(exc, ModelLoadFailed)
                        else f"model {model_id!r} failed to load: {type(exc).__name__}: {exc}"
                    )
                    if self._load_observer:
                        self._load_observer(model_id, time.perf_counter() - started, False)
                    if isinstance(exc, ModelNotFound | ModelLoadFailed):
                        raise
                    raise ModelLoadFailed(entry.reason) from exc
            entry.loaded = loaded
            entry.version = loaded.version
            entry.batcher = ModelBatcher(loaded, self.pool, self.settings.batching, self._batch_observer)
            entry.state = "ready"
            entry.last_used = time.monotonic()
            if self._load_observer:
                self._load_observer(model_id, time.perf_counter() - started, True)
            return entry, True

    async def unload(self, model_id: str) -> None:
        """Drain and drop a model; its other requests finish first."""
        entry = self.entry(model_id)
        async with entry.lock:
            await self._unload_locked(entry)

    async def _unload_locked(self, entry: ModelEntry) -> None:
        if entry.state != "ready" or entry.batcher is None:
            entry.state = "unavailable" if entry.state != "failed" else entry.state
            return
        entry.state = "unloading"
        batcher = entry.batcher
        await batcher.close(drain=True)
        entry.batcher, entry.loaded, entry.version = None, None, None
        entry.state, entry.reason = "unavailable", ""

    async def ready_batcher(self, model_id: str) -> tuple[ModelBatcher, bool]:
        """The batcher of a ready model (lazy-loading it when enabled); the flag says it was cold."""
        entry = self.entry(model_id)
        cold = False
        if entry.state != "ready" or entry.batcher is None:
            if not self.lazy_load:
                failed = entry.state == "failed" and entry.reason
                raise ModelNotReady(
                    entry.reason if failed else f"model {model_id!r} is {entry.state}",
                    hint=f"load it with POST /v2/repository/models/{model_id}/load",
                )
            entry, cold = await self.load(model_id)
        entry.last_used = time.monotonic()
        assert entry.batcher is not None  # ready implies a batcher
        return entry.batcher, cold

    async def close(self) -> None:
        """Drain every model and stop the load threads."""
        for entry in list(self._entries.values()):
            async with entry.lock:
                await self._unload_locked(entry)
        self._load_executor.shutdown(wait=False, cancel_futures=True)
