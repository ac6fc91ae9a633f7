"""Faults around models, on a real server (port 0): a weights file that vanishes or is truncated after the
listing, a model folder or the whole repository becoming unreadable, a model larger than the whole memory
budget. Each gets one clear JSON error for that model (status, file, remedy), the index shows why, and
the model already serving keeps serving.

Unreadable: the tests run as root, who reads everything, so the server's files are read as uid nobody
(seteuid: the whole process, server thread included, as a server running under its own uid would), in a
world-readable repository; without root, chmod 000 alone makes them unreadable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferpack.repository.demo import make_demo_models
from tests.integration.conftest import RunningServer, running_server

pytestmark = pytest.mark.slow  # ~20 s: a MiniLM-sized model is made and a server started for the module
NOBODY = 65534
QUESTION = {"question": "Who went home?", "context": "Bob went home after the game."}
SERVING = "m-0000"  # loaded at start; must keep answering through every fault


@contextmanager
def as_nobody() -> Iterator[None]:
    """Read files as uid nobody while inside (root reads everything); as is when not root."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture(scope="module")
def fault_repo() -> Iterator[Path]:
    """Five tiny QA models and one MiniLM-sized one (~90 MB), in a folder any user can read."""
    root = Path(tempfile.mkdtemp(prefix="inferpack-faults-"))
    root.chmod(0o755)
    old = os.umask(0o022)
    try:
        make_demo_models(root, 5, arch="tiny", prefix="m")
        make_demo_models(root, 1, arch="minilm", prefix="big")
    finally:
        os.umask(old)
    try:
        yield root
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def fault_server(fault_repo: Path) -> Iterator[RunningServer]:
    """The tiny models fit the 60 MiB budget together; the MiniLM one alone does not. fp32 on every
    machine: a bf16 server holds the MiniLM weights at half their bytes (~44 MiB), which would fit."""
    with running_server(
        fault_repo,
        models=[SERVING],
        dtype="fp32",
        memory_budget_mb=60,
        inference_threads=1,
        repository_retry_initial_s=0.1,
        repository_retry_max_s=0.2,
    ) as server:
        yield server


@pytest.fixture
def client(fault_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fault_server.url, timeout=60) as c:
        yield c


def index(client: httpx.Client) -> dict[str, dict[str, Any]]:
    answer = client.post("/v2/repository/index", json={})
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()}


def still_serving(client: httpx.Client) -> None:
    answer = client.post(f"/predictions/{SERVING}", json=QUESTION)
    assert answer.status_code == 200, answer.text
    assert index(client)[SERVING]["state"] == "READY"


def test_a_weights_file_that_vanished_after_the_listing(client: httpx.Client, fault_repo: Path) -> None:
    assert "m-0001" in index(client)
    weights = fault_repo / "m-0001" / "1" / "model.safetensors"
    weights.unlink()
    answer = client.post("/v2/repository/models/m-0001/load")
    assert answer.status_code == 503, answer.text
    assert answer.headers["inferpack-error-kind"] == "model-load-failed"  # a router tries another copy
    body = answer.json()
    assert "'m-0001'" in body["error"] and str(weights) in body["error"] and "does not exist" in body["error"]
    assert "restore the file" in body["hint"]
    entry = index(client)["m-0001"]
    assert entry["state"] == "FAILED" and str(weights) in entry["reason"]
    still_serving(client)


def test_a_truncated_weights_file(client: httpx.Client, fault_repo: Path) -> None:
    weights = fault_repo / "m-0002" / "1" / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    answer = client.post("/predictions/m-0002", json=QUESTION)  # not loaded: the error says why
    assert answer.status_code == 503
    answer = client.post("/v2/repository/models/m-0002/load")
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert "'m-0002'" in body["error"] and f"cannot use {weights}" in body["error"]
    assert f"({weights.stat().st_size} bytes)" in body["error"]
    assert "truncated" in body["hint"] and "internal error" not in answer.text
    assert "cannot use" in index(client)["m-0002"]["reason"]
    still_serving(client)


def test_an_unreadable_model_folder(client: httpx.Client, fault_repo: Path) -> None:
    folder = fault_repo / "m-0003"
    folder.chmod(0o000)
    try:
        with as_nobody():
            listed = index(client)
            answer = client.post("/v2/repository/models/m-0003/load")
            still_serving(client)
    finally:
        folder.chmod(0o755)
    assert listed["m-0003"]["state"] == "UNAVAILABLE"
    assert f"cannot read {folder}" in listed["m-0003"]["reason"]
    assert "m-0004" in listed and "repository_degraded" not in listed["m-0004"]  # the others: unaffected
    assert answer.status_code == 503, answer.text
    assert f"cannot read {folder}" in answer.json()["error"]
    assert "chmod -R a+rX" in answer.json()["hint"]


def poll(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def degraded_metric(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("inferpack_repository_degraded "):
            return float(line.split()[1])
    raise AssertionError("no inferpack_repository_degraded in /metrics")


def test_an_unreadable_repository_is_degraded_and_recovers(client: httpx.Client, fault_repo: Path) -> None:
    assert degraded_metric(client) == 0.0
    fault_repo.chmod(0o000)
    try:
        with as_nobody():
            listed = index(client)
            ready = client.get("/v2/health/ready")
            metric = degraded_metric(client)
            still_serving(client)  # loaded: its weights are in memory
            load = client.post("/v2/repository/models/m-0004/load")
    finally:
        fault_repo.chmod(0o755)
    assert set(listed) >= {"m-0001", "m-0004", "big-0000"}  # the last listing
    assert all(f"cannot read {fault_repo}" in e["repository_degraded"] for e in listed.values())
    assert ready.status_code == 200  # it still serves: degraded is not unready
    assert f"cannot read {fault_repo}" in ready.json()["repository"]["reason"]
    assert metric == 1.0
    assert load.status_code == 503 and str(fault_repo) in load.json()["error"]
    # readable again: the background recovery re-lists it and clears the degraded state
    poll(lambda: "repository" not in client.get("/v2/health/ready").json())
    assert degraded_metric(client) == 0.0
    assert "repository_degraded" not in index(client)["m-0004"]
    assert client.post("/predictions/m-0004", json=QUESTION).status_code == 503  # not loaded (not lazy)
    assert client.post("/v2/repository/models/m-0004/load").status_code == 200
    assert client.post("/predictions/m-0004", json=QUESTION).status_code == 200
    client.post("/v2/repository/models/m-0004/unload")


def test_a_model_larger_than_the_whole_memory_budget(client: httpx.Client) -> None:
    answer = client.post("/v2/repository/models/big-0000/load")
    assert answer.status_code == 507, answer.text
    assert answer.headers["inferpack-error-kind"] == "insufficient-storage"
    body = answer.json()
    assert "'big-0000'" in body["error"] and "whole memory budget of 60.0 MiB" in body["error"]
    assert "server.memory_budget_mb" in body["hint"]
    entries = index(client)
    assert entries["big-0000"]["state"] == "FAILED" and "memory budget" in entries["big-0000"]["reason"]
    still_serving(client)  # nothing was evicted for a model that could never fit
