"""The dataplane: what the server does, independent of HTTP. Both APIs (seed-compatible and V2) and the
repository extension call these methods; endpoints only parse and format."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from inferpack import __version__
from inferpack.errors import InvalidInput, ModelNotFound, ModelNotReady, Overloaded
from inferpack.repository.manifest import Manifest
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.tasks import TaskHandler, TextInput, handler_for
from inferpack.server import v2
from inferpack.server.metrics import ServerMetrics

SERVER_NAME = "inferpack"
EXTENSIONS = ["model_repository", "binary_tensor_data"]
PLATFORMS = {"safetensors": "pytorch_safetensors", "torchscript": "pytorch_torchscript"}


@dataclass(frozen=True)
class Prediction:
    """Results of one request, the version that served it, and whether it paid for a model load."""

    results: list[dict[str, Any]]
    version: int
    cold: bool


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
        """Start-up models are loaded and the server is not draining."""
        return self.started and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        """V2 server metadata."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    # inference ----------------------------------------------------------------------------------------
    async def predict(self, model_id: str, items: list[TextInput], version: int | None = None) -> Prediction:
        """Run items through a model's batcher; all items of a request share the model version."""
        async with self.registry.use(model_id) as (batcher, cold):
            if version is not None and version != batcher.model.version:
                self._check_version(model_id, version)
                raise ModelNotReady(
                    f"model {model_id!r} version {version} is not the loaded one ({batcher.model.version})",
                    hint=f"load it with POST /v2/repository/models/{model_id}/load",
                )
            try:
                results = await asyncio.gather(*(batcher.submit(item) for item in items))
            except Overloaded:
                self.metrics.shed.inc()
                raise
        return Prediction(list(results), batcher.model.version, cold)

    async def seed_predict(self, model_id: str, seq_0: str, seq_1: str) -> tuple[Any, bool]:
        """The reference API: QA answers a question about a context; other tasks take seq_0 as the text."""
        pair = self._handler(model_id, None).pair_input
        prediction = await self.predict(model_id, [TextInput(seq_0, seq_1 if pair else None)])
        result = prediction.results[0]
        if "answer" in result:
            detail: Any = result["answer"]
        elif "label" in result:
            detail = result["label"]
        else:
            detail = [float(x) for x in result["embedding"]]
        return detail, prediction.cold

    async def infer_v2(
        self, model_id: str, version: int | None, body: bytes, header_length: str | None
    ) -> tuple[bytes, int | None, bool]:
        """A V2 inference: body in, (body, JSON header length or None, cold) out."""
        handler = self._handler(model_id, version)  # unknown model -> 404 before parsing the body
        request = v2.parse_request(body, header_length)
        items = v2.items_from_inputs(request.inputs, handler.pair_input)
        prediction = await self.predict(model_id, items, version)
        manifest = self._manifest(model_id, prediction.version)
        outputs = handler.outputs_metadata(manifest.hidden_size or -1, manifest.labels)
        payload, head = v2.build_response(model_id, prediction.version, request, prediction.results, outputs)
        return payload, head, prediction.cold

    # metadata -----------------------------------------------------------------------------------------
    def _check_version(self, model_id: str, version: int) -> None:
        if version not in self.registry.repository.versions(model_id):
            raise ModelNotFound(f"model {model_id!r} has no version {version}")

    def _manifest(self, model_id: str, version: int | None) -> Manifest:
        """The loaded model's manifest when it matches (no disk read on the request path), else the
        repository's."""
        loaded = self.registry.entry(model_id).loaded
        if loaded is not None and version in (None, loaded.version):
            return loaded.manifest
        if version is not None:
            self._check_version(model_id, version)
        return self.registry.repository.manifest(model_id, version)

    def _handler(self, model_id: str, version: int | None) -> TaskHandler:
        loaded = self.registry.entry(model_id).loaded
        if loaded is not None and version in (None, loaded.version):
            return loaded.handler
        manifest = self._manifest(model_id, version)
        return handler_for(manifest.task, manifest.labels)

    def model_metadata(self, model_id: str, version: int | None = None) -> dict[str, Any]:
        """V2 model metadata from the manifest (works whether or not the model is loaded)."""
        entry = self.registry.entry(model_id)
        if version is not None:
            self._check_version(model_id, version)
        chosen = version or entry.version or self.registry.default_version(model_id)
        manifest = self.registry.repository.manifest(model_id, chosen)
        handler = handler_for(manifest.task, manifest.labels)
        versions = [str(v) for v in self.registry.repository.versions(model_id)]
        return {
            "name": model_id,
            "versions": versions,
            "platform": PLATFORMS[manifest.format],
            "inputs": handler.inputs_metadata(),
            "outputs": handler.outputs_metadata(manifest.hidden_size or -1, manifest.labels),
            "parameters": {
                "task": manifest.task,
                "dtype": manifest.dtype,
                "max_sequence_length": manifest.max_sequence_length,
            },
        }

    def model_ready(self, model_id: str, version: int | None = None) -> bool:
        """True when the model (and that version, if given) is loaded and serving."""
        entry = self.registry.entry(model_id)
        if version is not None:
            self._check_version(model_id, version)
        return entry.state == "ready" and (version is None or version == entry.version)

    # repository extension -----------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model this server knows, with state, loaded version and the reason of a failure."""
        self.registry.refresh()
        out = []
        for entry in self.registry.entries():
            if ready_only and entry.state != "ready":
                continue
            item: dict[str, Any] = {"name": entry.model_id, "state": entry.state.upper()}
            if entry.version is not None:
                item["version"] = str(entry.version)
            if entry.reason:
                item["reason"] = entry.reason
            out.append(item)
        return out

    async def load(self, model_id: str, version: int | None = None) -> None:
        """Load (or reload at another version) a model without disturbing the others."""
        await self.registry.load(model_id, version)

    async def unload(self, model_id: str) -> None:
        """Drain and unload a model."""
        await self.registry.unload(model_id)

    def validate_text(self, value: str, field: str) -> str:
        """Reject text the tokenizer cannot take (NUL-free, bounded); truncation handles length."""
        if "\x00" in value:
            raise InvalidInput(f"{field} contains a NUL character")
        return value
