"""The recorder: warm-up exclusion, error keys, cold/warm, and the interval series."""

from __future__ import annotations

from inferpack.loadtest import histograms as H
from inferpack.loadtest.recorder import Recorder


def test_warmup_errors_cold_warm_and_lag() -> None:
    rec = Recorder(["a", "b"], measure_start=10.0, interval_s=1.0)
    rec.record(0, intended=9.5, sent=9.5, done=10.2, error=None, load="cold")  # warm-up: not recorded
    rec.record(0, intended=10.0, sent=10.1, done=10.3, error=None, load="cold")
    rec.record(1, intended=10.1, sent=10.1, done=10.4, error=None, load="warm")
    rec.record(1, intended=10.2, sent=10.2, done=10.5, error="http 503", load=None)
    assert rec.warmup_requests == 1 and rec.done == 3
    assert rec.errors == {"http 503": 1}
    hists = rec.histograms()
    assert H.decode(hists.latency).get_total_count() == 2
    assert H.decode(hists.cold).get_total_count() == 1 and H.decode(hists.warm).get_total_count() == 1
    # Latency from intended (300 ms) includes the 100 ms the request waited to be sent; service does not.
    assert abs(H.decode(hists.cold).get_max_value() - 300_000) < 300
    assert abs(H.decode(hists.service).get_min_value() - 200_000) < 200
    stats = rec.model_stats()
    assert stats["a"].cold == 1 and stats["b"].errors == 1 and stats["b"].count == 2


def test_long_series_is_sealed_as_it_goes_and_complete() -> None:
    rec = Recorder(["a"], measure_start=0.0, interval_s=1.0)
    for i in range(3600):
        t = i * 0.5
        rec.record(0, intended=t, sent=t, done=t + 0.01, error=None, load=None)
    # Only the newest intervals keep an open (26 KB) histogram; the rest are encoded.
    assert len(rec._series) <= 3
    series = rec.series()
    assert [iv.t_s for iv in series] == [float(s) for s in range(1800)]
    assert all(iv.count == 2 for iv in series)
    merged = H.merge((iv.hist for iv in series), H.INTERVAL_SIG_FIGS)
    assert merged.get_total_count() == 3600


def test_an_early_send_is_measured_from_the_send() -> None:
    rec = Recorder(["a"], measure_start=0.0, interval_s=1.0)
    rec.record(0, intended=1.0, sent=0.9995, done=1.0100, error=None, load=None)
    assert rec.early_sends == 1
    hists = rec.histograms()
    # 10.5 ms from the actual send (not 10.0 ms from the later intended time); no negative lag.
    assert H.decode(hists.latency).get_max_value() == H.decode(hists.service).get_max_value()
    assert abs(H.decode(hists.latency).get_max_value() - 10_500) <= 10
