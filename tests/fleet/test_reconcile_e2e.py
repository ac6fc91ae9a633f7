"""End to end, with real processes: a running 2-server fleet under load through the router gets a new plan
that moves half of its models to the other server (`inferpack up --plan NEW`), then a plan with a second
copy of every model and a rolling restart (`inferpack restart`): no request fails. Also: the restart
refuses to take down a model's only copy, and a second command on a locked run directory fails at once
naming the holder."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inferpack.fleet import ops
from inferpack.fleet.change import load_report
from inferpack.fleet.lock import run_lock
from inferpack.fleet.state import RunDir
from inferpack.plan import Plan, save_plan
from inferpack.settings import load_settings
from tests.fleet.routerload import RouterLoad, two_servers
from tests.fleet.test_fleet_e2e import _reap, _run

pytestmark = pytest.mark.slow
MODELS = [f"minilm-qa-000{i}" for i in range(4)]


def _plan(repo: Path, zero: list[str], one: list[str]) -> Plan:
    return two_servers(repo, zero, one, memory_mb=2000)


@pytest.fixture
def repo_and_run(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    from inferpack.repository.demo import make_demo_models

    repo, run_dir = tmp_path / "repo", tmp_path / "run"
    make_demo_models(repo, len(MODELS))
    make_demo_models(repo, 1, task="question-answering", prefix="broken")
    (repo / "broken-0000" / "1" / "model.safetensors").write_bytes(b"not a safetensors file")
    try:
        yield repo, run_dir
    finally:
        _reap(run_dir, str(repo))
        _reap(run_dir, str(run_dir))


def _under_load(router: str, args: list[str], what: str, *, succeeds: bool = True) -> str:
    """Run `inferpack ARGS` while the load runs; assert it succeeds (or fails) and no request failed."""
    with RouterLoad(router, MODELS, users=3, timeout_s=60) as load:
        deadline = time.monotonic() + 120
        while load.counted()[1] < 8:  # the load is flowing before the change starts
            assert time.monotonic() < deadline, f"no load flows: {load.failures[:3]}"
            time.sleep(0.2)
        done = _run(args)
        time.sleep(1.0)  # and keeps flowing after it
    failed, total = load.counted()
    report = load_report(RunDir(Path(args[args.index("--run-dir") + 1]).resolve()))
    took = f"{report.duration_s:.1f} s" if report is not None and report.duration_s is not None else "?"
    print(f"\n{what}: {failed} failed / {total} requests through the router; the change took {took}")
    assert (done.returncode == 0) == succeeds, done.stdout + done.stderr
    assert failed == 0, load.failures[:5]
    return done.stdout + done.stderr


def _index(router: str) -> dict[str, list[str]]:
    entries = httpx.post(f"{router}/v2/repository/index", json={}, timeout=30, trust_env=False).json()
    return {e["name"]: e["servers"] for e in entries}


def test_replan_and_rolling_restart_under_load(repo_and_run: tuple[Path, Path]) -> None:
    repo, run_dir = repo_and_run
    tmp = run_dir.parent
    m0, m1, m2, m3 = MODELS
    save_plan(_plan(repo, [m0, m1], [m2, m3]), tmp / "a.json")
    save_plan(_plan(repo, [m0, m2], [m1, m3]), tmp / "b.json")  # m1 and m2 move: half the models
    save_plan(_plan(repo, MODELS, MODELS), tmp / "c.json")
    settings = load_settings(None, {"fleet": {"run_dir": run_dir, "base_port": 0, "router_port": 0}})
    state = ops.up(settings, _plan(repo, [m0, m1], [m2, m3]))
    router = state.router.url
    assert router is not None
    pids = {s.name: s.pid for s in state.servers}

    # a re-plan that moves half the models, each with a single copy
    out = _under_load(router, ["up", "--plan", str(tmp / "b.json"), "--run-dir", str(run_dir)], "re-plan")
    assert "remove the old holders" in out and "done" in out
    _, state = ops.read_state(run_dir)
    assert {s.name: s.models for s in state.servers} == {"server-0": [m0, m2], "server-1": [m1, m3]}
    assert {s.name: s.pid for s in state.servers} == pids  # moved by load/unload, no restart
    assert _index(router) == {m0: ["server-0"], m1: ["server-1"], m2: ["server-0"], m3: ["server-1"]}

    # a change whose load fails is undone: the copy that did load is unloaded again, nothing else moves
    save_plan(_plan(repo, [m0, m2], [m1, m3, m0, "broken-0000"]), tmp / "broken.json")
    out = _under_load(
        router,
        ["up", "--plan", str(tmp / "broken.json"), "--run-dir", str(run_dir)],
        "re-plan with a failing load (undone)",
        succeeds=False,
    )
    assert "broken-0000" in out
    report = load_report(RunDir(run_dir.resolve()))
    assert report is not None and report.status == "failed"
    assert [(a.kind, a.model, a.status) for a in report.actions if a.phase == 1] == [
        ("load", m0, "undone"),
        ("load", "broken-0000", "failed"),
    ]
    assert [(a.kind, a.model, a.status) for a in report.actions if a.phase == 2] == [("unload", m0, "done")]
    _, state = ops.read_state(run_dir)
    assert {s.name: s.models for s in state.servers} == {"server-0": [m0, m2], "server-1": [m1, m3]}
    assert _index(router) == {m0: ["server-0"], m1: ["server-1"], m2: ["server-0"], m3: ["server-1"]}
    one = state.server("server-1").url
    loaded = httpx.post(f"{one}/v2/repository/index", json={"ready": True}, trust_env=False).json()
    assert sorted(e["name"] for e in loaded) == [m1, m3]

    # every model has one copy: a restart without --force refuses and names them
    refused = _run(["restart", "server-0", "--run-dir", str(run_dir)])
    assert refused.returncode != 0
    assert "no ready copy" in refused.stderr and m0 in refused.stderr and m2 in refused.stderr

    # a second command while one holds the run directory fails at once, naming the holder
    with run_lock(run_dir.resolve(), "inferpack up --plan held-by-the-test"):
        locked = _run(["up", "--plan", str(tmp / "a.json"), "--run-dir", str(run_dir)])
    assert locked.returncode != 0
    assert f"pid {os.getpid()}" in locked.stderr and "held-by-the-test" in locked.stderr

    # two copies of everything, then a restart under load (one server: every server is the same loop)
    _under_load(router, ["up", "--plan", str(tmp / "c.json"), "--run-dir", str(run_dir)], "second copies")
    out = _under_load(router, ["restart", "server-1", "--run-dir", str(run_dir)], "restart")
    assert "route around server-1" in out and "route to server-1 again" in out
    _, state = ops.read_state(run_dir)
    restarted = state.server("server-1")
    assert restarted.status == "ready" and restarted.restarts == 1 and restarted.pid != pids["server-1"]
    assert state.server("server-0").pid == pids["server-0"]
    assert _index(router) == {m: ["server-0", "server-1"] for m in MODELS}
    # the restarted server came back with the models of the plan in force, not those it started with
    models = httpx.post(f"{restarted.url}/v2/repository/index", json={"ready": True}, trust_env=False).json()
    assert sorted(e["name"] for e in models) == MODELS
