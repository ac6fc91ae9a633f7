"""How closely a compiled model's outputs match a reference, and the tolerance each variant must meet.

Outputs are compared per item on what the task's answer depends on: QA start/end logits and token tag
logits over real tokens only (padding positions are never read), class logits, embeddings. Two numbers
come out: the largest absolute difference and the mean cosine similarity of the items' output vectors.

Output scales differ a lot between tasks (untrained demo heads give class logits around 0.01, QA logits
around 0.5, unit-length embeddings), so the absolute bound is a fraction of the reference's largest
magnitude on the same inputs, which the manifest then records as an absolute number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inferpack.repository.manifest import PER_TOKEN_TASKS, Agreement, Task
from inferpack.runtime.tasks import Encoded, Result, TaskHandler, TextInput


@dataclass(frozen=True)
class Tolerance:
    """A variant's bounds: max abs diff <= relative * reference scale, and mean cosine >= min_cosine."""

    relative: float
    min_cosine: float


# Measured on the MiniLM demo models' check set (docs/compile.md): traced fp32 differs from eager by at
# most ~1e-7 relative; bf16 by ~1% of the output scale with cosine > 0.9998; int8 dynamic by 23-41% with
# mean cosine 0.80-0.93 on the untrained demo heads. fp32 and bf16 bounds sit well outside the measured
# spread and far inside a broken trace's error. The int8 bound only rejects a broken conversion (cosine
# near 0): int8 always loses quality, and the manifest records how much so a user decides per model.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(relative=1e-3, min_cosine=0.99999),
    "bf16": Tolerance(relative=0.15, min_cosine=0.995),
    # fp16 (GPUs without bf16, e.g. the T4) keeps 3 more mantissa bits than bf16; bf16's bounds are reused
    # until fp16 is measured on a GPU (it cannot be here).
    "fp16": Tolerance(relative=0.15, min_cosine=0.995),
    "int8": Tolerance(relative=1.5, min_cosine=0.5),
}

# Tracing must not change what the converted model computes: traced vs eager of the *same* variant. bf16
# and int8 allow for kernels that a frozen graph fuses or reorders (rounding happens in other places).
TRACE_FIDELITY: dict[str, Tolerance] = {
    "fp32": Tolerance(relative=1e-3, min_cosine=0.99999),
    "bf16": Tolerance(relative=0.05, min_cosine=0.999),
    "fp16": Tolerance(relative=0.05, min_cosine=0.999),
    "int8": Tolerance(relative=0.05, min_cosine=0.999),
}


def output_rows(output: torch.Tensor, batch: Encoded, task: Task) -> list[torch.Tensor]:
    """One flat float32 vector per item: the part of the output the task's answer is computed from."""
    out = output.detach().float().cpu()
    rows = []
    for i in range(int(out.shape[0])):
        if task in PER_TOKEN_TASKS:
            real = batch.attention_mask[i].bool()
            rows.append(out[i, : real.shape[0]][real].reshape(-1))
        else:
            rows.append(out[i].reshape(-1))
    return rows


@dataclass(frozen=True)
class Comparison:
    """Raw comparison of candidate rows against reference rows."""

    max_abs_diff: float
    cosine: float
    min_cosine: float
    scale: float

    def judge(self, tolerance: Tolerance) -> Agreement:
        """The manifest's agreement record under a tolerance (bound in absolute output units)."""
        bound = tolerance.relative * self.scale
        passed = self.max_abs_diff <= bound and self.cosine >= tolerance.min_cosine
        return Agreement(
            max_abs_diff=self.max_abs_diff, cosine=self.cosine, tolerance=bound, passed=bool(passed)
        )


def compare(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor]) -> Comparison:
    """Max abs diff, mean and worst cosine, and the reference's largest magnitude over all rows."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"cannot compare {len(candidate)} rows against {len(reference)} reference rows")
    max_abs = 0.0
    scale = 0.0
    cosines = []
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.shape != cand.shape:
            raise ValueError(
                f"output shape {tuple(cand.shape)} differs from the reference {tuple(ref.shape)}"
            )
        max_abs = max(max_abs, float((ref - cand).abs().max()))
        scale = max(scale, float(ref.abs().max()))
        cosines.append(float(torch.nn.functional.cosine_similarity(ref, cand, dim=0, eps=1e-12)))
    # NaN anywhere (a broken bf16 overflow, say) must fail the check, and NaN compares False with any bound.
    if any(c != c for c in cosines) or max_abs != max_abs:
        return Comparison(float("nan"), float("nan"), float("nan"), scale)
    return Comparison(max_abs, sum(cosines) / len(cosines), min(cosines), scale)


def same_answers(
    handler: TaskHandler,
    reference: Sequence[torch.Tensor],
    candidate: Sequence[torch.Tensor],
    batches: Sequence[Encoded],
    items: Sequence[list[TextInput]],
) -> float | None:
    """The fraction of check items whose served answer is unchanged: the same QA span, the same label, the
    same entities (type and character span; their scores are continuous, like logits).

    Logit differences say little about whether a user sees a different answer; this decodes both outputs
    with the task's own handler. None for embeddings, which have no discrete answer (see the cosine).
    """
    answer = _ANSWERS.get(handler.task)
    if answer is None:
        return None
    same = total = 0
    for ref, cand, batch, batch_items in zip(reference, candidate, batches, items, strict=True):
        for r, c in zip(
            handler.decode(ref, batch, batch_items), handler.decode(cand, batch, batch_items), strict=True
        ):
            same += answer(r) == answer(c)
            total += 1
    return same / total


def _entity_spans(result: Result) -> tuple[tuple[Any, ...], ...]:
    return tuple((e["entity_group"], e["start"], e["end"]) for e in result["entities"])


# What identifies a decoded answer, per task with a discrete one.
_ANSWERS: dict[Task, Callable[[Result], Any]] = {
    "question-answering": lambda r: (r["start"], r["end"]),
    "text-classification": lambda r: r["label"],
    "token-classification": _entity_spans,
}
