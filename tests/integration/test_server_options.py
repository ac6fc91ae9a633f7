"""Server options against real servers: auth, repository API switch, lazy loading, graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from inferpack.processes import free_port, probe_readiness, python_cli, wait_ready
from inferpack.server.errors import RETRY_ELSEWHERE
from inferpack.settings import AuthSettings
from tests.integration.conftest import running_server


def test_bearer_auth_for_inference_and_admin_token(demo_repo: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# tenants\nalpha-token\n\nbeta-token\n")
    auth = AuthSettings(tokens_file=tokens, admin_token="root-token")
    with running_server(demo_repo, models=["cls-0000"], auth=auth) as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/").status_code == 200 and c.get("/v2/health/ready").status_code == 200  # probes open
        r = c.get("/predictions/cls-0000")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/predictions/cls-0000", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            c.get("/predictions/cls-0000", headers={"Authorization": "Bearer beta-token"}).status_code == 200
        )
        load = "/v2/repository/models/cls-0000/load"
        admin = c.post(load, headers={"Authorization": "Bearer alpha-token"})
        assert admin.status_code == 401  # inference tokens do not open the load/unload API
        assert c.post(load, headers={"Authorization": "Bearer root-token"}).status_code == 200
        # the index only reads: any inference token lists (its scope's) models (docs/security.md)
        assert (
            c.post("/v2/repository/index", headers={"Authorization": "Bearer alpha-token"}).status_code == 200
        )


def test_repository_api_can_be_switched_off(demo_repo: Path) -> None:
    auth = AuthSettings(repository_api=False)
    with running_server(demo_repo, models=["cls-0000"], auth=auth) as s, httpx.Client(base_url=s.url) as c:
        r = c.post("/v2/repository/models/cls-0000/unload")
        assert r.status_code == 403 and "switched off" in r.json()["error"]
        assert c.get("/predictions/cls-0000").status_code == 200


def test_lazy_load_marks_the_cold_request(demo_repo: Path) -> None:
    with (
        running_server(demo_repo, models=[], lazy_load=True) as s,
        httpx.Client(base_url=s.url, timeout=60) as c,
    ):
        assert c.get("/v2/models/qa-0000/ready").status_code == 503
        first = c.get("/predictions/qa-0000")
        second = c.get("/predictions/qa-0000")
        assert first.status_code == second.status_code == 200
        assert first.headers["x-inferpack-model-load"] == "cold"
        assert second.headers["x-inferpack-model-load"] == "warm"
        assert c.get("/v2/models/qa-0000/ready").status_code == 200


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits(demo_repo: Path) -> None:
    port = free_port()
    # no default deadline: on a busy machine 16 long requests on one thread may wait longer than it, and
    # this test is about draining what was admitted (deadlines: test_overload.py)
    env = {
        **os.environ,
        "INFERPACK_SERVER__BATCHING__MAX_WAIT_MS": "0",
        "INFERPACK_SERVER__BATCHING__DEADLINE_MS": "0",
    }
    proc = subprocess.Popen(
        [
            *python_cli(),
            "serve",
            "--repository",
            str(demo_repo),
            "--models",
            "qa-0000",
            "--port",
            str(port),
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        statuses: list[int] = []
        long_context = "The river runs past the mill and the old stone bridge. " * 30

        def call() -> None:
            r = httpx.post(
                f"{url}/predictions/qa-0000", json={"seq_0": "What runs?", "seq_1": long_context}, timeout=60
            )
            statuses.append(r.status_code)

        clients = [threading.Thread(target=call) for _ in range(16)]
        for t in clients:
            t.start()
        # signal once the server has requests in flight (its metrics count queued work)
        while "inferpack_queue_depth 0.0" in httpx.get(f"{url}/metrics").text and any(
            t.is_alive() for t in clients
        ):
            pass
        proc.send_signal(signal.SIGTERM)
        for t in clients:
            t.join(timeout=60)
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is the normal exit status
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert statuses and all(code == 200 for code in statuses), statuses
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_full_queue_sheds_with_503_and_retry_after(demo_repo: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from inferpack.settings import BatchingSettings

    batching = BatchingSettings(max_batch_size=1, max_wait_ms=0, max_queue=1)
    with running_server(demo_repo, models=["qa-0000"], inference_threads=1, batching=batching) as s:
        context = "The river runs past the mill and the old stone bridge. " * 20

        def call(_: int) -> httpx.Response:
            return httpx.post(
                f"{s.url}/predictions/qa-0000", json={"seq_0": "What?", "seq_1": context}, timeout=60
            )

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(call, range(12)))
        shed = [r for r in responses if r.status_code == 503]
        assert shed, [r.status_code for r in responses]
        assert all(r.headers["retry-after"] == "1" and "queued" in r.json()["error"] for r in shed)
        assert all(r.headers["inferpack-error-kind"] == "overloaded" for r in shed)  # the router won't retry
        assert any(r.status_code == 200 for r in responses)
        assert "inferpack_requests_shed_total" in httpx.get(f"{s.url}/metrics").text
        assert httpx.get(f"{s.url}/predictions/qa-0000").status_code == 200  # still serving


def test_not_ready_while_a_required_model_failed_to_load(demo_repo: Path) -> None:
    """A model named in --models that fails to load holds readiness back and is named in the probe's
    body; `wait_ready` (what the local fleet does) fails at once naming it instead of timing out."""
    with running_server(demo_repo, inference_threads=1, models=["qa-0000", "broken-0000"]) as s:
        r = httpx.get(f"{s.url}/v2/health/ready", timeout=30)
        assert r.status_code == 503
        body = r.json()
        assert body["ready"] is False and body["started"] is True and body["draining"] is False
        assert list(body["failed_models"]) == ["broken-0000"]
        assert "safetensor" in body["failed_models"]["broken-0000"].lower()
        assert probe_readiness(s.url, 5)[1].keys() == {"broken-0000"}
        with pytest.raises(RuntimeError, match=r"cannot load required model.*broken-0000"):
            wait_ready(s.url, timeout_s=30)
        # a request for the failed model says so in a way the router retries on another copy
        failed = httpx.get(f"{s.url}/predictions/broken-0000", timeout=30)
        assert failed.status_code == 503 and failed.headers["inferpack-error-kind"] in RETRY_ELSEWHERE
        # the healthy model still answers: readiness is about taking new traffic, not about serving
        assert httpx.get(f"{s.url}/v2/models/qa-0000/ready", timeout=30).status_code == 200
    with running_server(demo_repo, inference_threads=1, models=["qa-0000"]) as s:
        assert httpx.get(f"{s.url}/v2/health/ready", timeout=30).json() == {"ready": True}
        wait_ready(s.url, timeout_s=30)


def test_not_ready_while_a_required_model_is_not_in_the_repository(demo_repo: Path) -> None:
    """A typo in --models used to leave the server ready (the load found no entry to mark failed), with
    only a log line saying the model was not found: the fleet then started a server that lacks it."""
    with running_server(demo_repo, inference_threads=1, models=["qa-0000", "qa-9999"]) as s:
        r = httpx.get(f"{s.url}/v2/health/ready", timeout=30)
        assert r.status_code == 503
        assert r.json()["failed_models"] == {"qa-9999": "model 'qa-9999' is not in the repository"}
        with pytest.raises(RuntimeError, match=r"cannot load required model.*qa-9999"):
            wait_ready(s.url, timeout_s=30)
        assert httpx.get(f"{s.url}/predictions/qa-0000", timeout=30).status_code == 200


def test_readiness_can_ignore_failed_models(demo_repo: Path) -> None:
    """`ready_requires_models=False` keeps the old behaviour; loading the whole repository (no --models)
    is best effort: the broken model is reported by the index but never holds readiness back."""
    settings = {"inference_threads": 1, "ready_requires_models": False}
    with running_server(demo_repo, models=["qa-0000", "broken-0000"], **settings) as s:
        assert httpx.get(f"{s.url}/v2/health/ready", timeout=30).status_code == 200
    with running_server(demo_repo, inference_threads=1, models=None, lazy_load=True) as s:
        httpx.post(f"{s.url}/v2/repository/models/broken-0000/load", timeout=30)
        assert httpx.get(f"{s.url}/v2/health/ready", timeout=30).status_code == 200
