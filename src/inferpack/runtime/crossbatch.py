"""Cross-tenant batching through shared layers.

Tenants fine-tuned from one base share most of their weights, and the repository already stores (and the
server already holds) those tensors once (`runtime/shared.py`): every model of a base points at the *same*
tensor objects for its shared layers. A batch may therefore mix requests for several such models: the
layers whose weights are the same objects in all of them run once over every row, and only the layers a
tenant has of its own (typically its top layer and head) run per tenant, on that tenant's rows.

How: rows are ordered by model. At load, `own_paths` finds the outermost submodules of a model that hold
weights of its own (not the shared tensors): a submodule holding only shared weights is left out, one
holding both is descended into. For a batch, `merge_paths` joins the models' paths and `composite`
shallow-copies the first model's module tree along them, putting a `RowSplit` at each: it slices its
batch-major inputs by each model's rows, runs that model's own submodule on them and concatenates the
outputs. Nothing is copied but a few module objects; every tensor stays the one the models hold.

Rows are independent in these encoders (attention stays within a row, padding is masked), so each model's
outputs equal what it computes alone up to the float rounding that any change of batch composition brings
(tested against each model run alone). A tensor argument is sliced when it is batch-major: at least two
dimensions and the batch's row count as the first (hidden states, 4-D attention masks); other arguments
(position ids, flags) pass whole.

Traced pieces (compile/tracing.py): a hot tenant's own submodules, and once per base the shared subtrees
between them (`trunk_paths`: the embeddings, the shared encoder layers: the base's trunk, made for a busy
base by the registry or by its first traced tenant), get TorchScript graphs over the
same tensors, one per call signature seen (`signature`: which arguments are tensors, None or constants,
e.g. an attention mask that is None for an unpadded batch). `composite` puts a `Piece` at each: it runs
the graph made for the call's signature, or the eager submodule for a signature never traced. The Python
left is the glue between them (the encoder's loop, the masks), so a mixed batch of traced tenants runs
with the GIL released for most of its forward, as a traced model's own batches do.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from inferpack.runtime.admission import WaitEstimator
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.tasks import Result, TextInput


def own_paths(module: nn.Module, shared: Sequence[torch.Tensor]) -> list[str] | None:
    """The outermost submodule paths of `module` that hold weights of its own (not among the `shared`
    tensors): a submodule holding only shared weights is left out, one holding both is descended into,
    one whose own direct weights are its own (or that holds no shared weight) is a path. None when the
    whole module is its own (nothing to run once). Buffers rebuilt from the config (non-persistent:
    position ids, token type ids) count as shared: one architecture rebuilds them equal."""
    shared_ptrs = {t.data_ptr() for t in shared}
    own_direct: dict[str, bool] = {}
    has_own: set[str] = set()
    has_shared: set[str] = set()
    children: dict[str, list[str]] = {}
    for path, sub in module.named_modules():
        tensors = [p for p in sub._parameters.values() if p is not None]
        tensors += [
            b
            for name, b in sub._buffers.items()
            if b is not None and name not in sub._non_persistent_buffers_set
        ]
        own_direct[path] = any(t.data_ptr() not in shared_ptrs for t in tensors)
        holds_shared = any(t.data_ptr() in shared_ptrs for t in tensors)
        parts = path.split(".") if path else []
        ancestors = [".".join(parts[:i]) for i in range(len(parts) + 1)]
        if own_direct[path]:
            has_own.update(ancestors)
        if holds_shared:
            has_shared.update(ancestors)
        if path:
            children.setdefault(".".join(parts[:-1]), []).append(path)
    out: list[str] = []

    def visit(path: str) -> None:
        if path not in has_own:
            return
        if own_direct[path] or path not in has_shared or not children.get(path):
            out.append(path)
            return
        for child in children[path]:
            visit(child)

    visit("")
    return None if "" in out else out


def merge_paths(per_model: Sequence[list[str] | None]) -> list[str] | None:
    """The split points for a batch of several models: every model's own paths, outermost kept (a model
    whose whole `x` is its own makes every model's `x` run per tenant). None if any model shares nothing."""
    if any(p is None for p in per_model):
        return None
    union = sorted({path for paths in per_model if paths is not None for path in paths})
    return [p for p in union if not any(p.startswith(f"{q}.") for q in union if q != p)]


