"""Skeleton building: eager transformers modules on the meta device, filled from safetensors, and the pool
of emptied module shells that later loads of the same architecture refill.

Eager models are built on the `meta` device (no random init: ~20 ms instead of ~0.3-2 s) and filled from
safetensors with `load_state_dict(assign=True)`. Each is wrapped in a task head (see
`inferpack.runtime.heads`), so eager and traced versions are interchangeable.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from inferpack.errors import ModelLoadFailed
from inferpack.repository.manifest import TASKS, Manifest, Pooling, Task
from inferpack.runtime.heads import TaskWrapper, make_head
from inferpack.runtime.lanes import BACKGROUND_NICE, load_lane_thread
from inferpack.runtime.shared import SharedGroup, SharedWeights, cast_floating

log = logging.getLogger("inferpack.skeletons")
_IMPORT_LOCK = threading.Lock()


def _transformers() -> Any:
    """transformers, imported once under a lock: its lazy module is not safe to import from two load
    threads at once (attributes go missing), and a module-level import would slow every CLI command."""
    with _IMPORT_LOCK:
        import transformers

        for name in (
            "AutoConfig",
            "AutoModel",
            "AutoModelForQuestionAnswering",
            "AutoModelForSequenceClassification",
            "AutoModelForTokenClassification",
        ):
            getattr(transformers, name)  # resolve the lazy attributes while holding the lock
        return transformers


def preload_libraries() -> None:
    """Import transformers and build one tiny BERT skeleton, so the first cold load in a lazy server does
    not pay seconds of imports (module imports happen on first use inside transformers)."""
    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}
    for task in TASKS:
        build_skeleton({**config, "intermediate_size": 8, "vocab_size": 8}, task)


def transformers_class(task: Task) -> Any:
    """The transformers Auto class that builds the bare model of a task."""
    transformers = _transformers()
    return {
        "question-answering": transformers.AutoModelForQuestionAnswering,
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "feature-extraction": transformers.AutoModel,
    }[task]


def build_skeleton(
    config: dict[str, Any], task: Task, *, pooling: Pooling = "mean", normalize: bool = True
) -> TaskWrapper:
    """The task's transformers module on the meta device: the architecture without any weights."""
    cfg = _transformers().AutoConfig.for_model(**config)
    with torch.device("meta"):
        try:
            model = transformers_class(task).from_config(cfg, attn_implementation="sdpa")
        except ValueError:  # no SDPA attention for this architecture (DeBERTa-v2): its own attention
            model = transformers_class(task).from_config(cfg, attn_implementation="eager")
    return make_head(task, model, pooling=pooling, normalize=normalize)


@dataclass(frozen=True)
class _Slot:
    """Where one state-dict entry lives in a module tree: the owning module and the attribute name."""

    module: torch.nn.Module
    name: str
    parameter: bool


@dataclass(frozen=True)
class _Slots:
    """A shell's state-dict entries and non-persistent buffers, found once per shell (module objects stay
    the same when a shell is emptied and refilled; only their tensors change)."""

    state: dict[str, _Slot]
    rebuilt: list[_Slot]


def _slots(inner: torch.nn.Module) -> _Slots:
    found = getattr(inner, "_inferpack_slots", None)
    if isinstance(found, _Slots):
        return found
    state: dict[str, _Slot] = {}
    for key in inner.state_dict(keep_vars=True):  # the keys load_state_dict would look for
        path, _, name = key.rpartition(".")
        module = inner.get_submodule(path)
        state[key] = _Slot(module, name, name in module._parameters)
    rebuilt = [
        _Slot(m, name, False)
        for m in inner.modules()
        for name in m._non_persistent_buffers_set
        if m._buffers.get(name) is not None
    ]
    slots = _Slots(state, rebuilt)
    object.__setattr__(inner, "_inferpack_slots", slots)  # not a submodule, not a tensor: plain attribute
    return slots


