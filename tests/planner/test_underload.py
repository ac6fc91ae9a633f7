"""The service time under open-loop load (planner/underload.py, planner/overhead.py): the Poisson schedule,
which requests count (those that found the worker free), the server's own timings read from its real
metrics page, and one real measurement through `inferpack serve` with tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferpack.planner.overhead import (
    Overhead,
    ServerTiming,
    measure_server_timing,
    overhead_of,
    seed_url,
    with_overhead,
)
from inferpack.planner.profiler import ProfileRequest, profile_repository, request_item
from inferpack.planner.underload import (
    Sent,
    ServiceUnderLoad,
    mean_timings,
    poisson_offsets,
    service_times,
    timer_totals,
)
from inferpack.repository.local import open_repository
from inferpack.runtime.tasks import TextInput
from inferpack.server.metrics import ServerMetrics


def test_the_poisson_schedule_has_the_asked_rate_and_is_reproducible() -> None:
    offsets = poisson_offsets(20.0, 4000, seed=3)
    assert len(offsets) == 4000 and offsets == sorted(offsets) and offsets[0] > 0
    assert offsets[-1] / 4000 == pytest.approx(1 / 20.0, rel=0.05)  # mean gap
    assert poisson_offsets(20.0, 10, seed=3) == offsets[:10]
    with pytest.raises(ValueError):
        poisson_offsets(0.0, 5)


def test_each_service_runs_from_the_later_of_its_send_and_the_previous_answer() -> None:
    records = [
        Sent(0.000, 0.050),  # worker free: 50 ms end to end
        Sent(0.020, 0.090),  # sent while the first ran: served from its answer, 40 ms
        Sent(0.030, 0.150),  # queued behind both: 60 ms
        Sent(0.400, 0.445),  # free again: 45 ms
    ]
    services, waited = service_times(records[::-1])  # any order: answers are sorted
    assert services == pytest.approx([50.0, 40.0, 60.0, 45.0]) and waited == 2
    # A simulated one-worker FIFO queue under Poisson arrivals: the services come back exactly.
    arrivals = poisson_offsets(20.0, 300, seed=1)
    truth = [0.030 + 0.02 * ((k * 7) % 5) for k in range(300)]
    free_at, sent = 0.0, []
    for a, s in zip(arrivals, truth, strict=True):
        free_at = max(a, free_at) + s
        sent.append(Sent(a, free_at))
    services, waited = service_times(sent)
    assert services == pytest.approx([1000 * s for s in truth]) and 0 < waited < 300


def test_the_servers_own_timings_are_read_from_its_metrics_page() -> None:
    metrics = ServerMetrics(top_k=5)
    metrics.observe_batch("a", 1, waited=0.010, compute=0.040)
    metrics.observe_request("a", "seed", 200, 0.055)
    before = timer_totals(metrics.render().decode())
    for waited, compute in ((0.0, 0.030), (0.020, 0.050)):
        metrics.observe_batch("b", 1, waited=waited, compute=compute)
    metrics.observe_request("b", "seed", 200, 0.041)
    metrics.observe_request("a", "v2", 200, 0.081)
    means = mean_timings(before, timer_totals(metrics.render().decode()))
    assert means["compute"] == pytest.approx(40.0)
    assert means["queue_wait"] == pytest.approx(10.0)
    assert means["request"] == pytest.approx(61.0)  # over both models' label series


def _timing(forward: tuple[float, float] | None) -> ServerTiming:
    load = ServiceUnderLoad(
        median_ms=50.0, p90_ms=70.0, sent=80, waited=30, rate_rps=10.0, utilisation=0.5, busy=0.52,
        response_median_ms=60.0, response_p90_ms=120.0, server_ms={"compute": 45.0, "queue_wait": 12.0},
    )  # fmt: skip
    fwd = forward or (None, None)
    return ServerTiming(
        load, 44.0, 47.0, {"compute": 41.0}, 4, forward_median_ms=fwd[0], forward_p90_ms=fwd[1]
    )


def test_overhead_is_the_service_time_under_load_less_the_bare_forward() -> None:
    timing = _timing(None)
    assert overhead_of(timing, 42.0, 48.0) == Overhead(8.0, 22.0, timing)  # the profile's forward
    assert overhead_of(timing, 60.0, 80.0).median_ms == 0.0  # never negative
    # Forwards timed around the load (same minute) win over the profile's figures.
    around = _timing((45.0, 60.0))
    assert overhead_of(around, 10.0, 10.0) == Overhead(5.0, 10.0, around)
    url = seed_url("http://h:1", "m/1", TextInput("q a", "c"))
    assert url == "http://h:1/predictions/m%2F1?seq_0=q+a&seq_1=c"
    assert seed_url("http://h:1", "m", TextInput("t")).endswith("/predictions/m?seq_0=t")


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inferpack.repository.demo import make_demo_models

    root = tmp_path_factory.mktemp("tiny")
    make_demo_models(root, 2, arch="tiny", task="question-answering", prefix="tiny")
    return root


@pytest.mark.slow
def test_service_time_under_load_is_measured_through_a_real_server(tiny_repo: Path, tmp_path: Path) -> None:
    # A real `inferpack serve` on a free port with both tiny models; Poisson load from this process.
    repo = open_repository(tiny_repo)
    ids = repo.model_ids()
    items = {m: request_item(repo.manifest(m, repo.versions(m)[-1])) for m in ids}
    forwards = iter(range(1, 100))
    timing = measure_server_timing(
        tiny_repo, items, dtype="fp32", intra_op_threads=1, requests=40, utilisation=0.3,
        log_path=tmp_path / "server.log", forward=lambda: float(next(forwards)),
    )  # fmt: skip
    load = timing.under_load
    assert timing.models == 2 and load.sent == 40 and 0 <= load.waited < 40
    # 20 batches per model would make both hot (trace_after_batches 16): the eager forward it is compared
    # with stays what the server ran, no traced graph took over mid-measurement
    assert timing.runtime_swaps == 0
    assert 0 < load.median_ms <= load.p90_ms and 0 < load.busy < 1
    assert load.median_ms <= load.response_median_ms  # the waits are left out
    assert load.rate_rps == pytest.approx(0.3 * 1000 / timing.sequential_median_ms)
    # The server's metrics saw every request of the window (its compute and queue wait per batch).
    assert set(load.server_ms) == {"compute", "queue_wait", "request"}
    assert 0 < load.server_ms["compute"] <= load.server_ms["request"]
    assert set(timing.sequential_server_ms) == {"compute", "queue_wait", "request"}
    # The forward was timed 10 times before and 10 after the load: 1..20.
    assert timing.forward_median_ms == 10.5
    request = ProfileRequest(batch_sizes=[1], threads=[1], dtypes=["fp32"], repeats=2)
    profile, _ = profile_repository(repo, ids, request, when="test")
    prof = with_overhead(profile.profiles[0], overhead_of(timing, 1.0, 1.0))
    assert prof.request_overhead_ms == pytest.approx(max(0.0, load.median_ms - 10.5), abs=1e-3)
    assert "under Poisson load" in prof.source and "40 requests" in prof.source
    assert (tmp_path / "server.log").exists()


def test_profile_offers_the_load_flags_and_rejects_a_load_past_the_limit(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from inferpack.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not cut the flags
    help_text = runner.invoke(app, ["profile", "--help"]).output
    assert "--overhead-load" in help_text and "--overhead-requests" in help_text
    result = runner.invoke(app, ["profile", "--repository", str(tmp_path), "--overhead-load", "0.95"])
    assert result.exit_code == 2 and "--overhead-load" in result.output and "0.9" in result.output
