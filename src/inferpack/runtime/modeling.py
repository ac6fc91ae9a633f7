"""The loaded model and how a version becomes one: `load_model`, plus the process-wide tokenizer cache.

Eager safetensors versions are built by `inferpack.runtime.skeletons` (meta-device shells filled from the
weights, wrapped in a task head from `inferpack.runtime.heads`); TorchScript versions are loaded with
`torch.jit.load`. Which version is served by default is `inferpack.runtime.versions`' job.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import Tokenizer

from inferpack.errors import DeviceUnavailable, InsufficientStorage, ModelLoadFailed, RepositoryError
from inferpack.repository.local import ModelRepository
from inferpack.repository.manifest import Manifest
from inferpack.runtime.crossbatch import TRUNKS, TracedPieces, Trunk, composite, own_paths
from inferpack.runtime.hardware import resolve_dtype
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.memory import Storages, module_storages
from inferpack.runtime.runtimechoice import Alternate
from inferpack.runtime.shared import SHARED, SharedGroup
from inferpack.runtime.skeletons import SKELETONS, build_eager
from inferpack.runtime.tasks import Encoded, TaskHandler, TextInput, TextTokenizer, handler_for
from inferpack.runtime.versions import (
    TORCH_DTYPES,
    _check_target,
    _device_kind,
    choose_version,
    onnx_alternate,
)
from inferpack.settings import DTypeChoice

ModelCallable = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def recycle(model: LoadedModel, *, shell: bool = True) -> None:
    """After an unload (nothing runs on the model any more): keep its eager module shell for reuse, unless
    `shell` is False (a background trace may still be reading the module: compile/tracing.py)."""
    model.graph = None  # it holds the weights too: they go now, not when the model object does
    model.pieces = None
    key = model.extra.get("skeleton")
    if shell and isinstance(key, str) and isinstance(model.module, TaskWrapper):
        SKELETONS.give(key, model.module)


class _TokenizerCache:
    """Tokenizers shared by every model using the same tokenizer and length (thousands of models, one
    vocab). Keyed by the file's content, not its path: copies of one tokenizer in many version folders
    (or an import's staging folder) share one parsed tokenizer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, int], TextTokenizer] = {}
        self._digests: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime) -> sha256

    def get(self, path: Path, max_length: int) -> TextTokenizer:
        """The tokenizer of a tokenizer.json file, set up for `max_length` tokens. A file seen before
        (same path, inode, size and modification time) is not read and hashed again (~5 ms a cold load)."""
        st = path.stat()
        seen = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        digest = self._digests.get(seen)
        text = None
        if digest is None:
            text = path.read_text(encoding="utf-8")
            digest = hashlib.sha256(text.encode()).hexdigest()
        key = (digest, max_length)
        with self._lock:
            found = self._items.get(key)
            if found is None:
                if text is None:
                    text = path.read_text(encoding="utf-8")
                found = TextTokenizer(Tokenizer.from_str(text), max_length)
                self._items[key] = found
            if len(self._digests) >= 100_000:  # bounded: one entry per tokenizer file path
                self._digests.clear()
            self._digests[seen] = digest
            return found


TOKENIZERS = _TokenizerCache()


