"""Two runtimes for one model, each batch on the one measured faster at its size (engine `mixed`).

No runtime wins everywhere (docs/benchmarks.md, bench/bench_runtimes.py): on a CPU with native bf16 ONNX
Runtime fp32 has been the faster one at batch 1 on one machine (AMD EPYC, avx512_bf16: 15.2 against
21.5 ms) and about even on another (Intel Xeon with AMX), while torch eager bf16 wins large batches
everywhere (9.5 against 13.2 ms per request at batch 8) and alone mixes tenants of a base in one batch.
And what a runtime costs inside a server differs from a bare loop: eager's Python dispatch competes for
the GIL with the other inference threads and the event loop, which ONNX Runtime (computing with the GIL
released) does not. So a model with an ONNX version keeps both (its eager module, which cross-tenant
batches run through, and a session) and chooses per batch, from the compute times it measured itself
under the server's own load, by batch size:
- until each runtime has `min_samples` times at a size, the runs alternate between them (the alternate
  first: an eager model's first forwards are its warm-up and would make it look slow);
- then the one with the lower median of its last `window` times (per token of the padded batch, so
  longer or shorter requests do not bias it) runs, the alternate only when it is faster by `margin`
  (10%: where the two are about even, as eager bf16 and ONNX Runtime at batch 1 on a CPU with AMX, the
  home runtime stays), and every `probe_every`-th batch of that size runs the other, to notice when the
  machine or the load changes which is faster.
Pure: no clock (the caller times the runs). Inference threads call it concurrently: a lock guards the
samples (microseconds against a forward's milliseconds).
"""

from __future__ import annotations

import collections
import statistics
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Sizes:
    """The recent per-token times of each runtime at one batch size, and the choices made there."""

    eager: collections.deque[float]
    alternate: collections.deque[float]
    chosen: int = 0


class RuntimeChoice:
    """Which of two runtimes, eager or the alternate, runs a batch of n rows (see the module's doc)."""

    def __init__(
        self, *, window: int = 5, min_samples: int = 3, probe_every: int = 16, margin: float = 0.1
    ) -> None:
        if window < 1 or not 1 <= min_samples <= window or probe_every < 2 or not 0 <= margin < 1:
            raise ValueError(
                "need window >= 1, 1 <= min_samples <= window, probe_every >= 2 and 0 <= margin < 1"
            )
        self.margin = margin
        self.window = window
        self.min_samples = min_samples
        self.probe_every = probe_every
        self._sizes: dict[int, _Sizes] = {}
        self._lock = threading.Lock()
        self._runs = [0, 0]  # batches sent to eager, to the alternate

    def _at(self, size: int) -> _Sizes:
        found = self._sizes.get(size)
        if found is None:
            found = _Sizes(collections.deque(maxlen=self.window), collections.deque(maxlen=self.window))
            self._sizes[size] = found
        return found

    def choose(self, size: int) -> bool:
        """True when a batch of `size` rows should run on the alternate runtime, False for eager."""
        with self._lock:
            at = self._at(size)
            at.chosen += 1
            if len(at.alternate) < self.min_samples or len(at.eager) < self.min_samples:
                # measure both first, alternating (the alternate first)
                pick = len(at.alternate) <= len(at.eager)
            else:
                probe = at.chosen % self.probe_every == 0  # now and then: the other one
                pick = self._alternate_wins(at) != probe
            self._runs[pick] += 1
            return pick

    def runs(self) -> tuple[int, int]:
        """Batches chosen so far for (eager, the alternate)."""
        return self._runs[0], self._runs[1]

    def observe(self, alternate: bool, size: int, tokens: int, seconds: float) -> None:
        """A batch of `size` rows and `tokens` padded tokens took `seconds` on the runtime `alternate`
        names (True: the alternate, False: eager)."""
        per_token = seconds / max(1, tokens)
        with self._lock:
            at = self._at(size)
            (at.alternate if alternate else at.eager).append(per_token)

    def preferred(self, size: int) -> bool | None:
        """The runtime that wins at `size` now (True: the alternate), None while it is still measuring."""
        with self._lock:
            at = self._sizes.get(size)
            if at is None or min(len(at.alternate), len(at.eager)) < self.min_samples:
                return None
            return self._alternate_wins(at)

    def _alternate_wins(self, at: _Sizes) -> bool:
        # eager is the home runtime (it alone batches across tenants and holds a shared base once): the
        # alternate must be faster by the margin, so two runtimes about even on a CPU do not flip-flop
        return statistics.median(at.alternate) < (1 - self.margin) * statistics.median(at.eager)


@dataclass
class Alternate:
    """A model's second runtime (an ONNX Runtime session over its ONNX version) and the choice between it
    and the model's eager module. `module` has the call signature every runtime shares."""

    module: Any
    kind: str = "onnxruntime"
    choice: RuntimeChoice = field(default_factory=RuntimeChoice)
