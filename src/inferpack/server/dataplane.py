"""The dataplane: what the server does, independent of any transport.

It takes and returns typed objects: an `InferenceRequest` in, a `Prediction` out; a `ModelDescription` for
metadata; entries for the repository index. No bytes, no JSON, no HTTP: the transports (`seed`, `v2_api`)
parse their wire formats into these and format the answers back, so a new transport (gRPC) adds a module
and changes nothing here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferpack.errors import DeadlineExceeded, ModelNotFound, ModelNotReady, Overloaded
from inferpack.repository.manifest import DType, Format, Manifest, Task
from inferpack.runtime.registry import ModelRegistry, State
from inferpack.runtime.tasks import InputSpec, OutputSpec, Result, TaskHandler, TextInput, handler_for
from inferpack.server.metrics import ServerMetrics


@dataclass(frozen=True)
class InferenceOptions:
    """How a request wants its answers. `postprocess=False`: the model's own output tensors per item (fp32,
    trimmed to the item's tokens) instead of decoded answers; such items still batch with decoded ones."""

    postprocess: bool = True


@dataclass(frozen=True)
class InferenceRequest:
    """Items for one model (and optionally one version of it). `deadline`: when the caller stops waiting,
    on the `time.perf_counter` clock (None: the server's default deadline, counted from the queue)."""

    model_id: str
    items: list[TextInput]
    version: int | None = None
    options: InferenceOptions = field(default_factory=InferenceOptions)
    deadline: float | None = None


@dataclass(frozen=True)
class Prediction:
    """Results of one request (one per item), the version that served it, whether it paid for a load, and
    the wait and compute a new request for the model would expect now and how late such estimates have
    come lately (what a router balances and sheds on)."""

    model_id: str
    version: int
    results: list[Result]
    cold: bool
    expected_wait_s: float = 0.0
    expected_service_s: float = 0.0
    lateness: float = 1.0


@dataclass(frozen=True)
class ModelDescription:
    """What a model version is and takes, from its manifest (loaded or not)."""

    model_id: str
    version: int
    task: Task
    format: Format
    dtype: DType
    max_sequence_length: int
    labels: list[str] | None
    hidden_size: int | None
    pair_input: bool
    inputs: list[InputSpec]
    outputs: list[OutputSpec]


@dataclass(frozen=True)
class ModelStatus:
    """Where one model stands on this server: lifecycle state, loaded version, reason of a failure."""

    model_id: str
    state: State
    version: int | None
    reason: str
    repository_degraded: str = ""  # why the repository is degraded (the listing may be stale), else ""


@dataclass(frozen=True)
class Readiness:
    """Whether the server takes traffic, and why not: start-up still running, draining, or required
    models (id -> reason) that failed to load. A degraded repository (`repository_degraded`: the reason)
    does not hold readiness back: the server still serves what it holds and what its cache holds."""

    started: bool
    draining: bool
    failed_models: dict[str, str]
    repository_degraded: str = ""

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and not self.failed_models