@dataclass
class LoadedModel:
    """A model ready to run: its callable, tokenizer and task handler. `predict` runs on a worker thread."""

    model_id: str
    version: int
    manifest: Manifest
    module: ModelCallable
    tokenizer: TextTokenizer
    handler: TaskHandler
    dtype: torch.dtype
    device: torch.device
    hidden_size: int
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # engine mixed: a second runtime (an ONNX Runtime session) that batches run on where it measured faster
    alternate: Alternate | None = None
    # a hot eager model's traced graph over the same weights (compile/tracing.py): batches run on it
    # (it then batches alone: crossbatch.group_key, unless it has `pieces`)
    graph: ModelCallable | None = None
    # its graphs for mixed batches with its base's other tenants (its own layers', its base's trunk's)
    pieces: TracedPieces | None = None

    def forward(self, batch: Encoded) -> torch.Tensor:
        """Run the model on an encoded batch; returns float32 on the CPU. With an `alternate` runtime, the
        batch runs on whichever of the two its measurements favour at this size (runtime/runtimechoice.py)."""
        alternate = self.alternate
        if alternate is None:
            return self._run(self._module_for(batch.input_ids.shape[0]), batch)
        rows, tokens = batch.input_ids.shape[0], batch.input_ids.numel()
        use_alternate = alternate.choice.choose(rows)
        started = time.perf_counter()
        out = self._run(alternate.module if use_alternate else self.module, batch)
        alternate.choice.observe(use_alternate, rows, tokens, time.perf_counter() - started)
        return out

    def _module_for(self, rows: int) -> ModelCallable:
        """What runs a batch of this model alone: its traced graph; an eager module whose base has a
        trunk of graphs (made for a busy base, or by a traced tenant: compile/tracing.py) through it,
        its own layers eager; else the eager module."""
        if self.graph is not None:
            return self.graph
        trunk = TRUNKS.of(self) if "own_paths" in self.extra else None
        if trunk is None:
            return self.module
        pieces = [TracedPieces(trunk=trunk)]
        return cast(ModelCallable, composite([self.module], list(trunk.split), [(0, rows)], pieces))  # type: ignore[list-item]

    def _run(self, module: ModelCallable, batch: Encoded) -> torch.Tensor:
        with torch.inference_mode():
            out = module(
                batch.input_ids.to(self.device),
                batch.attention_mask.to(self.device),
                batch.token_type_ids.to(self.device),
            )
        return out.float().cpu()

    def predict(self, items: list[TextInput], raw: Sequence[bool] | None = None) -> list[dict[str, Any]]:
        """Tokenise, forward and post-process a batch of items (blocking; call off the event loop); items
        flagged in `raw` get the model's own outputs instead of decoded answers (TaskHandler.finish)."""
        batch = self.tokenizer.encode(items)
        return self.handler.finish(self.forward(batch), batch, items, raw)


