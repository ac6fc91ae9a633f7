"""HDR histograms of latencies in microseconds: recording, encoding, exact merging and summaries.

Percentiles of several workers are never averaged: each worker exports its encoded histogram and the
aggregate decodes and adds the counts, which gives exactly the histogram of all samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
# One hour: longer than any timeout we allow, so no sample is ever dropped for being out of range.
HIGHEST_US = 3_600_000_000
# 3 significant figures: 0.1% value error, the usual choice for latency SLOs.
SIG_FIGS = 3
# Per-interval histograms (one per second of a run) only feed plots; 2 figures keep them 7x smaller.
INTERVAL_SIG_FIGS = 2

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)


def new_histogram(sig_figs: int = SIG_FIGS) -> HdrHistogram:
    """An empty latency histogram (microseconds, 1 µs to 1 h)."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, sig_figs)


def record_us(hist: HdrHistogram, value_us: float) -> None:
    """Record one latency; values are clamped into the trackable range rather than silently dropped."""
    hist.record_value(min(max(int(value_us), LOWEST_US), HIGHEST_US))


def encode(hist: HdrHistogram) -> str:
    """The histogram as a compressed base64 string (the HdrHistogram V2 wire format)."""
    data: bytes = hist.encode()
    return data.decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    """Inverse of `encode`."""
    hist: HdrHistogram = HdrHistogram.decode(encoded)
    return hist


def merge(encoded: Iterable[str], sig_figs: int = SIG_FIGS) -> HdrHistogram:
    """Add the counts of several encoded histograms: the exact histogram of all their samples."""
    total = new_histogram(sig_figs)
    for item in encoded:
        total.add(decode(item))
    return total


def merge_encoded(encoded: Iterable[str], sig_figs: int = SIG_FIGS) -> str:
    """`merge`, then encode."""
    return encode(merge(encoded, sig_figs))


@dataclass(frozen=True)
class LatencySummary:
    """Count and latencies in milliseconds read from one histogram."""

    count: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _nonzero(hist: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Indices and counts of the non-empty buckets (hdrh's own iterators walk every bucket in Python,
    ~0.4 s per call on a 3-figure histogram; numpy finds the few hundred used ones at once)."""
    counts = np.ctypeslib.as_array(hist.counts)[: hist.counts_len]
    idx = np.flatnonzero(counts)
    return idx, counts[idx].astype(np.int64)


def percentiles(hist: HdrHistogram, wanted: Iterable[float]) -> dict[float, int]:
    """Value at each percentile, identical to `HdrHistogram.get_value_at_percentile`."""
    idx, counts = _nonzero(hist)
    cum = np.cumsum(counts)
    out: dict[float, int] = {}
    for p in wanted:
        if len(idx) == 0:
            out[p] = 0
            continue
        target = hist.get_target_count_at_percentile(p)
        k = min(int(np.searchsorted(cum, target, side="left")), len(idx) - 1)
        value = hist.get_value_from_index(int(idx[k]))
        equiv = hist.get_highest_equivalent_value(value) if p else hist.get_lowest_equivalent_value(value)
        out[p] = int(equiv)
    return out


def mean_us(hist: HdrHistogram) -> float:
    """Mean of the bucket midpoints, identical to `HdrHistogram.get_mean_value`."""
    total = hist.get_total_count()
    if not total:
        return 0.0
    idx, counts = _nonzero(hist)
    acc = 0
    for i, c in zip(idx.tolist(), counts.tolist(), strict=True):
        acc += c * hist._hdr_median_equiv_value(hist.get_value_from_index(i))
    return float(acc) / float(total)


def summarize(hist: HdrHistogram) -> LatencySummary:
    """Percentiles of a histogram (zeros when it is empty)."""
    count = int(hist.get_total_count())
    if count == 0:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p = percentiles(hist, PERCENTILES)
    return LatencySummary(
        count=count,
        min_ms=hist.get_min_value() / 1000.0,
        mean_ms=mean_us(hist) / 1000.0,
        p50_ms=p[50.0] / 1000.0,
        p90_ms=p[90.0] / 1000.0,
        p95_ms=p[95.0] / 1000.0,
        p99_ms=p[99.0] / 1000.0,
        p999_ms=p[99.9] / 1000.0,
        max_ms=hist.get_max_value() / 1000.0,
    )


def cdf(hist: HdrHistogram) -> tuple[list[float], list[float]]:
    """(latency ms, cumulative fraction) at every non-empty bucket, for a CDF plot."""
    total = hist.get_total_count()
    if total == 0:
        return [], []
    idx, counts = _nonzero(hist)
    xs = [hist.get_highest_equivalent_value(hist.get_value_from_index(i)) / 1000.0 for i in idx.tolist()]
    ys = (np.cumsum(counts) / total).tolist()
    return xs, ys


def same_counts(a: HdrHistogram, b: HdrHistogram) -> bool:
    """True when both histograms hold the same count in every bucket (same layout required)."""
    if a.counts_len != b.counts_len or a.get_total_count() != b.get_total_count():
        return False
    ia, ca = _nonzero(a)
    ib, cb = _nonzero(b)
    return bool(np.array_equal(ia, ib) and np.array_equal(ca, cb))
