"""Traffic over models: which model the next request asks for.

A real multi-tenant fleet sees a few hot models and a long tail of cold ones, so besides `uniform` there
is `zipf` (the model at popularity rank k is asked with weight 1/k^s; the order of the model list is the
rank order) and `replay` (model ids in the order of a CSV trace). `sequence` is the `seq` mode: each
item exactly once, in order.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from inferpack.errors import ConfigError

TrafficKind = Literal["uniform", "zipf", "replay"]

# Draw model indices in blocks: one numpy call per block costs far less than one per request.
_BLOCK = 4096


class ModelPicker(Protocol):
    """Gives the index (into the model list) of the next request's model, or None when exhausted."""

    def next_index(self) -> int | None:
        """Index of the next model, None when a finite picker is done."""
        ...


def zipf_pmf(n: int, s: float) -> np.ndarray:
    """Probability of each rank 1..n under a Zipf law of exponent s (s=0 is uniform)."""
    if n < 1:
        raise ConfigError("Zipf traffic needs at least one model")
    if s < 0:
        raise ConfigError(f"Zipf exponent must be >= 0, got {s}")
    weights = np.arange(1, n + 1, dtype=np.float64) ** -s
    return np.asarray(weights / weights.sum(), dtype=np.float64)


class _BlockSampler:
    """Samples indices from a fixed distribution in blocks through inverse-CDF lookups."""

    def __init__(self, cdf: np.ndarray | None, n: int, rng: np.random.Generator) -> None:
        self._cdf = cdf
        self._n = n
        self._rng = rng
        self._block: list[int] = []
        self._pos = 0

    def next_index(self) -> int | None:
        if self._pos >= len(self._block):
            self._block = self.sample(_BLOCK).tolist()
            self._pos = 0
        index = self._block[self._pos]
        self._pos += 1
        return index

    def sample(self, size: int) -> np.ndarray:
        """`size` indices at once (used by tests and by the block refill)."""
        if self._cdf is None:
            return self._rng.integers(0, self._n, size=size)
        # searchsorted on the CDF maps a uniform draw to its rank; clip guards float rounding at 1.0.
        idx = np.searchsorted(self._cdf, self._rng.random(size), side="right")
        return np.minimum(idx, self._n - 1)


def uniform_picker(n: int, rng: np.random.Generator) -> _BlockSampler:
    """Every model equally likely."""
    if n < 1:
        raise ConfigError("uniform traffic needs at least one model")
    return _BlockSampler(None, n, rng)


def zipf_picker(n: int, s: float, rng: np.random.Generator) -> _BlockSampler:
    """Model at list position k (0-based) drawn with probability ∝ 1/(k+1)^s."""
    return _BlockSampler(np.cumsum(zipf_pmf(n, s)), n, rng)


class ReplayPicker:
    """Replays a fixed list of indices in order, cycling when it reaches the end."""

    def __init__(self, indices: Sequence[int], *, cycle: bool = True) -> None:
        if not indices:
            raise ConfigError("the replay trace holds no requests for this worker")
        self._indices = list(indices)
        self._pos = 0
        self._cycle = cycle

    def next_index(self) -> int | None:
        if self._pos >= len(self._indices):
            if not self._cycle:
                return None
            self._pos = 0
        index = self._indices[self._pos]
        self._pos += 1
        return index


class SequencePicker(ReplayPicker):
    """Each index once, in order, then None (the `seq` mode)."""

    def __init__(self, n: int) -> None:
        super().__init__(range(n), cycle=False)


def read_trace(path: Path) -> list[str]:
    """Model ids from a CSV trace: the `model_id` (or `model`) column when there is a header, else the
    first column. Blank lines are skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read trace {path}: {exc}") from exc
    rows = [row for row in csv.reader(text.splitlines()) if row and row[0].strip()]
    if not rows:
        raise ConfigError(f"trace {path} holds no model ids")
    header = [c.strip().lower() for c in rows[0]]
    column = 0
    for name in ("model_id", "model"):
        if name in header:
            column = header.index(name)
            rows = rows[1:]
            break
    ids = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    if not ids:
        raise ConfigError(f"trace {path} holds no model ids")
    return ids


def read_model_list(path: Path) -> list[str]:
    """Model ids, one per line (blank lines and # comments skipped), in popularity-rank order."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read model list {path}: {exc}") from exc
    ids = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not ids:
        raise ConfigError(f"model list {path} is empty")
    return ids


def numbered_models(prefix: str, count: int, *, seed_names: bool = False) -> list[str]:
    """`count` synthetic ids `prefix-00000`..., zero-padded so they sort in rank order; with `seed_names`,
    the reference's `prefix0`, `prefix1`, ... (what `inferpack models demo --seed-names` creates)."""
    if count < 1:
        raise ConfigError("--num-models must be >= 1")
    if seed_names:
        return [f"{prefix}{i}" for i in range(count)]
    width = max(5, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]