def trunk_paths(module: nn.Module, paths: Sequence[str]) -> list[str]:
    """The shared subtrees a composite over split `paths` runs whole for every row: the children of each
    split path's ancestors that neither are a split path nor hold one (for a BERT tenant owning its top
    layer and head: the embeddings and every other encoder layer). Only subtrees with submodules of their
    own are listed (a lone linear layer gains nothing from a graph)."""
    ancestors = {".".join(p.split(".")[:i]) for p in paths for i in range(len(p.split(".")))}
    out = []
    for parent in sorted(ancestors, key=lambda a: (a.count("."), a)):
        node = module.get_submodule(parent) if parent else module
        for name, child in node.named_children():
            path = f"{parent}.{name}" if parent else name
            if path in ancestors or path in paths or next(child.children(), None) is None:
                continue
            out.append(path)
    return out


Signature = tuple[Any, ...]
Graphs = Mapping[Signature, Callable[..., Any]]  # a piece's graphs by call signature


def signature(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Signature | None:
    """What a graph traced from this call fixes: for each argument, a tensor's dtype and rank, or the
    constant itself (None, a flag, a length). None when a constant cannot be compared (never traced)."""

    def one(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", value.dtype, value.dim())
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError

    try:
        return (tuple(one(a) for a in args), tuple((k, one(v)) for k, v in kwargs.items()))
    except TypeError:
        return None


def tensor_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """The call's tensors in order (positional, then keyword): a piece graph's inputs."""
    return tuple(a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor))


class Piece(nn.Module):
    """A submodule in a composite, run by the graph traced for the call's signature when there is one,
    else by the eager submodule (an unseen signature: still correct, only slower)."""

    def __init__(self, eager: nn.Module, graphs: Graphs) -> None:
        super().__init__()
        # plain attributes, not registered: the submodule stays owned (and listed) by its own model
        self.__dict__["eager"] = eager
        self.graphs = graphs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The graph's output for this call, or the eager submodule's."""
        key = signature(args, kwargs)
        graph = self.graphs.get(key) if key is not None else None
        if graph is None:
            return self.__dict__["eager"](*args, **kwargs)
        return graph(*tensor_args(args, kwargs))


@dataclass(eq=False)
class Trunk:
    """The graphs of a base's shared subtrees (`trunk_paths` of the `split` paths it was made for), made
    once and held by the registry while any tenant of the base is loaded and by every traced tenant of
    the base (their shared tensors, so no copy), with their estimated own memory and the seconds making
    them took. A composite over other split paths does not use it: one of its subtrees may be a
    tenant's own there."""

    graphs: dict[str, Graphs]
    split: tuple[str, ...]
    bytes: int = 0
    seconds: float = 0.0

    def graph_list(self) -> list[Any]:
        """Every graph of the trunk (one per piece and call signature)."""
        return [graph for by_signature in self.graphs.values() for graph in by_signature.values()]


class Trunks:
    """Each base's trunk while someone holds it (weakly: it goes with the last holder: the registry, for
    as long as a tenant of the base is loaded, and the base's traced tenants), by the tenants' `mix_key`
    and split paths (`key`): batches of the base's tenants, eager ones included, run their shared
    layers on it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held by whoever makes a trunk (one per base)
        self._by_key: weakref.WeakValueDictionary[tuple[Any, ...], Trunk] = weakref.WeakValueDictionary()

    def get(self, key: tuple[Any, ...] | None, split: Sequence[str] | None) -> Trunk | None:
        """The trunk of the base with mixing `key` for `split` paths, if one is held."""
        if key is None or split is None or not self._by_key:
            return None
        return self._by_key.get((key, tuple(sorted(split))))

    @staticmethod
    def key(model: Any) -> tuple[Any, ...] | None:
        """Which base (and split) `model`'s trunk is for: its `mix_key` and its sorted split paths (None:
        it shares no layers, so it has no trunk)."""
        mixing, split = mix_key(model), model.extra.get("own_paths")
        return None if mixing is None or not split else (mixing, tuple(sorted(split)))

    def add(self, key: tuple[Any, ...], trunk: Trunk) -> None:
        """Make `trunk` findable for its base (held as long as its tenants hold it)."""
        self._by_key[(key, tuple(sorted(trunk.split)))] = trunk

    def held(self) -> int:
        """How many trunks someone holds now."""
        return len(self._by_key)

    def of(self, model: Any) -> Trunk | None:
        """The trunk an eager `model` may run its shared layers on (None: no traced tenant of its base)."""
        if not self._by_key:
            return None
        return self.get(mix_key(model), model.extra.get("own_paths"))


TRUNKS = Trunks()


@dataclass(eq=False)
class TracedPieces:
    """A traced tenant's graphs for mixed batches: its own submodules' (by path) and its base's trunk."""

    own: dict[str, Graphs] = field(default_factory=dict)
    trunk: Trunk | None = None
    own_bytes: int = 0

    def graphs(self) -> list[Any]:
        """Every graph it holds, its own and the trunk's."""
        held = [*self.own.values(), *(self.trunk.graphs.values() if self.trunk is not None else ())]
        return [graph for by_signature in held for graph in by_signature.values()]


