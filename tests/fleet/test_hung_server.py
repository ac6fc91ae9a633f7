"""A hung server under load, end to end with real processes: 2 servers, 2 copies of every model (tiny demo
models), closed-loop load through the router, then SIGSTOP one server. The router's deadlines retry the
requests that hit it on the other copy and eject it; the supervisor's liveness probe fails, it kills
(SIGKILL) and restarts it; the router takes it back. Prints failed/total, the time until the router stopped
sending to the stopped server and the time until the restart (the figures quoted for issue 14)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from inferpack import processes as P
from inferpack.fleet import ops
from inferpack.fleet.state import RunDir, load_state
from inferpack.settings import load_settings
from tests.fleet.routerload import RouterLoad, two_servers
from tests.fleet.test_fleet_e2e import QUESTION, _reap, _wait

pytestmark = pytest.mark.slow
USERS = 4
FORWARDED = "inferpack_router_forwarded_total"


def _forwarded(router: str, server: str) -> float | None:
    try:
        text = httpx.get(f"{router}/metrics", timeout=5, trust_env=False).text
    except httpx.HTTPError:
        return None
    return P.metric_sum(text, FORWARDED, {"server": server})


def test_sigstopped_server_is_ejected_killed_and_restarted_without_failed_requests(tmp_path: Path) -> None:
    from inferpack.repository.demo import make_demo_models

    repo, run_dir = tmp_path / "repo", tmp_path / "run"
    models = make_demo_models(repo, 4, arch="tiny")
    plan = two_servers(repo, models, models)
    # The router runs on its defaults ([router]: 2 s deadline floor, ejection after 3 failures); the
    # supervisor probes liveness faster than its defaults (every 1 s, 1 s timeout, 3 in a row: a kill
    # ~6 s after the stop) to keep the test short. The config file reaches the router and the servers as `--config`.
    config = tmp_path / "inferpack.toml"
    config.write_text("[fleet]\nliveness_interval_s = 1.0\nliveness_timeout_s = 1.0\nliveness_failures = 3\n")
    settings = load_settings(config, {"fleet": {"run_dir": run_dir, "base_port": 0, "router_port": 0}})
    try:
        state = ops.up(settings, plan, config=config)
        router = state.router.url
        assert router is not None
        with httpx.Client(base_url=router, timeout=30, trust_env=False) as client:
            for i in range(40):  # latency samples for the deadlines
                assert client.get(f"/predictions/{models[i % 4]}", params=QUESTION).status_code == 200
        victim = state.server("server-0")
        assert victim.pid is not None
        with RouterLoad(router, models, users=USERS) as load:
            time.sleep(2.0)
            assert sum(load.outcomes.values()) > 0
            before_stop = last_count = _forwarded(router, "server-0")
            os.kill(victim.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            last_change = stopped_at
            restarted_at = killed_at = None
            deadline = stopped_at + 300
            while restarted_at is None:
                assert time.monotonic() < deadline, "server-0 was not restarted within 300 s"
                s = load_state(RunDir(run_dir))
                assert s is not None
                srv = s.server("server-0")
                if killed_at is None:
                    # Requests reaching the stopped process: counted until it is killed (after that the
                    # router may rightly send to the restarted one as soon as it answers).
                    count = _forwarded(router, "server-0")
                    if count is not None and count != last_count:
                        last_count, last_change = count, time.monotonic()
                    if srv.restarts == 1 or srv.status == "restarting":
                        killed_at = time.monotonic()
                        reason = srv.last_restart_reason
                if srv.restarts == 1 and srv.status == "ready":
                    restarted_at = time.monotonic()
                time.sleep(0.1)
            stop_sending_s = last_change - stopped_at
            sent_to_stopped = (last_count or 0.0) - (before_stop or 0.0)
            _wait(
                lambda: httpx.get(f"{router}/v2/health/ready", trust_env=False).json()["servers"]["server-0"],
                60,
                "the router to take server-0 back",
            )
            back_at = time.monotonic()
            before = _forwarded(router, "server-0") or 0.0
            _wait(lambda: (_forwarded(router, "server-0") or 0.0) > before, 30, "traffic to server-0 again")
        total = sum(load.outcomes.values())
        failed = total - load.outcomes["200"]
        assert killed_at is not None
        metrics = httpx.get(f"{router}/metrics", trust_env=False).text
        ejections = P.metric_sum(metrics, "inferpack_router_ejections_total", {"server": "server-0"})
        retries = P.metric_sum(metrics, "inferpack_router_deadline_retries_total")
        print(
            f"\nSIGSTOP test: failed {failed}/{total} requests ({dict(load.outcomes)}), slowest "
            f"{load.slowest_s:.2f} s; router sent {sent_to_stopped:g} request(s) to the stopped server-0, "
            f"the last {stop_sending_s:.2f} s after SIGSTOP ({ejections:g} ejection(s), {retries:g} "
            f"deadline retries); supervisor killed it "
            f"{killed_at - stopped_at:.2f} s after SIGSTOP, restarted and ready after "
            f"{restarted_at - stopped_at:.2f} s; router took it back after {back_at - stopped_at:.2f} s"
        )
        # Two copies of every model: a request that hits the stopped copy misses its deadline (>= 2 s) and
        # is retried on the other one; requests still held by it when it is killed fail their connection
        # and are retried too. So none fails.
        failures = [(f"{at - stopped_at:+.2f} s", *rest) for at, *rest in load.failures]
        assert failed == 0, (load.outcomes, failures)
        # It stops getting requests once its readiness probe times out (2 s) or it is ejected after three
        # missed deadlines (~2 s each): a few seconds; 20 s leaves room for a loaded machine.
        assert stop_sending_s < 20 and stop_sending_s < killed_at - stopped_at
        assert reason is not None and "liveness probe failed 3 times" in reason
        supervisor_log = run_dir / "logs" / "supervisor.log"
        assert "liveness probe failed 3 times in a row" in supervisor_log.read_text()
        final = load_state(RunDir(run_dir))
        assert final is not None and final.server("server-0").pid != victim.pid
    finally:
        _reap(run_dir, str(run_dir))
        _reap(run_dir, str(repo))
