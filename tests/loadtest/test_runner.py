"""The worker engine against a real HTTP server on 127.0.0.1 (the fake in conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from inferpack.loadtest import histograms as H
from inferpack.loadtest.config import BenchConfig, TrafficSpec
from inferpack.loadtest.result import aggregate
from inferpack.loadtest.runner import Worker, new_event_loop, run_worker, wait_until
from inferpack.loadtest.shapes import ClosedLoop, OpenLoop, Step
from inferpack.loadtest.targets import LoadTarget, resolve_target
from inferpack.loadtest.traffic import numbered_models
from inferpack.plan import Plan, save_plan

from .conftest import FakeServer


def _plan(servers: dict[str, list[str]]) -> Plan:
    return Plan.model_validate(
        {
            "created_by": "test",
            "groups": [
                {
                    "name": "g",
                    "resources": {"cpu": 1, "memory_mb": 512},
                    "servers": [{"name": n, "models": ms} for n, ms in servers.items()],
                }
            ],
        }
    )


def test_seq_visits_every_model_of_every_server_exactly_once(
    tmp_path: Path, make_server: Callable[..., FakeServer]
) -> None:
    models = numbered_models("m", 30)
    # Two servers, the hot model held by both (two copies): seq must hit each copy once.
    layout = {"srv-a": models[:20], "srv-b": [models[0], *models[20:]]}
    servers = {name: make_server(set(ms)) for name, ms in layout.items()}
    save_plan(_plan(layout), tmp_path / "plan.json")
    smap = {"format_version": 1, "servers": {n: s.url for n, s in servers.items()}}
    (tmp_path / "servers.json").write_text(json.dumps(smap))
    target, plan_models = resolve_target([], tmp_path / "plan.json", tmp_path / "servers.json")
    config = BenchConfig(mode="seq", target=target, models=plan_models, shape=ClosedLoop(users=3))
    # Split over three workers, as `--workers 3` would.
    parts = [run_worker(config, i, 3) for i in range(3)]
    merged = aggregate(parts)
    for name, server in servers.items():
        assert Counter(m for _, m in server.calls) == Counter(layout[name])
    assert merged.total_requests() == 31 and merged.errors == {}
    assert merged.models[models[0]].count == 2
    # Every model was new to its server: all cold, which the server reported through the header.
    assert merged.compute_summary()["cold"] == 31


def test_seq_keeps_order_with_one_user(fake_server: FakeServer) -> None:
    models = numbered_models("m", 12)
    config = BenchConfig(mode="seq", target=LoadTarget(urls=[fake_server.url]), models=models)
    run_worker(config)
    assert [m for _, m in fake_server.calls] == models


def test_open_loop_latency_includes_queueing_while_the_server_stalls(fake_server: FakeServer) -> None:
    rate, stall_s = 100.0, 0.6
    # The server stops answering for 0.6 s after its 20th request; the generator has only 2 connections,
    # like a closed-loop tool would. Requests due during the stall wait for a connection: that wait
    # is the delay users see and must be in the latency.
    fake_server.stall(after_requests=20, seconds=stall_s)
    config = BenchConfig(
        target=LoadTarget(urls=[fake_server.url]),
        models=["a"],
        shape=OpenLoop(steps=[Step(rate=rate)], max_in_flight=2),
        requests=150,
    )
    result = run_worker(config)
    latency = H.decode(result.histograms.latency)
    service = H.decode(result.histograms.service)
    assert latency.get_total_count() == 150
    # Requests due in the stall's first half waited at least 0.3 s (rate x 0.3 s = 30 of them).
    slow = sum(1 for v in _values(latency) if v >= 300_000)
    assert slow >= 0.8 * rate * (stall_s / 2), slow
    assert latency.get_max_value() >= 0.9 * stall_s * 1e6
    # Measured from the actual send (coordinated omission), only the 2 requests in flight look slow.
    assert sum(1 for v in _values(service) if v >= 300_000) <= 2
    assert H.summarize(latency).p90_ms > 5 * H.summarize(service).p90_ms


def _values(hist: object) -> list[int]:
    out: list[int] = []
    for item in hist.get_recorded_iterator():  # type: ignore[attr-defined]
        out += [item.value_iterated_to] * item.count_at_value_iterated_to
    return out


def test_closed_loop_request_count_warmup_and_errors(fake_server: FakeServer) -> None:
    fake_server.models = {"m-0", "m-1"}
    fake_server.shed_every = 10
    config = BenchConfig(
        target=LoadTarget(urls=[fake_server.url]),
        models=["m-0", "m-1", "missing"],
        shape=ClosedLoop(users=4),
        requests=120,
        warmup_s=0.2,
    )
    result = run_worker(config)
    info = result.workers[0]
    assert info.requests == 120
    assert info.warmup_requests > 0
    assert len(fake_server.calls) == 120 + info.warmup_requests
    errors = result.errors
    assert errors.get("http 404", 0) > 0 and errors.get("http 503", 0) > 0
    assert set(errors) <= {"http 404", "http 503"}
    ok = H.decode(result.histograms.latency).get_total_count()
    assert ok + sum(errors.values()) == 120
    assert result.models["missing"].errors == result.models["missing"].count


def test_v2_api_and_connect_errors(fake_server: FakeServer) -> None:
    config = BenchConfig(
        api="v2",
        target=LoadTarget(urls=[fake_server.url]),
        models=["x/y", "z"],
        shape=ClosedLoop(users=2),
        requests=20,
    )
    result = run_worker(config)
    assert result.errors == {}
    assert {api for api, _ in fake_server.calls} == {"v2"}
    assert {m for _, m in fake_server.calls} == {"x/y", "z"}
    dead = config.model_copy(update={"target": LoadTarget(urls=["http://127.0.0.1:9"]), "requests": 3})
    assert run_worker(dead).errors == {"connect error": 3}


def test_duration_run_with_zipf_over_10000_models(fake_server: FakeServer) -> None:
    config = BenchConfig(
        target=LoadTarget(urls=[fake_server.url]),
        models=numbered_models("m", 10_000),
        traffic=TrafficSpec(kind="zipf", zipf_s=1.2),
        shape=OpenLoop(steps=[Step(rate=200)]),
        duration_s=1.0,
        interval_s=0.25,
    )
    result = run_worker(config)
    assert 180 <= result.total_requests() <= 202
    assert result.errors == {}
    assert len(result.series) >= 4
    assert sum(i.count for i in result.series) == result.total_requests()
    # Rank 0 is the hottest model.
    top = max(result.models.items(), key=lambda kv: kv[1].count)[0]
    assert top == "m-00000"
    assert result.workers[0].cpu_s > 0


def test_closed_loop_users_are_concurrent(fake_server: FakeServer) -> None:
    fake_server.delay_s = 0.02
    rates = {}
    for users in (1, 5):
        config = BenchConfig(
            target=LoadTarget(urls=[fake_server.url]),
            models=["a"],
            shape=ClosedLoop(users=users),
            requests=50,
        )
        rates[users] = run_worker(config).throughput()
    # Every answer takes >= 20 ms: one user cannot beat 50 req/s; five users overlap their waits.
    assert rates[1] < 50 * 1.05
    assert rates[5] > 2.5 * rates[1]


def test_open_loop_latency_is_never_shorter_than_service_time(fake_server: FakeServer) -> None:
    config = BenchConfig(
        target=LoadTarget(urls=[fake_server.url]),
        models=["a"],
        shape=OpenLoop(steps=[Step(rate=400)], arrivals="poisson"),
        requests=200,
    )
    worker = Worker(config)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        result = runner.run(worker.run())
    assert worker.recorder is not None
    latency = H.decode(result.histograms.latency)
    service = H.decode(result.histograms.service)
    assert latency.get_total_count() == service.get_total_count() == 200
    # uvloop wakes timers up to ~0.5 ms early; such requests are measured from their actual send, so
    # every latency is >= its service time and the distributions keep that order at every percentile.
    wanted = [1.0, 10.0, 50.0, 90.0, 99.0, 100.0]
    lat, svc = H.percentiles(latency, wanted), H.percentiles(service, wanted)
    assert all(lat[p] >= svc[p] for p in wanted), (lat, svc)
    # Early wake-ups happen but are rare and bounded, not the rule.
    assert worker.recorder.early_sends < 200


def test_requests_past_the_deadline_are_timeouts(fake_server: FakeServer) -> None:
    fake_server.delay_s = 0.5
    config = BenchConfig(
        target=LoadTarget(urls=[fake_server.url]),
        models=["a"],
        shape=ClosedLoop(users=3),
        requests=6,
        timeout_s=0.1,
    )
    result = run_worker(config)
    assert result.errors == {"timeout": 6}
    failed = H.decode(result.histograms.errors)
    # Failed requests keep their latency: each gave up after its 100 ms deadline.
    assert failed.get_total_count() == 6
    assert failed.get_min_value() >= 0.09e6 and failed.get_max_value() < 0.5e6


def test_a_worker_waits_until_the_common_start_time() -> None:
    """Workers started at different moments all begin at `--start-at` (an injected clock: no real wait)."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def waits() -> list[float]:
        return [
            await wait_until(1000.0, clock=lambda: 958.5, sleep=sleep),  # early pod: waits 41.5 s
            await wait_until(1000.0, clock=lambda: 1003.0, sleep=sleep),  # late pod: starts at once
            await wait_until(None, clock=lambda: 0.0, sleep=sleep),  # no start time: no wait
            await wait_until(0.0, clock=lambda: 0.0, sleep=sleep),  # the rendered Job's "0": no wait
        ]

    assert asyncio.run(waits()) == [41.5, 0.0, 0.0, 0.0]
    assert slept == [41.5, 0.0]
