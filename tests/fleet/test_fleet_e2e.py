"""End to end, with real processes: `inferpack up` -> requests through the router to every model ->
`inferpack status` -> kill a server -> traffic continues on the second copies and the server is restarted
-> `inferpack down` leaves no process behind. And `inferpack demo` at a reduced size."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from inferpack.errors import FleetError
from inferpack.fleet import ops
from inferpack.fleet.state import RunDir, is_alive, load_state
from inferpack.plan import Execution, Plan, Resources, ServerGroup, ServerPlan, save_plan
from inferpack.settings import load_settings

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "inferpack.cli"]
QUESTION = {"seq_0": "Who went home?", "seq_1": "Bob went home after the game."}


def _run(args: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s, env=env)


def _ours(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions `marker` (a tmp path only this test uses)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _reap(run_dir: Path, marker: str) -> None:
    """Always leave nothing behind: `down` if a fleet state says so, then kill what is left."""
    state = load_state(RunDir(run_dir))
    if state is not None and state.phase != "stopped":
        with contextlib.suppress(Exception):  # cleanup must go on to the kill below
            ops.down(run_dir, timeout_s=30)
    for proc in _ours(marker):
        proc.kill()
    psutil.wait_procs(_ours(marker), timeout=10)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inferpack.repository.demo import make_demo_models

    root = tmp_path_factory.mktemp("fleet-repo")
    make_demo_models(root, 4)
    return root


@pytest.fixture
def fleet_dirs(tmp_path: Path, tiny_repo: Path) -> Iterator[tuple[Path, Path]]:
    run_dir = tmp_path / "run"
    try:
        yield tmp_path, run_dir
    finally:
        _reap(run_dir, str(tiny_repo))
        _reap(run_dir, str(run_dir))


def test_up_route_kill_restart_down(tiny_repo: Path, fleet_dirs: tuple[Path, Path]) -> None:
    tmp, run_dir = fleet_dirs
    models = ["minilm-qa-0000", "minilm-qa-0001", "minilm-qa-0002", "minilm-qa-0003"]
    # Three models with a copy on each server, one (the last) only on server-0.
    plan = Plan(
        created_by="test",
        repository=str(tiny_repo),
        slo_p90_ms=30000.0,  # a percentile objective: never passed on as the servers' deadline
        groups=[
            ServerGroup(
                name="local",
                resources=Resources(cpu=1, memory_mb=2000),
                # a costed plan's execution: the servers must start with exactly these settings
                execution=Execution(
                    device="cpu", dtype="fp32", inference_threads=1, intra_op_threads=1, max_batch_size=4
                ),
                servers=[
                    ServerPlan(name="server-0", models=models),
                    ServerPlan(name="server-1", models=models[:3]),
                ],
            )
        ],
    )
    save_plan(plan, tmp / "plan.json")
    up = _run(
        [
            "up",
            "--plan",
            str(tmp / "plan.json"),
            "--run-dir",
            str(run_dir),
            "--base-port",
            "0",
            "--router-port",
            "0",
        ]
    )
    assert up.returncode == 0, up.stdout + up.stderr
    _, state = ops.read_state(run_dir)
    assert state.phase == "running"
    router = state.router.url
    assert router is not None
    argv = psutil.Process(state.servers[0].pid).cmdline()
    for flag, value in [
        ("--threads", "1"),
        ("--intra-op-threads", "1"),
        ("--dtype", "fp32"),
        ("--engine", "eager"),
        ("--max-batch-size", "4"),
    ]:
        assert argv[argv.index(flag) + 1] == value
    assert "--latency-objective-ms" not in argv

    with httpx.Client(base_url=router, timeout=60, trust_env=False) as client:
        for model in models:
            seed = client.get(f"/predictions/{model}", params=QUESTION)
            assert seed.status_code == 200, seed.text
            assert seed.headers["x-inferpack-model-load"] == "warm"
            v2 = client.post(
                f"/v2/models/{model}/infer",
                json={
                    "inputs": [
                        {"name": "question", "datatype": "BYTES", "shape": [1], "data": [QUESTION["seq_0"]]},
                        {"name": "context", "datatype": "BYTES", "shape": [1], "data": [QUESTION["seq_1"]]},
                    ]
                },
            )
            assert v2.status_code == 200, v2.text
            assert v2.json()["model_name"] == model
        assert client.get("/predictions/not-a-model").status_code == 404

        status = _run(["status", "--run-dir", str(run_dir)])
        assert status.returncode == 0, status.stderr
        assert "server-0" in status.stdout and "server-1" in status.stdout and "router" in status.stdout
        rows = {r.name: r for r in ops.status_rows(state)}
        assert all(r.alive and r.ready for r in rows.values())

        # `inferpack exec`: a command in server-1's own environment and the run directory, which reaches
        # the server it sits beside
        probe = (
            "import os, httpx; e = os.environ; "
            "print(os.getcwd(), e['OMP_NUM_THREADS'], e['HF_HUB_OFFLINE'], e['INFERPACK_EXEC_MODELS']); "
            "print(httpx.get(e['INFERPACK_EXEC_URL'] + '/v2/health/ready', trust_env=False).status_code)"
        )
        inside = _run(["exec", "server-1", "--run-dir", str(run_dir), "--", sys.executable, "-c", probe])
        assert inside.returncode == 0, inside.stderr
        where, ready = inside.stdout.splitlines()
        assert where.split() == [str(run_dir.resolve()), "1", "1", ",".join(models[:3])]
        assert ready == "200"
        assert sum(rows[s].requests or 0 for s in ("server-0", "server-1")) >= 2 * len(models)

        victim = state.server("server-0")
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        # Models with a second copy keep answering at once; the one held only by the victim cannot.
        for i in range(12):
            resp = client.get(f"/predictions/{models[i % 3]}", params=QUESTION)
            assert resp.status_code == 200, resp.text
        lonely = client.get(f"/predictions/{models[3]}", params=QUESTION)
        assert lonely.status_code == 503 and models[3] in lonely.json()["error"]

        def restarted() -> bool:
            s = load_state(RunDir(run_dir))
            assert s is not None
            srv = s.server("server-0")
            return srv.status == "ready" and srv.restarts == 1 and srv.pid != victim.pid

        _wait(restarted, 180, "server-0 to be restarted")
        _wait(
            lambda: client.get("/v2/health/ready").json()["servers"]["server-0"], 30, "the router to see it"
        )
        assert client.get(f"/predictions/{models[3]}", params=QUESTION).status_code == 200

    _, final_running = ops.read_state(run_dir)
    pids = [(p.pid, p.create_time) for p in [final_running.supervisor, *final_running.processes()]]
    down = _run(["down", "--run-dir", str(run_dir)])
    assert down.returncode == 0, down.stderr
    _, final = ops.read_state(run_dir)
    assert final.phase == "stopped"
    assert not any(is_alive(pid, created) for pid, created in pids)
    assert _ours(str(tiny_repo)) == [] and _ours(str(run_dir)) == []


def test_demo_end_to_end_small(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    try:
        args = [
            "demo",
            "--out",
            str(out),
            "--models",
            "4",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--users",
            "2",
        ]
        demo = _run(args, timeout_s=500)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "per-server load" in demo.stdout
        result = json.loads((out / "result.json").read_text())
        assert result["summary"]["requests"] > 0 and result["summary"]["errors"] == 0
        report = (out / "report.md").read_text()
        assert "## Fleet" in report and "server-0" in report and "server-1" in report
        for png in ("throughput.png", "latency_over_time.png", "latency_cdf.png", "models.png"):
            assert (out / png).stat().st_size > 0
        _, state = ops.read_state(out / "fleet")
        assert state.phase == "stopped"
        assert _ours(str(out)) == []
    finally:
        _reap(out / "fleet", str(out))


def test_up_fails_with_the_server_log_tail(tiny_repo: Path, tmp_path: Path) -> None:
    """A server that cannot start (its config is invalid) makes `up` fail, naming it, with its log tail,
    and nothing is left running."""
    run_dir = tmp_path / "run"
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_body_bytes = 1\n")  # below the allowed minimum: the server exits
    settings = load_settings(
        None, {"fleet": {"run_dir": run_dir, "base_port": 0, "router_port": 0, "ready_timeout_s": 120}}
    )
    try:
        with pytest.raises(FleetError) as info:
            ops.up(settings, ops.local_plan(tiny_repo, 2, 1), config=bad)
        assert "exited with status" in str(info.value)
        assert "max_body_bytes" in info.value.log_tail
        _, state = ops.read_state(run_dir)
        assert state.phase == "failed"
        assert not any(is_alive(p.pid, p.create_time) for p in [state.supervisor, *state.processes()])
    finally:
        _reap(run_dir, str(run_dir))


def test_scoped_tokens_hold_through_the_router_of_a_real_fleet(tiny_repo: Path, tmp_path: Path) -> None:
    """`up --config` with scoped tokens: the router process (and every server) reads them; a tenant's token
    is served its models and refused the others with 403, and metrics need the metrics token."""
    run_dir = tmp_path / "run"
    config = tmp_path / "inferpack.toml"
    config.write_text(
        '[server.auth]\ntokens = ["tenant-a minilm-qa-0000 minilm-qa-0001", "ops"]\n'
        'metrics_token = "scrape"\n'
    )
    settings = load_settings(
        config, {"fleet": {"run_dir": run_dir, "base_port": 0, "router_port": 0, "ready_timeout_s": 180}}
    )
    try:
        state = ops.up(settings, ops.local_plan(tiny_repo, 1, 1), config=config)
        tenant = {"Authorization": "Bearer tenant-a"}
        urls = [state.router.url, *(s.url for s in state.servers)]
        assert all(urls)
        for url in urls:
            with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
                assert (
                    client.get("/predictions/minilm-qa-0001", params=QUESTION, headers=tenant).status_code
                    == 200
                )
                for other in ("minilm-qa-0002", "no-such-model"):
                    r = client.get(f"/v2/models/{other}/ready", headers=tenant)
                    assert r.status_code == 403 and other in r.json()["error"], (url, r.text)
                index = client.post("/v2/repository/index", headers=tenant).json()
                assert [e["name"] for e in index] == ["minilm-qa-0000", "minilm-qa-0001"]
                assert client.get("/metrics", headers={"Authorization": "Bearer ops"}).status_code == 401
                assert client.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200
        # `inferpack status` reads request counts with the metrics token of its config
        assert all(r.requests is not None for r in ops.status_rows(state, metrics_token="scrape"))
        assert all(r.requests is None for r in ops.status_rows(state))
    finally:
        _reap(run_dir, str(run_dir))
