"""Building and loading models: eager transformers modules from safetensors, and TorchScript files.

Eager models are built on the `meta` device (no random init: ~20 ms instead of ~0.3-2 s) and filled from
safetensors with `load_state_dict(assign=True)`. Each is wrapped in a small module that fixes the output
contract per task (see `inferpack.runtime.tasks`), so eager and traced versions are interchangeable.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from inferpack.errors import ModelLoadFailed, RepositoryError
from inferpack.repository.local import ModelRepository
from inferpack.repository.manifest import Manifest, Task
from inferpack.runtime.hardware import resolve_dtype
from inferpack.runtime.shared import SHARED, SharedGroup, SharedWeights, cast_floating
from inferpack.runtime.tasks import Encoded, TaskHandler, TextInput, TextTokenizer, handler_for
from inferpack.settings import DTypeChoice

ModelCallable = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TaskWrapper(nn.Module):
    """Base of the task wrappers: holds the transformers module as `model`."""

    model: nn.Module
    skeleton_key: str = ""  # the architecture, for reusing the shell (see SkeletonPool)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class QAHead(TaskWrapper):
    """Start/end logits stacked as [batch, tokens, 2]."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        start, end = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=False,
        )[:2]
        return torch.stack([start, end], dim=-1)


class ClassifierHead(TaskWrapper):
    """Class logits [batch, labels]."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=False,
        )[0]


class MeanPooler(TaskWrapper):
    """Mean of the last hidden states over real tokens, L2-normalised (sentence-transformers style), in
    fp32."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=False,
        )[0]
        # Pool and normalise in fp32 whatever the compute dtype: in bf16 the sum over tokens and the norm
        # lose ~3 significant digits (norms of 0.995-1.0015 instead of 1).
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)


_WRAPPERS: dict[Task, type[TaskWrapper]] = {
    "question-answering": QAHead,
    "text-classification": ClassifierHead,
    "feature-extraction": MeanPooler,
}


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
        ):
            getattr(transformers, name)  # resolve the lazy attributes while holding the lock
        return transformers


def preload_libraries() -> None:
    """Import transformers and build one tiny BERT skeleton, so the first cold load in a lazy server does
    not pay seconds of imports (module imports happen on first use inside transformers)."""
    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}
    for task in _WRAPPERS:
        build_skeleton({**config, "intermediate_size": 8, "vocab_size": 8}, task)


def transformers_class(task: Task) -> Any:
    """The transformers Auto class that builds the bare model of a task."""
    transformers = _transformers()
    return {
        "question-answering": transformers.AutoModelForQuestionAnswering,
        "text-classification": transformers.AutoModelForSequenceClassification,
        "feature-extraction": transformers.AutoModel,
    }[task]


def build_skeleton(config: dict[str, Any], task: Task) -> TaskWrapper:
    """The task's transformers module on the meta device: the architecture without any weights."""
    cfg = _transformers().AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers_class(task).from_config(cfg, attn_implementation="sdpa")
    return _WRAPPERS[task](model)


def fill_weights(wrapper: TaskWrapper, state: dict[str, torch.Tensor]) -> TaskWrapper:
    """Assign weights to a meta skeleton and rebuild the non-persistent buffers the file does not hold."""
    inner = wrapper.model
    missing, _unexpected = inner.load_state_dict(state, strict=False, assign=True)
    if missing:
        raise ModelLoadFailed(f"weights file lacks {len(missing)} tensors, e.g. {missing[:3]}")
    for module in inner.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.device.type != "meta":
                continue
            if name == "position_ids":
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
            elif name == "token_type_ids":
                module.register_buffer(name, torch.zeros(buf.shape, dtype=torch.long), persistent=False)
            else:
                raise ModelLoadFailed(f"buffer {name!r} has no value after loading the weights")
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
    config = json.loads((version_dir / manifest.config).read_text())
    key = skeleton_key(config, manifest.task)
    wrapper = SKELETONS.take(key) or build_skeleton(config, manifest.task)
    state: dict[str, torch.Tensor] = {}
    if shared is None:
        shared = [SharedWeights().get(version_dir / rel, dtype, target) for rel in manifest.shared_weights]
    for group in shared:
        state.update(group.tensors)
    own = load_file(str(version_dir / manifest.weights), device=str(target))
    state.update(cast_floating(own, dtype))
    wrapper.skeleton_key = key
    return fill_weights(wrapper, state)


def skeleton_key(config: dict[str, Any], task: Task) -> str:
    """Identity of an architecture: the same key means a module shell can be refilled with the weights."""
    return f"{task}|{json.dumps(config, sort_keys=True)}"


