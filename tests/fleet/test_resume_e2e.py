"""End to end, with real processes: a re-plan whose supervisor is SIGKILLed between phases. The router is
stopped (SIGSTOP) so the change cannot get past its route phase: the interruption comes through that
dependency, at a known point, with no sleep. `inferpack status` then says what was applied and what was
not, and `inferpack up` without `--plan` starts the fleet on the cut-short re-plan's target."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from inferpack.fleet import journal, ops
from inferpack.fleet.state import RunDir
from inferpack.plan import save_plan
from inferpack.settings import load_settings
from tests.fleet.test_fleet_e2e import CLI, _reap, _run, _wait
from tests.fleet.test_reconcile_e2e import MODELS, _index, _plan

pytestmark = pytest.mark.slow


@pytest.fixture
def repo_and_run(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    from inferpack.repository.demo import make_demo_models

    repo, run_dir = tmp_path / "repo", tmp_path / "run"
    make_demo_models(repo, len(MODELS))
    try:
        yield repo, run_dir
    finally:
        _reap(run_dir, str(repo))
        _reap(run_dir, str(run_dir))


def test_a_replan_whose_supervisor_is_killed_is_reported_and_resumed(repo_and_run: tuple[Path, Path]) -> None:
    repo, run_dir = repo_and_run
    run = RunDir(run_dir.resolve())
    m0, m1, m2, m3 = MODELS
    save_plan(_plan(repo, [m0, m2], [m1, m3]), run_dir.parent / "b.json")
    settings = load_settings(None, {"fleet": {"run_dir": run_dir, "base_port": 0, "router_port": 0}})
    state = ops.up(settings, _plan(repo, [m0, m1], [m2, m3]))
    assert state.router.pid is not None and state.supervisor.pid is not None
    router = psutil.Process(state.router.pid)
    router.suspend()  # the route phase now waits for a router that cannot answer
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    command = subprocess.Popen(
        [*CLI, "up", "--plan", str(run_dir.parent / "b.json"), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:

        def loads_done() -> bool:
            found = journal.load_journal(run)
            return found is not None and found.phases_done >= 1

        _wait(loads_done, 300, "the re-plan's first phase")
        psutil.Process(state.supervisor.pid).kill()
    finally:
        router.resume()
    output, _ = command.communicate(timeout=120)
    assert command.returncode != 0 and "supervisor is not running" in output, output
    record = journal.load_journal(run)
    assert record is not None and record.status == "running" and record.phases_done == 1

    shown = _run(["status", "--run-dir", str(run_dir)])
    assert "was cut short" in shown.stderr, shown.stdout + shown.stderr
    assert (
        "applied: 2 x load copy" in shown.stderr and "not applied: route: add the new holders" in shown.stderr
    )

    resumed = _run(["up", "--run-dir", str(run_dir), "--base-port", "0", "--router-port", "0"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stderr
    _, state = ops.read_state(run_dir)
    assert {s.name: s.models for s in state.servers} == {"server-0": [m0, m2], "server-1": [m1, m3]}
    assert state.router.url is not None
    assert _index(state.router.url) == {
        m0: ["server-0"],
        m1: ["server-1"],
        m2: ["server-0"],
        m3: ["server-1"],
    }
    assert journal.load_journal(run) is None and journal.previous_file(run).is_file()