def load_model(
    repository: ModelRepository,
    model_id: str,
    version: int | None = None,
    *,
    dtype: DTypeChoice = "auto",
    device: str = "cpu",
    max_sequence_length: int | None = None,
    warmup: bool | None = True,
    engine: str = "eager",
    tier: bool = False,
    intra_op_threads: int = 1,
) -> LoadedModel:
    """Load a version (default: the one `choose_version` picks for `engine`) of a model, eager,
    TorchScript or ONNX (an ONNX Runtime session of `intra_op_threads`), and warm it up.

    `warmup=None` warms up compiled graphs only (their first calls compile or allocate; an eager model's
    first request is its own warm-up, which is what a cold request wants: the answer sooner, not two
    forwards first). `tier`: an ONNX version compiled from a safetensors version loads as that version's
    eager fp32 model (a stand-in: fast to load, and its agreement check showed it answers alike), with
    `extra["upgrade"]` loading the ONNX Runtime session later (see `runtime/tier.py`); with `engine`
    mixed, an eager model whose version has an ONNX version compiled from it gets an `extra["upgrade"]`
    that adds that version's session as its alternate runtime (`with_alternate`).
    """
    started = time.perf_counter()
    if version is None:
        chosen = choose_version(repository, model_id, device, resolve_dtype(dtype, device), engine)
    else:
        chosen = version
    manifest = repository.manifest(model_id, chosen)
    _check_target(model_id, chosen, manifest, device)
    source = _eager_source(repository, model_id, manifest) if tier else None
    if source is not None:
        stand_in = load_model(
            repository,
            model_id,
            source,
            dtype="fp32",
            max_sequence_length=max_sequence_length,
            warmup=warmup,
        )
        upgrade = functools.partial(
            load_model,
            repository,
            model_id,
            chosen,
            dtype="fp32",
            max_sequence_length=max_sequence_length,
            intra_op_threads=intra_op_threads,
        )
        extra = {**stand_in.extra, "upgrade": upgrade, "stand_in_for": chosen}
        return dataclasses.replace(stand_in, version=chosen, manifest=manifest, extra=extra)
    version_dir = repository.version_dir(model_id, chosen)
    neuron = _device_kind(device) == "neuron"
    # Neuron graphs are called with host tensors; the runtime moves them to the NeuronCore.
    torch_device = torch.device("cpu" if neuron else device)
    limit = max_sequence_length or manifest.max_sequence_length
    try:
        # missing or unreadable files fail here, by name (a TorchScript version has no config to read)
        for rel in (manifest.weights, manifest.config if manifest.format == "safetensors" else None):
            if rel is not None:
                repository.resolve_file(model_id, chosen, rel)
        module: ModelCallable
        groups: list[SharedGroup] = []
        skeleton = ""
        if neuron:
            from inferpack.runtime.neuron import load_neuron, static_shape

            torch_dtype = TORCH_DTYPES[manifest.dtype]
            module = load_neuron(version_dir / manifest.weights, manifest)
            limit = min(limit, static_shape(manifest)[1])  # the graph takes no wider batch
            hidden = manifest.hidden_size or 0
        elif manifest.format == "onnx":
            from inferpack.runtime.onnxrt import load_onnx

            torch_dtype = torch.float32
            module = load_onnx(version_dir / manifest.weights, intra_op_threads=intra_op_threads)
            hidden = manifest.hidden_size or 0
        elif manifest.format == "torchscript":
            torch_dtype = TORCH_DTYPES[manifest.dtype]
            scripted = torch.jit.load(  # type: ignore[no-untyped-call]
                str(version_dir / manifest.weights), map_location=torch_device
            )
            scripted.eval()
            module = scripted
            hidden = manifest.hidden_size or 0
        else:
            torch_dtype = resolve_dtype(dtype, device)
            groups = [
                SHARED.get(repository.resolve_file(model_id, chosen, rel), torch_dtype, torch_device)
                for rel in manifest.shared_weights
            ]
            eager = build_eager(version_dir, manifest, dtype=torch_dtype, device=torch_device, shared=groups)
            module = eager
            skeleton = eager.skeleton_key
            hidden = int(getattr(eager.model, "config").hidden_size)  # noqa: B009
        tokenizer = TOKENIZERS.get(repository.resolve_file(model_id, chosen, manifest.tokenizer), limit)
    except (InsufficientStorage, DeviceUnavailable):
        raise
    except ModelLoadFailed as exc:  # raised by the builders, which do not know the model's name
        raise ModelLoadFailed(f"model {model_id!r} v{chosen}: {exc.message}", hint=exc.hint) from exc
    except RepositoryError as exc:  # already names the model and the file
        raise ModelLoadFailed(exc.message, hint=exc.hint) from exc
    except Exception as exc:  # any failure to read or build is the model's, not the server's
        raise ModelLoadFailed(
            f"model {model_id!r} v{chosen} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    loaded = LoadedModel(
        model_id=model_id,
        version=chosen,
        manifest=manifest,
        module=module,
        tokenizer=tokenizer,
        handler=handler_for(manifest.task, manifest.labels, manifest.class_scores),
        dtype=torch_dtype,
        device=torch_device,
        hidden_size=hidden,
        extra={"shared": groups, "skeleton": skeleton} if manifest.format == "safetensors" else {},
    )
    if groups and isinstance(module, TaskWrapper):  # which layers are its own (cross-tenant batching)
        loaded.extra["own_paths"] = _own_paths(module, groups)
    if warmup or (warmup is None and manifest.format in ("torchscript", "onnx")):
        _warm_up(loaded)
    alternate = onnx_alternate(repository, model_id, chosen) if engine == "mixed" and tier else None
    if alternate is not None and _device_kind(device) == "cpu":
        # engine mixed: the eager model serves at once, its ONNX Runtime session joins it in the
        # background (runtime/tier.py), then each batch runs on the faster of the two at its size
        loaded.extra["upgrade"] = functools.partial(
            with_alternate, loaded, repository, alternate, intra_op_threads=intra_op_threads
        )
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def with_alternate(
    model: LoadedModel, repository: ModelRepository, version: int, *, intra_op_threads: int = 1
) -> LoadedModel:
    """`model` (eager) with an ONNX Runtime session over its ONNX version `version` as its alternate
    runtime (engine mixed; runtime/runtimechoice.py). Runs on the upgrade thread: the session is created
    and warmed up there, not on a request."""
    from inferpack.runtime.onnxrt import load_onnx

    manifest = repository.manifest(model.model_id, version)
    path = repository.resolve_file(model.model_id, version, manifest.weights)
    started = time.perf_counter()
    session = load_onnx(path, intra_op_threads=intra_op_threads)
    extra = {k: v for k, v in model.extra.items() if k != "upgrade"}
    mixed = dataclasses.replace(model, extra=extra, alternate=Alternate(session))
    # the session's first runs allocate: warm it up here (an alternate-only warm-up: eager is already warm)
    item = TextInput("warm up", "warm up the model") if model.handler.pair_input else TextInput("warm up")
    batch = model.tokenizer.encode([item])
    for _ in range(2):
        mixed._run(session, batch)
    mixed.load_seconds = time.perf_counter() - started
    return mixed