def _rows(value: Any, start: int, end: int, rows: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows:
        return value[start:end]
    return value


def _concat(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs, dim=0)
    if first is None:
        return None
    if isinstance(first, tuple | list):
        merged = [_concat([o[i] for o in outputs]) for i in range(len(first))]
        return type(first)(merged)
    raise TypeError(f"cannot join the per-tenant outputs of type {type(first).__name__}")


class RowSplit(nn.Module):
    """Runs each model's own submodule on that model's rows of the batch and joins the outputs."""

    def __init__(self, parts: list[nn.Module], segments: list[tuple[int, int]]) -> None:
        super().__init__()
        # a plain list, not registered: the parts stay owned (and listed) by their own models
        self.parts = parts
        self.segments = segments
        self.rows = segments[-1][1]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The submodules' outputs over their rows, concatenated in row order."""
        outputs = []
        for part, (start, end) in zip(self.parts, self.segments, strict=True):
            sliced = [_rows(a, start, end, self.rows) for a in args]
            named = {k: _rows(v, start, end, self.rows) for k, v in kwargs.items()}
            outputs.append(part(*sliced, **named))
        return _concat(outputs)


def _shallow(module: nn.Module) -> nn.Module:
    copy = module.__class__.__new__(module.__class__)
    copy.__dict__ = dict(module.__dict__)
    copy.__dict__["_modules"] = dict(module._modules)
    return copy


def composite(
    modules: list[nn.Module],
    paths: list[str],
    segments: list[tuple[int, int]],
    pieces: Sequence[TracedPieces | None] = (),
) -> nn.Module:
    """The first module's tree with a `RowSplit` of every model's submodule at each path (see the module
    docstring), and a `Piece` wherever `pieces` (one per model, or none) hold graphs: the models' own
    submodules, and the trunk's shared subtrees. The models themselves are not changed."""
    root = _shallow(modules[0])
    copied: set[int] = {id(root)}
    for path in paths:
        names = path.split(".")
        node = root
        for name in names[:-1]:
            child = node._modules[name]
            assert child is not None
            if id(child) not in copied:
                child = _shallow(child)
                copied.add(id(child))
                node._modules[name] = child
            node = child
        parts = [m.get_submodule(path) for m in modules]
        if pieces:
            parts = [
                _piece(part, p.own.get(path) if p else None) for part, p in zip(parts, pieces, strict=True)
            ]
        node._modules[names[-1]] = RowSplit(parts, segments)
    trunk = next((p.trunk for p in pieces if p is not None and p.trunk is not None), None)
    if trunk is not None and tuple(sorted(trunk.split)) == tuple(sorted(paths)):
        for path, graphs in trunk.graphs.items():
            parent, _, name = path.rpartition(".")
            node = root.get_submodule(parent) if parent else root
            if id(node) in copied and isinstance(node._modules.get(name), nn.Module):
                # only under the composite's own copies: the models' trees stay as they are
                node._modules[name] = Piece(node._modules[name], graphs)  # type: ignore[arg-type]
    return root


def _piece(module: nn.Module, graphs: Graphs | None) -> nn.Module:
    return module if not graphs else Piece(module, graphs)


@dataclass
class Part:
    """One model's share of a mixed batch: its items and which of them want raw outputs."""

    model: Any  # LoadedModel (not imported: modeling imports this module)
    items: list[TextInput]
    raw: list[bool]


def predict_together(parts: list[Part]) -> list[list[Result]]:
    """One forward for a batch mixing models of one base (rows grouped by model), then each model's own
    post-processing on its rows. The models must have one `group_key` (tokenizer, dtype, device,
    architecture and shared weights)."""
    paths = merge_paths([p.model.extra.get("own_paths") for p in parts])
    if paths is None:
        raise ValueError("these models share no weights: they cannot be batched together")
    first = parts[0].model
    items = [item for part in parts for item in part.items]
    batch = first.tokenizer.encode(items)
    segments, start = [], 0
    for part in parts:
        segments.append((start, start + len(part.items)))
        start += len(part.items)
    pieces: list[TracedPieces | None] = [getattr(p.model, "pieces", None) for p in parts]
    if not any(pieces):  # eager tenants only: the base's trunk if one is held
        trunk = TRUNKS.get(mix_key(first), paths)
        pieces = [TracedPieces(trunk=trunk)] + [None] * (len(parts) - 1) if trunk else []
    module = composite([p.model.module for p in parts], paths, segments, pieces)
    with torch.inference_mode():
        out = module(
            batch.input_ids.to(first.device),
            batch.attention_mask.to(first.device),
            batch.token_type_ids.to(first.device),
        )
    output = out.float().cpu()
    results = []
    for part, (lo, hi) in zip(parts, segments, strict=True):
        rows = list(range(lo, hi))
        raw = part.raw if any(part.raw) else None
        results.append(part.model.handler.finish(output[lo:hi], batch.select(rows), part.items, raw))
    return results


def group_key(model: Any) -> tuple[Any, ...] | None:
    """Models with equal keys may share a batch: those with one `mix_key`, a traced model only with its
    pieces for mixed batches (compile/tracing.py). None: never mixed."""
    if getattr(model, "graph", None) is not None and getattr(model, "pieces", None) is None:
        # a traced model's own batches beat mixing it eagerly with its base's other tenants: measured
        # quiet, 10 traced MiniLM tenants at 16 connections, 310 against 265 req/s (docs/benchmarks.md)
        return None
    return mix_key(model)


def mix_key(model: Any) -> tuple[Any, ...] | None:
    """What models must share to run in one batch: eager modules of one architecture and dtype on one
    device, holding the same shared weight groups, with one tokenizer (None: this one shares nothing)."""
    groups = model.extra.get("shared") or []
    if not isinstance(model.module, TaskWrapper) or not groups or model.extra.get("own_paths") is None:
        return None
    return (
        model.module.skeleton_key,
        str(model.dtype),
        str(model.device),
        id(model.tokenizer),
        tuple(sorted(id(g) for g in groups)),
    )


class Peers:
    """Which batchers may lend each other queued requests: those whose models have one `group_key`, and the
    group's batch compute times by size (its members form batches together: they size them from these).
    Event-loop only (join, leave and lookups happen between awaits)."""

    def __init__(
        self,
        key: Callable[[Any], tuple[Any, ...] | None] | None = None,
        run: Callable[[list[Part]], list[list[Result]]] | None = None,
    ) -> None:
        self.key = key or group_key
        self.run = run or predict_together  # runs a mixed batch (on an inference thread)
        self._members: dict[tuple[Any, ...], list[Any]] = {}
        self._key_of: dict[int, tuple[Any, ...]] = {}
        self._estimators: dict[tuple[Any, ...], WaitEstimator] = {}

    def join(self, batcher: Any) -> None:
        """Add a batcher (its `model` decides its group; a model that cannot mix joins none)."""
        key = self.key(batcher.model)
        if key is None:
            return
        self._members.setdefault(key, []).append(batcher)
        self._key_of[id(batcher)] = key
        if key not in self._estimators:
            self._estimators[key] = WaitEstimator(batcher.settings.max_batch_size)

    def leave(self, batcher: Any) -> None:
        """Remove a batcher (closing: nothing more is taken from its queue)."""
        key = self._key_of.pop(id(batcher), None)
        if key is None:
            return
        members = self._members[key]
        members.remove(batcher)
        if not members:
            del self._members[key]
            del self._estimators[key]

    def estimator(self, batcher: Any) -> WaitEstimator | None:
        """The batch compute times of the batcher's group (None: it is in none)."""
        key = self._key_of.get(id(batcher))
        return None if key is None else self._estimators[key]

    def others(self, batcher: Any) -> list[Any]:
        """The other batchers of its group, fullest queue first."""
        key = self._key_of.get(id(batcher))
        if key is None:
            return []
        rest = [b for b in self._members[key] if b is not batcher]
        return sorted(rest, key=lambda b: -b.queue_depth)