def assign_weights(inner: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """What `inner.load_state_dict(state, strict=False, assign=True)` does for modules without load hooks
    (transformers' encoders): every entry the module has takes the given tensor object (no copy),
    parameters keep their requires_grad, a shape that differs from the architecture's is an error, keys
    the module lacks are ignored; a missing key is an error. Walks a cached slot list instead of
    recursing through every submodule's `_load_from_state_dict` (~60% of a MiniLM tenant's cold load)."""
    missing: list[str] = []
    for key, slot in _slots(inner).state.items():
        tensor = state.get(key)
        if tensor is None:
            missing.append(key)
            continue
        module, name = slot.module, slot.name
        current = module._parameters[name] if slot.parameter else module._buffers[name]
        assert current is not None
        if current.shape != tensor.shape:
            raise ModelLoadFailed(
                f"tensor {key!r} has shape {tuple(tensor.shape)} in the weights file but "
                f"{tuple(current.shape)} in the architecture config"
            )
        if slot.parameter:
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=current.requires_grad)
        else:
            module._buffers[name] = tensor
    if missing:
        raise ModelLoadFailed(f"weights file lacks {len(missing)} tensors, e.g. {missing[:3]}")


def fill_weights(wrapper: TaskWrapper, state: dict[str, torch.Tensor]) -> TaskWrapper:
    """Assign weights to a meta skeleton and rebuild the non-persistent buffers the file does not hold."""
    inner = wrapper.model
    assign_weights(inner, state)
    device = next(iter(state.values())).device if state else torch.device("cpu")  # the buffers go there too
    for slot in _slots(inner).rebuilt:
        buf = slot.module._buffers[slot.name]
        assert buf is not None
        if buf.device.type != "meta":
            continue
        if slot.name == "position_ids":
            ids = torch.arange(buf.shape[-1], device=device).expand(buf.shape)
            slot.module.register_buffer(slot.name, ids, persistent=False)
        elif slot.name == "token_type_ids":
            zeros = torch.zeros(buf.shape, dtype=torch.long, device=device)
            slot.module.register_buffer(slot.name, zeros, persistent=False)
        else:
            raise ModelLoadFailed(f"buffer {slot.name!r} has no value after loading the weights")
    if wrapper.training:  # a fresh skeleton; a refilled shell is in eval mode already
        wrapper.eval()
    return wrapper


def build_eager(
    version_dir: Path,
    manifest: Manifest,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    shared: list[SharedGroup] | None = None,
) -> TaskWrapper:
    """An eager, task-wrapped module from a safetensors version folder, in `dtype` on `device`.

    Tensors of shared weight files come from `shared` (the process-wide cache: the same tensor objects for
    every model of a base) or, when not given, are read from the manifest's `shared_weights` paths.
    """
    if manifest.config is None:
        raise ModelLoadFailed("safetensors manifest names no architecture config")
    target = device or torch.device("cpu")
    config_path = version_dir / manifest.config
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise _unreadable_file(config_path, exc) from exc
    key = skeleton_key(config, manifest)
    build = functools.partial(
        build_skeleton, config, manifest.task, pooling=manifest.pooling, normalize=manifest.normalize
    )
    SKELETONS.remember(key, build)  # for SpareShells
    wrapper = SKELETONS.take(key) or build()
    state: dict[str, torch.Tensor] = {}
    if shared is None:
        shared = [SharedWeights().get(version_dir / rel, dtype, target) for rel in manifest.shared_weights]
    for group in shared:
        state.update(group.tensors)
    weights = version_dir / manifest.weights
    try:
        own = load_file(str(weights), device=str(target))
    except Exception as exc:  # safetensors' own error type: a truncated, overwritten or vanished file
        raise _unreadable_file(weights, exc) from exc
    state.update(cast_floating(own, dtype))
    wrapper.skeleton_key = key
    wrapper.own_keys = frozenset(own)
    return fill_weights(wrapper, state)


def _unreadable_file(path: Path, exc: Exception) -> ModelLoadFailed:
    """A model file that exists in the manifest but cannot be used: named, with its size and a remedy."""
    try:
        size = f"{path.stat().st_size} bytes"
    except OSError:
        size = "gone"
    return ModelLoadFailed(
        f"cannot use {path} ({size}): {type(exc).__name__}: {exc}",
        hint="the file is truncated, corrupt or was removed since the repository was listed: import or "
        "push the model again (a repository's versions are written whole, then never changed)",
    )


