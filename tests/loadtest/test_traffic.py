"""Traffic models: Zipf matches its law over 10,000 ids; uniform, replay, seq and trace parsing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from inferpack.errors import ConfigError
from inferpack.loadtest.traffic import (
    ReplayPicker,
    SequencePicker,
    numbered_models,
    read_trace,
    uniform_picker,
    zipf_picker,
    zipf_pmf,
)

N_MODELS = 10_000


def _chi_square_binned(
    counts: np.ndarray, expected: np.ndarray, min_expected: float = 20.0
) -> tuple[float, int]:
    """Chi-square over consecutive ranks merged until each bin expects >= min_expected draws."""
    stat, bins = 0.0, 0
    obs_acc = exp_acc = 0.0
    for o, e in zip(counts, expected, strict=True):
        obs_acc += o
        exp_acc += e
        if exp_acc >= min_expected:
            stat += (obs_acc - exp_acc) ** 2 / exp_acc
            bins += 1
            obs_acc = exp_acc = 0.0
    if exp_acc > 0:
        stat += (obs_acc - exp_acc) ** 2 / exp_acc
        bins += 1
    return stat, bins - 1


@pytest.mark.parametrize("s", [0.8, 1.0, 1.3])
def test_zipf_sampling_matches_its_distribution_over_10000_ids(s: float) -> None:
    draws = 200_000
    picker = zipf_picker(N_MODELS, s, np.random.default_rng(42))
    sample = picker.sample(draws)
    counts = np.bincount(sample, minlength=N_MODELS)
    expected = zipf_pmf(N_MODELS, s) * draws
    stat, dof = _chi_square_binned(counts, expected)
    # Wilson-Hilferty: the chi-square 99.9% quantile is about dof * (1 - 2/(9 dof) + 3.09 sqrt(2/(9 dof)))^3.
    critical = dof * (1 - 2 / (9 * dof) + 3.09 * np.sqrt(2 / (9 * dof))) ** 3
    assert stat < critical, (stat, critical, dof)
    # The hottest model's share within 4 standard errors of its probability.
    p1 = zipf_pmf(N_MODELS, s)[0]
    assert abs(counts[0] / draws - p1) < 4 * np.sqrt(p1 * (1 - p1) / draws)


def test_zipf_sampling_detects_a_wrong_exponent() -> None:
    # The same test must reject samples drawn with another exponent (the test has power).
    draws = 200_000
    sample = zipf_picker(N_MODELS, 1.1, np.random.default_rng(1)).sample(draws)
    counts = np.bincount(sample, minlength=N_MODELS)
    stat, dof = _chi_square_binned(counts, zipf_pmf(N_MODELS, 1.0) * draws)
    critical = dof * (1 - 2 / (9 * dof) + 3.09 * np.sqrt(2 / (9 * dof))) ** 3
    assert stat > critical


def test_next_index_streams_the_same_law_as_blocks() -> None:
    picker = zipf_picker(100, 1.0, np.random.default_rng(3))
    got = Counter(picker.next_index() for _ in range(20_000))
    assert set(got) <= set(range(100))
    assert got[0] > got[1] > got[9]


def test_uniform_covers_all_ids_evenly() -> None:
    sample = uniform_picker(N_MODELS, np.random.default_rng(5)).sample(500_000)
    counts = np.bincount(sample, minlength=N_MODELS)
    assert counts.min() > 0
    assert abs(counts.mean() - 50) < 1e-9 and counts.std() < 1.3 * np.sqrt(50)


def test_sequence_visits_each_once_then_stops() -> None:
    picker = SequencePicker(5)
    assert [picker.next_index() for _ in range(6)] == [0, 1, 2, 3, 4, None]


def test_replay_cycles_in_order() -> None:
    picker = ReplayPicker([2, 0, 1])
    assert [picker.next_index() for _ in range(7)] == [2, 0, 1, 2, 0, 1, 2]


def test_read_trace_with_header_and_without(tmp_path: Path) -> None:
    with_header = tmp_path / "a.csv"
    with_header.write_text("ts,model_id\n0.1,m-1\n0.2,m-2\n\n0.3,m-1\n")
    assert read_trace(with_header) == ["m-1", "m-2", "m-1"]
    bare = tmp_path / "b.csv"
    bare.write_text("x\ny\n")
    assert read_trace(bare) == ["x", "y"]
    empty = tmp_path / "c.csv"
    empty.write_text("\n")
    with pytest.raises(ConfigError):
        read_trace(empty)


def test_numbered_models_sort_in_rank_order() -> None:
    ids = numbered_models("m", N_MODELS)
    assert len(set(ids)) == N_MODELS and ids == sorted(ids)
    assert ids[0] == "m-00000"


def test_numbered_models_with_the_reference_names() -> None:
    """`--seed-names`: the ids the reference's benchmark and `models demo --seed-names` use."""
    assert numbered_models("model", 3, seed_names=True) == ["model0", "model1", "model2"]
