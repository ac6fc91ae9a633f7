"""The comparison behind every compile check, on hand-made tensors (no model needed)."""

from __future__ import annotations

import math

import pytest
import torch

from inferpack.compile.agreement import TOLERANCES, Tolerance, compare, output_rows
from inferpack.runtime.tasks import Encoded


def _batch(mask: list[list[int]]) -> Encoded:
    m = torch.tensor(mask)
    return Encoded(torch.zeros_like(m), m, torch.zeros_like(m), [])


def test_identical_rows_agree_exactly() -> None:
    rows = [torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 0.5])]
    c = compare(rows, [r.clone() for r in rows])
    assert c.max_abs_diff == 0.0
    assert c.cosine == pytest.approx(1.0)
    assert c.scale == 3.0
    assert c.judge(TOLERANCES["fp32"]).passed


def test_bound_scales_with_the_reference_magnitude() -> None:
    ref = [torch.tensor([10.0, 0.0])]
    cand = [torch.tensor([10.5, 0.0])]
    verdict = compare(ref, cand).judge(Tolerance(relative=0.1, min_cosine=0.9))
    assert verdict.tolerance == pytest.approx(1.0)  # 0.1 * max |reference|, in output units
    assert verdict.max_abs_diff == pytest.approx(0.5)
    assert verdict.passed
    assert not compare(ref, cand).judge(Tolerance(relative=0.01, min_cosine=0.9)).passed


def test_low_cosine_fails_even_with_small_differences() -> None:
    ref = [torch.tensor([0.01, 0.0])]
    cand = [torch.tensor([0.0, 0.01])]  # orthogonal: cosine 0, diff only 0.01
    verdict = compare(ref, cand).judge(Tolerance(relative=10.0, min_cosine=0.5))
    assert verdict.cosine == pytest.approx(0.0, abs=1e-6)
    assert not verdict.passed


def test_nan_output_never_passes() -> None:
    c = compare([torch.tensor([1.0, 2.0])], [torch.tensor([float("nan"), 2.0])])
    assert math.isnan(c.max_abs_diff)
    assert not c.judge(TOLERANCES["int8"]).passed


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differs"):
        compare([torch.zeros(3)], [torch.zeros(4)])


def test_qa_rows_ignore_padding_positions() -> None:
    # Two items, the second padded after 2 tokens: garbage in its padding must not count.
    out = torch.zeros(2, 4, 2)
    out[1, 2:] = 1000.0
    rows = output_rows(out, _batch([[1, 1, 1, 1], [1, 1, 0, 0]]), "question-answering")
    assert [r.numel() for r in rows] == [8, 4]
    assert all(float(r.abs().max()) == 0.0 for r in rows)


def test_embedding_rows_are_whole_vectors() -> None:
    out = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    rows = output_rows(out, _batch([[1, 1], [1, 0]]), "feature-extraction")
    assert [r.tolist() for r in rows] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_same_answers_counts_unchanged_labels() -> None:
    from inferpack.compile.agreement import same_answers
    from inferpack.runtime.tasks import TextInput, handler_for

    handler = handler_for("text-classification", ["no", "yes"])
    batch = _batch([[1], [1]])
    items = [[TextInput("a"), TextInput("b")]]
    reference = [torch.tensor([[0.0, 1.0], [1.0, 0.0]])]
    one_flipped = [torch.tensor([[0.0, 1.0], [0.0, 1.0]])]
    assert same_answers(handler, reference, reference, [batch], items) == 1.0
    assert same_answers(handler, reference, one_flipped, [batch], items) == 0.5
    embed = handler_for("feature-extraction")
    assert same_answers(embed, reference, one_flipped, [batch], items) is None