def skeleton_key(config: dict[str, Any], manifest: Manifest) -> str:
    """Identity of an architecture: the same key means a module shell can be refilled with the weights."""
    head: str = manifest.task
    if manifest.task == "feature-extraction":
        head += f"|{manifest.pooling}|{manifest.normalize}"
    return f"{head}|{json.dumps(config, sort_keys=True)}"


class SkeletonPool:
    """Module shells of unloaded models, emptied to the meta device and refilled by the next load of the
    same architecture: a cold load then costs reading and assigning weights, not building a module tree
    (about half of a MiniLM load here). `SpareShells` keeps spares ready for architectures it was told
    of, so a cold load finds a shell even before any model was unloaded."""

    def __init__(self, per_architecture: int = 8) -> None:
        self.per_architecture = per_architecture
        self._lock = threading.Lock()
        self._shells: dict[str, list[TaskWrapper]] = {}
        self._builders: dict[str, Callable[[], TaskWrapper]] = {}

    def take(self, key: str) -> TaskWrapper | None:
        """A shell for the architecture, or None."""
        with self._lock:
            shells = self._shells.get(key)
            return shells.pop() if shells else None

    def give(self, key: str, module: TaskWrapper) -> None:
        """Empty a module (its tensors are released now) and keep it for reuse."""
        module.to_empty(device="meta")
        self._keep(key, module)

    def _keep(self, key: str, module: TaskWrapper) -> bool:
        with self._lock:
            shells = self._shells.setdefault(key, [])
            if len(shells) >= self.per_architecture:
                return False
            shells.append(module)
            return True

    def count(self, key: str) -> int:
        """Shells held for the architecture."""
        with self._lock:
            return len(self._shells.get(key, ()))

    def remember(self, key: str, build: Callable[[], TaskWrapper]) -> None:
        """How to build a shell of this architecture (for spares; bounded: architectures are few)."""
        with self._lock:
            if key not in self._builders and len(self._builders) >= 256:
                self._builders.clear()
            self._builders[key] = build

    def build_spare(self, key: str) -> bool:
        """Build one shell of a remembered architecture, its slot list found too, and keep it; False when
        the architecture is unknown or the pool is full for it."""
        with self._lock:
            build = self._builders.get(key)
        if build is None:
            return False
        shell = build()
        _slots(shell.model)  # found here, not on the next load
        return self._keep(key, shell)


class SpareShells:
    """Keeps `count` shells of each architecture a load used ready in a `SkeletonPool`, built one at a time
    on a thread of its own at a low priority (`nice`), after the load that took one: building a MiniLM
    module tree costs ~14 ms of CPU, most of a cold load whose shell comes from the pool (~3 ms), and a
    server whose budget is not full yet has no unloaded shells to reuse. Off the cold request's path; a
    load that finds no spare (a burst, a starved thread) builds its own, as without spares."""

    def __init__(self, pool: SkeletonPool, count: int, nice: int = BACKGROUND_NICE) -> None:
        self.pool = pool
        self.count = min(count, pool.per_architecture)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="spare-shells", initializer=load_lane_thread, initargs=(nice,)
        )

    def top_up(self, key: object) -> Future[None] | None:
        """After a load of architecture `key` (a LoadedModel's `extra["skeleton"]`): build spares until
        `count` are held; returns the background task, or None when there is nothing to do."""
        if not isinstance(key, str) or not key or self.count <= 0 or self.pool.count(key) >= self.count:
            return None
        with self._lock:
            if key in self._pending:
                return None  # already topping up: it builds until `count` are held
            self._pending.add(key)
        try:
            return self._executor.submit(self._fill, key)
        except RuntimeError:  # shut down: the server is stopping
            with self._lock:
                self._pending.discard(key)
            return None

    def _fill(self, key: str) -> None:
        try:
            while self.pool.count(key) < self.count and self.pool.build_spare(key):
                pass
        except Exception:  # a spare is an optimisation: the next load builds its own shell
            log.exception("building a spare module shell failed")
        finally:
            with self._lock:
                self._pending.discard(key)

    def close(self) -> None:
        """Stop building (a build in progress finishes on its thread)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


SKELETONS = SkeletonPool()