class DataPlane:
    """Inference, metadata, readiness and the repository operations of one server."""

    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.metrics = metrics
        self.started = False
        self.draining = False

    # health -------------------------------------------------------------------------------------------
    def live(self) -> bool:
        """The process is up and its event loop answers."""
        return True

    def ready(self) -> bool:
        """Start-up models are loaded, none the server must hold has failed, and it is not draining."""
        return self.readiness().ready

    def readiness(self) -> Readiness:
        """Readiness with its reasons (the transport writes them into the probe's body)."""
        return Readiness(
            self.started, self.draining, self.registry.failed_required(), self.repository_degraded()
        )

    def repository_degraded(self) -> str:
        """Why the repository is degraded (its source cannot be listed), or "" when it is healthy."""
        state = self.registry.repository.health.view()
        return state.reason if state.degraded else ""

    # inference ----------------------------------------------------------------------------------------
    async def infer(self, request: InferenceRequest) -> Prediction:
        """Run a request's items through its model's batcher; all items share the model version."""
        model_id, version = request.model_id, request.version
        raw = not request.options.postprocess
        async with self.registry.use(model_id) as (batcher, cold):
            if version is not None and version != batcher.model.version:
                self._check_version(model_id, version)
                raise ModelNotReady(
                    f"model {model_id!r} version {version} is not the loaded one ({batcher.model.version})",
                    hint="load that version first",
                    model_id=model_id,
                )
            deadline, default = request.deadline, False
            if deadline is None and (default_s := batcher.default_deadline_s()) is not None:
                deadline, default = time.perf_counter() + default_s, True
            try:
                results = await batcher.submit_many(
                    request.items, raw=raw, deadline=deadline, default_deadline=default
                )
            except Overloaded as exc:
                self.metrics.observe_shed(exc.reason)
                raise
            except DeadlineExceeded:
                self.metrics.observe_shed("expired")
                raise
            after = batcher.estimate()
        return Prediction(
            model_id,
            batcher.model.version,
            results,
            cold,
            after.wait_s,
            after.service_s,
            batcher.pool.lateness.factor,
        )

    # metadata -----------------------------------------------------------------------------------------
    def _check_version(self, model_id: str, version: int) -> None:
        if version not in self.registry.repository.versions(model_id):
            raise ModelNotFound(f"model {model_id!r} has no version {version}")

    def versions(self, model_id: str) -> list[int]:
        """Every version of a model in the repository, ascending."""
        self.registry.entry(model_id)  # validates the id; 404 for an unknown model
        return self.registry.repository.versions(model_id)

    def describe(self, model_id: str, version: int | None = None) -> ModelDescription:
        """A model version's description: the loaded one when it matches (no disk read on the request
        path), else the version asked for, else the one a load would serve."""
        entry = self.registry.entry(model_id)
        loaded = entry.loaded
        if loaded is not None and version in (None, loaded.version):
            return _description(model_id, loaded.version, loaded.manifest, loaded.handler)
        if version is not None:
            self._check_version(model_id, version)
        chosen = version or self.registry.default_version(model_id)
        manifest = self.registry.repository.manifest(model_id, chosen)
        handler = handler_for(manifest.task, manifest.labels, manifest.class_scores)
        return _description(model_id, chosen, manifest, handler)

    def model_ready(self, model_id: str, version: int | None = None) -> bool:
        """True when the model (and that version, if given) is loaded and serving."""
        entry = self.registry.entry(model_id)
        if version is not None:
            self._check_version(model_id, version)
        return entry.state == "ready" and (version is None or version == entry.version)

    # repository extension -----------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[ModelStatus]:
        """Every model this server knows (re-read from the repository), with state, version and reason:
        the failed load's, else why the repository cannot read the model; and whether the repository is
        degraded (the listing may then be stale: S3 or the folder cannot be listed)."""
        self.registry.refresh()
        faults = self.registry.repository.faults()
        degraded = self.repository_degraded()
        return [
            ModelStatus(e.model_id, e.state, e.version, e.reason or faults.get(e.model_id, ""), degraded)
            for e in self.registry.entries()
            if not ready_only or e.state == "ready"
        ]

    async def load(self, model_id: str, version: int | None = None) -> None:
        """Load (or reload at another version) a model without disturbing the others."""
        await self.registry.load(model_id, version)

    async def unload(self, model_id: str) -> None:
        """Drain and unload a model."""
        await self.registry.unload(model_id)


def _description(model_id: str, version: int, manifest: Manifest, handler: TaskHandler) -> ModelDescription:
    return ModelDescription(
        model_id=model_id,
        version=version,
        task=manifest.task,
        format=manifest.format,
        dtype=manifest.dtype,
        max_sequence_length=manifest.max_sequence_length,
        labels=manifest.labels,
        hidden_size=manifest.hidden_size,
        pair_input=handler.pair_input,
        inputs=handler.inputs(),
        outputs=handler.outputs(manifest.hidden_size or -1, manifest.labels),
    )
