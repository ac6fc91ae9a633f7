"""Warm start on real servers: statistics written at shutdown, the hottest models resident after a restart
without any request, inside the budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from inferpack.processes import metric_sum
from inferpack.repository.demo import make_demo_models
from tests.integration.conftest import running_server


def _states(client: httpx.Client) -> dict[str, str]:
    return {m["name"]: m["state"] for m in client.post("/v2/repository/index").json()}


def test_restart_loads_the_hottest_models_that_fit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_demo_models(repo, 4, arch="tiny", prefix="t")  # fully unique small models
    stats = tmp_path / "state" / "access.json"
    common = {"lazy_load": True, "warm_start": True, "access_stats_file": str(stats), "dtype": "fp32"}
    uses = {"t-0002": 3, "t-0000": 2, "t-0003": 1}  # t-0001 never used
    with running_server(repo, **common) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        for model, n in uses.items():
            for _ in range(n):
                assert c.get(f"/predictions/{model}").status_code == 200
        one_model = metric_sum(c.get("/metrics").text, "inferpack_model_memory_bytes") / 3
    saved = json.loads(stats.read_text())["models"]  # written at shutdown
    assert list(saved) == ["t-0002", "t-0000", "t-0003"] and saved["t-0002"][0] > saved["t-0000"][0]

    budget_mb = 2.5 * one_model / 2**20  # room for the two hottest, not the third
    with (
        running_server(repo, memory_budget_mb=budget_mb, **common) as s,
        httpx.Client(base_url=s.url, timeout=60) as c,
    ):
        deadline = time.monotonic() + 120
        while metric_sum(c.get("/metrics").text, "inferpack_warm_start_pending") > 0:
            assert time.monotonic() < deadline, "warm start did not finish"
            time.sleep(0.05)
        states = _states(c)
        assert states["t-0002"] == states["t-0000"] == "READY"  # resident without a request
        assert states["t-0003"] != "READY" and states["t-0001"] != "READY"
        metrics = c.get("/metrics").text
        assert metric_sum(metrics, "inferpack_warm_start_loads_total") == 2
        assert metric_sum(metrics, "inferpack_model_cache_misses_total") == 0
        assert metric_sum(metrics, "inferpack_model_evictions_total") == 0
        response = c.get("/predictions/t-0002")
        assert response.status_code == 200 and response.headers["X-Inferpack-Model-Load"] == "warm"


def test_a_bad_statistics_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_demo_models(repo, 1, arch="tiny", prefix="t")
    stats = tmp_path / "access.json"
    stats.write_text("not json")
    with (
        running_server(repo, lazy_load=True, warm_start=True, access_stats_file=str(stats)) as s,
        httpx.Client(base_url=s.url, timeout=60) as c,
    ):
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/predictions/t-0000").status_code == 200
    assert list(json.loads(stats.read_text())["models"]) == ["t-0000"]
