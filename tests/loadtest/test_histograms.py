"""Exact aggregation: merged worker histograms equal one histogram of every sample."""

from __future__ import annotations

import numpy as np

from inferpack.loadtest import histograms as H
from inferpack.loadtest.result import (
    BenchResult,
    Histograms,
    Interval,
    ModelStats,
    RunMetadata,
    WorkerInfo,
    aggregate,
)


def _samples(seed: int, n: int, scale_ms: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.lognormal(mean=np.log(scale_ms * 1000), sigma=0.8, size=n)


def test_merging_worker_histograms_equals_one_histogram_of_all_samples() -> None:
    # Four workers with very different latency profiles (a hot shard and slow ones).
    parts = [_samples(1, 5000, 5), _samples(2, 3000, 20), _samples(3, 800, 200), _samples(4, 1, 3000)]
    encoded = []
    for part in parts:
        h = H.new_histogram()
        for v in part:
            H.record_us(h, v)
        encoded.append(H.encode(h))
    everything = H.new_histogram()
    for v in np.concatenate(parts):
        H.record_us(everything, v)
    merged = H.merge(encoded)
    assert H.same_counts(merged, everything)
    assert merged.get_total_count() == sum(len(p) for p in parts)
    for q in (50, 90, 95, 99, 99.9, 100):
        assert merged.get_value_at_percentile(q) == everything.get_value_at_percentile(q)
    # The reference's way, averaging per-worker P90s, is far from the true P90 of this traffic.
    avg_p90 = np.mean([H.decode(e).get_value_at_percentile(90) for e in encoded])
    assert abs(avg_p90 - everything.get_value_at_percentile(90)) > 0.5 * everything.get_value_at_percentile(
        90
    )


def test_encode_decode_round_trip_keeps_every_count() -> None:
    h = H.new_histogram()
    for v in _samples(7, 2000, 10):
        H.record_us(h, v)
    assert H.same_counts(H.decode(H.encode(h)), h)


def test_values_outside_range_are_clamped_not_dropped() -> None:
    h = H.new_histogram()
    H.record_us(h, 0.2)
    H.record_us(h, 10 * H.HIGHEST_US)
    assert h.get_total_count() == 2


def _result(seed: int, n: int, start_unix: float, index: int) -> tuple[BenchResult, np.ndarray]:
    values = _samples(seed, n, 10)
    lat, iv = H.new_histogram(), H.new_histogram(H.INTERVAL_SIG_FIGS)
    for v in values:
        H.record_us(lat, v)
        H.record_us(iv, v)
    empty = H.encode(H.new_histogram())
    meta = RunMetadata(
        mode="bmk",
        api="seed",
        target="t",
        load_shape={},
        load_description="",
        traffic={"kind": "uniform"},
        models=2,
        warmup_s=0,
        duration_s=1,
        requests=None,
        timeout_s=1,
        started_at="",
        versions={},
        machine={},
    )
    result = BenchResult(
        metadata=meta,
        workers=[
            WorkerInfo(
                index=index,
                hostname="h",
                pid=1,
                start_unix=start_unix,
                measured_s=1.0,
                wall_s=1.0,
                cpu_s=0.1,
                requests=n + 1,
                warmup_requests=0,
            )
        ],
        interval_s=1.0,
        histograms=Histograms(
            latency=H.encode(lat),
            service=H.encode(lat),
            send_lag=empty,
            schedule_lag=empty,
            cold=empty,
            warm=H.encode(lat),
            errors=empty,
        ),
        errors={"http 503": 1},
        models={
            "a": ModelStats(count=n, total_us=int(values.sum()), max_us=int(values.max())),
            "b": ModelStats(count=1, errors=1),
        },
        series=[Interval(t_s=0.0, count=n + 1, errors=1, hist=H.encode(iv))],
    )
    return result, values


def test_aggregate_of_worker_results_is_exact() -> None:
    r1, v1 = _result(11, 3000, 1000.0, 0)
    r2, v2 = _result(12, 500, 1001.0, 1)  # started one interval later
    merged = aggregate([r1, r2])
    everything = H.new_histogram()
    for v in np.concatenate([v1, v2]):
        H.record_us(everything, v)
    assert H.same_counts(H.decode(merged.histograms.latency), everything)
    assert merged.errors == {"http 503": 2}
    assert merged.models["a"].count == 3500 and merged.models["b"].errors == 2
    assert merged.total_requests() == 3502
    # The second worker's interval lands one slot later on the shared time axis.
    assert [(i.t_s, i.count) for i in merged.series] == [(0.0, 3001), (1.0, 501)]
    assert merged.window_s() == 2.0


def test_fast_summaries_equal_hdrh_own_results() -> None:
    h = H.new_histogram()
    for v in np.concatenate([_samples(21, 4000, 3), _samples(22, 100, 900)]):
        H.record_us(h, v)
    wanted = [0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0]
    assert H.percentiles(h, wanted) == {p: h.get_value_at_percentile(p) for p in wanted}
    assert H.mean_us(h) == h.get_mean_value()
    xs, ys = H.cdf(h)
    assert ys[-1] == 1.0 and xs == sorted(xs)
    assert xs[-1] * 1000 == h.get_value_at_percentile(100)


def test_aggregating_different_runs_warns() -> None:
    r1, _ = _result(31, 10, 1000.0, 0)
    r2, _ = _result(32, 10, 1000.0, 1)
    assert not any("different runs" in w for w in aggregate([r1, r2]).warnings)
    r2.metadata = r2.metadata.model_copy(update={"target": "elsewhere"})
    assert any("different runs" in w for w in aggregate([r1, r2]).warnings)


def test_generator_warnings_name_the_cause() -> None:
    from inferpack.loadtest.ceiling import MEASURED_CEILING_RPS, generator_warnings

    result, _ = _result(41, 100, 1000.0, 0)
    calm = result.workers[0]
    assert generator_warnings(result, calm) == []
    busy = calm.model_copy(update={"cpu_s": 0.9})
    assert any("busy" in w for w in generator_warnings(result, busy))
    fast = calm.model_copy(update={"requests": int(MEASURED_CEILING_RPS), "measured_s": 1.0})
    assert any("ceiling" in w for w in generator_warnings(result, fast))
    lag = H.new_histogram()
    for _ in range(100):
        H.record_us(lag, 50_000)
    late = result.model_copy(
        update={"histograms": result.histograms.model_copy(update={"schedule_lag": H.encode(lag)})}
    )
    assert any("late" in w for w in generator_warnings(late, calm))