class SkeletonPool:
    """Module shells of unloaded models, emptied to the meta device and refilled by the next load of the
    same architecture: a cold load then costs reading and assigning weights, not building a module tree
    (about half of a MiniLM load here)."""

    def __init__(self, per_architecture: int = 8) -> None:
        self.per_architecture = per_architecture
        self._lock = threading.Lock()
        self._shells: dict[str, list[TaskWrapper]] = {}

    def take(self, key: str) -> TaskWrapper | None:
        """A shell for the architecture, or None."""
        with self._lock:
            shells = self._shells.get(key)
            return shells.pop() if shells else None

    def give(self, key: str, module: TaskWrapper) -> None:
        """Empty a module (its tensors are released now) and keep it for reuse."""
        module.to_empty(device="meta")
        with self._lock:
            shells = self._shells.setdefault(key, [])
            if len(shells) < self.per_architecture:
                shells.append(module)


SKELETONS = SkeletonPool()


def recycle(model: LoadedModel) -> None:
    """After an unload (nothing runs on the model any more): keep its eager module shell for reuse."""
    key = model.extra.get("skeleton")
    if isinstance(key, str) and isinstance(model.module, TaskWrapper):
        SKELETONS.give(key, model.module)


class _TokenizerCache:
    """Tokenizers shared by every model using the same file and length (thousands of models, one vocab)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[Path, int], TextTokenizer] = {}

    def get(self, path: Path, max_length: int) -> TextTokenizer:
        key = (path, max_length)
        with self._lock:
            found = self._items.get(key)
            if found is None:
                found = TextTokenizer(Tokenizer.from_file(str(path)), max_length)
                self._items[key] = found
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

    def forward(self, batch: Encoded) -> torch.Tensor:
        """Run the model on an encoded batch; returns float32 on the CPU."""
        with torch.inference_mode():
            out = self.module(
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
) -> LoadedModel:
    """Load a version (default: latest) of a model, eager or TorchScript, and warm it up.

    `warmup=None` warms up TorchScript only (its first calls compile; an eager model's first request is
    its own warm-up, which is what a cold request wants: the answer sooner, not two forwards first).
    """
    started = time.perf_counter()
    if version is None:
        chosen = choose_version(repository, model_id, device, resolve_dtype(dtype, device))
    else:
        chosen = version
    manifest = repository.manifest(model_id, chosen)
    _check_target(model_id, chosen, manifest, device)
    version_dir = repository.version_dir(model_id, chosen)
    torch_device = torch.device(device)
    try:
        for rel in (manifest.weights, manifest.config):  # missing or unreadable files fail here, by name
            if rel is not None:
                repository.resolve_file(model_id, chosen, rel)
        tokenizer = TOKENIZERS.get(
            repository.resolve_file(model_id, chosen, manifest.tokenizer),
            max_sequence_length or manifest.max_sequence_length,
        )
        module: ModelCallable
        groups: list[SharedGroup] = []
        skeleton = ""
        if manifest.format == "torchscript":
            torch_dtype = torch.bfloat16 if manifest.dtype == "bf16" else torch.float32
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
    except ModelLoadFailed:
        raise
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
        handler=handler_for(manifest.task, manifest.labels),
        dtype=torch_dtype,
        device=torch_device,
        hidden_size=hidden,
        extra={"shared": groups, "skeleton": skeleton} if manifest.format == "safetensors" else {},
    )
    if warmup or (warmup is None and manifest.format == "torchscript"):
        _warm_up(loaded)
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def _device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "neuron" if device.startswith("neuron") else "cpu"


def _check_target(model_id: str, version: int, manifest: Manifest, device: str) -> None:
    """Refuse a version compiled for another processor (a CUDA trace on a CPU server, a Neuron trace with
    fixed shapes that dynamic padding would break)."""
    if manifest.format == "torchscript" and manifest.target != _device_kind(device):
        raise ModelLoadFailed(
            f"model {model_id!r} v{version} was compiled for {manifest.target}, this server runs on "
            f"{_device_kind(device)}",
            hint="serve a version compiled for this processor (or the safetensors version)",
        )


def choose_version(repository: ModelRepository, model_id: str, device: str, dtype: torch.dtype) -> int:
    """The version a server serves by default: the newest one that suits it.

    Safetensors versions always suit (they are converted at load). A TorchScript version suits when it was
    compiled for this processor, in the dtype this server computes in, without quantisation (int8 changes
    answers: ask for its version explicitly), and its agreement check passed. Falls back to the newest.
    """
    versions = repository.versions(model_id)
    wanted = "bf16" if dtype == torch.bfloat16 else "fp32"
    for candidate in reversed(versions):
        m = repository.manifest(model_id, candidate)
        if m.format == "safetensors":
            return candidate
        passed = m.agreement is None or m.agreement.passed
        if m.target == _device_kind(device) and m.dtype == wanted and m.quantization == "none" and passed:
            return candidate
    return versions[-1]


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