def model_storages(model: LoadedModel) -> Storages:
    """The memory a loaded model holds for the ledger: its module's storages, its traced graph's estimated
    own memory (compile/tracing.py; under a negative key: not a storage), and its alternate runtime's (an
    ONNX Runtime session's own copy of the weights) when it has one. Graphs for mixed batches count the
    same way: its own pieces' under a key of their own, its base's trunk under the trunk's key (once for
    every tenant holding it). A graph's prepacked weights (compile/packing.py) count once each, under
    their own keys, however many graphs hold them."""
    storages = module_storages(model.module)
    if model.graph is not None:  # the eager module's own tensors (not frozen), and the graph's own memory
        storages.update(module_storages(model.graph))
        storages[-id(model.graph)] = int(model.extra.get("graph_bytes", 0))  # no storage: a key of its own
    if model.pieces is not None:
        storages[-id(model.pieces)] = model.pieces.own_bytes
        for by_signature in model.pieces.own.values():  # their tensors: the module's, any packed weights
            for graph in by_signature.values():
                storages.update(module_storages(graph))
        if model.pieces.trunk is not None:
            storages.update(trunk_storages(model.pieces.trunk))
    if model.alternate is not None:
        storages.update(module_storages(model.alternate.module))
    return storages


def trunk_storages(trunk: Trunk) -> Storages:
    """The memory a base's trunk holds: its graphs' estimated own memory under the trunk's key (one key
    whoever holds it: the registry for the base, its traced tenants), and its graphs' tensors: the
    shared weights its tenants hold already, and the packed copies of their linear weights."""
    storages: Storages = {-id(trunk): trunk.bytes}
    for graph in trunk.graph_list():
        storages.update(module_storages(graph))
    return storages


def graphs_bytes(model: LoadedModel) -> int:
    """The estimated own memory of a traced model's graphs: its whole graph's and its pieces' (its base's
    trunk included, which other tenants may already hold): what a trace asks of the free budget."""
    return sum(size for key, size in model_storages(model).items() if key < 0)  # negative keys: no storage


def _eager_source(repository: ModelRepository, model_id: str, manifest: Manifest) -> int | None:
    """The safetensors version an ONNX version was compiled from, when it is still in the repository."""
    source = manifest.compiled_from
    if manifest.format != "onnx" or source is None or source not in repository.versions(model_id):
        return None
    return source if repository.manifest(model_id, source).format == "safetensors" else None


_OWN_PATHS: dict[tuple[str, tuple[Path, ...], frozenset[str]], list[str] | None] = {}


def _own_paths(module: TaskWrapper, groups: list[SharedGroup]) -> list[str] | None:
    """`crossbatch.own_paths`, computed once per weights layout: which tensors are shared follows from the
    architecture, the shared files (never changed once written) and the keys of the model's own file, so
    every tenant of one base and architecture has the same paths (a walk of every submodule saved: ~10 ms
    of a MiniLM tenant's cold load)."""
    layout = (module.skeleton_key, tuple(g.path for g in groups), module.own_keys)
    if layout not in _OWN_PATHS:
        if len(_OWN_PATHS) >= 1024:  # bounded: layouts are few (architectures x bases)
            _OWN_PATHS.clear()
        _OWN_PATHS[layout] = own_paths(module, [t for g in groups for t in g.tensors.values()])
    found = _OWN_PATHS[layout]
    return None if found is None else list(found)


def _warm_up(model: LoadedModel) -> None:
    """Two small forwards so the first real request does not pay for lazy initialisation (TorchScript)."""
    item = TextInput("warm up", "warm up the model") if model.handler.pair_input else TextInput("warm up")
    try:
        for _ in range(2):
            model.predict([item])
    except Exception as exc:
        raise ModelLoadFailed(
            f"model {model.model_id!r} v{model.version} loaded but failed its first forward: {exc}"
        ) from exc
