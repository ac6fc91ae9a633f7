"""End to end, with real processes: the supervisor of a running fleet is SIGKILLed; its servers and router
keep serving; `inferpack up` again (no `--plan`: the fleet's own plan) starts a supervisor that adopts them, with requests flowing
through the router all along: none fails and the same server processes serve afterwards. The new
supervisor then detects the SIGKILL of an adopted server and starts it again as its own child. That
supervisor is SIGKILLed too, and `inferpack up --plan OTHER` adopts the fleet and re-plans it, again
without a failed request; `inferpack down` stops everything."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from inferpack.fleet import ops
from inferpack.fleet.state import RunDir, is_alive, load_state
from inferpack.plan import save_plan
from inferpack.settings import load_settings
from tests.fleet.routerload import run_under_load, two_servers
from tests.fleet.test_fleet_e2e import _ours, _reap, _run, _wait

pytestmark = pytest.mark.slow


def _up_under_load(
    router: str, models: list[str], plan_file: Path | None, run_dir: Path, what: str
) -> subprocess.CompletedProcess[str]:
    """`inferpack up [--plan PLAN_FILE]` while requests flow through the router: it succeeds, none fails."""
    args = ["up", "--run-dir", str(run_dir), "--base-port", "0", "--router-port", "0"]
    plan = ["--plan", str(plan_file)] if plan_file is not None else []
    return run_under_load(router, models, lambda: _run([*args, *plan]), what)


@pytest.fixture
def repo_and_run(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    repo, run_dir = tmp_path / "repo", tmp_path / "run"
    try:
        yield repo, run_dir
    finally:
        _reap(run_dir, str(repo))
        _reap(run_dir, str(run_dir))


def test_a_dead_supervisors_fleet_is_adopted_without_a_failed_request(
    repo_and_run: tuple[Path, Path],
) -> None:
    from inferpack.repository.demo import make_demo_models

    repo, run_dir = repo_and_run
    run = RunDir(run_dir.resolve())
    models = make_demo_models(repo, 2, arch="tiny")
    plan = two_servers(repo, models, models)
    settings = load_settings(None, {"fleet": {"run_dir": run_dir, "base_port": 0, "router_port": 0}})
    state = ops.up(settings, plan)
    router = state.router.url
    assert router is not None and state.supervisor.pid is not None
    pids = {p.name: (p.pid, p.create_time) for p in state.processes()}

    old = psutil.Process(state.supervisor.pid)
    old.kill()
    old.wait(10)  # it is this test's child: reaped here, so no zombie of ours is left either
    # without --plan: the fleet keeps its own plan (not the simple plan of the settings)
    again = _up_under_load(router, models, None, run_dir, "adoption")
    assert "keeping its plan" in again.stderr, again.stderr
    assert "adopted server-0" in again.stderr and "adopted router" in again.stderr, again.stderr

    adopted = load_state(run)
    assert adopted is not None and adopted.phase == "running"
    assert adopted.supervisor.pid not in (None, state.supervisor.pid)
    assert {p.name: (p.pid, p.create_time) for p in adopted.processes()} == pids  # the same processes
    assert all(p.adopted and p.status == "ready" for p in adopted.processes())
    shown = _run(["status", "--run-dir", str(run_dir)])
    assert shown.stdout.count("(adopted)") == 3, shown.stdout

    # An adopted server that dies is noticed (it is not the new supervisor's child) and started again.
    victim = adopted.server("server-0")
    assert victim.pid is not None
    psutil.Process(victim.pid).kill()

    def restarted() -> bool:
        s = load_state(run)
        return s is not None and s.server("server-0").status == "ready" and s.server("server-0").restarts == 1

    _wait(restarted, 120, "the adopted server's restart")
    after = load_state(run)
    assert after is not None
    server0 = after.server("server-0")
    assert server0.pid != victim.pid and not server0.adopted
    assert server0.last_restart_reason is not None and "adopted" in server0.last_restart_reason
    assert is_alive(server0.pid, server0.create_time)
    supervisor = psutil.Process(adopted.supervisor.pid)
    children = supervisor.children()
    assert [c.pid for c in children] == [server0.pid]  # its own child now; server-1 and the router are not
    assert all(c.status() != psutil.STATUS_ZOMBIE for c in children)

    # Another plan after another crash: adopted as it runs, then re-planned (server-1 drops a copy).
    psutil.Process(adopted.supervisor.pid).kill()
    psutil.Process(adopted.supervisor.pid).wait(10)
    other = plan.model_copy(deep=True)
    other.groups[0].servers[1].models = models[:1]
    other_file = run_dir.parent / "other.json"
    save_plan(other, other_file)
    replanned = _up_under_load(router, models, other_file, run_dir, "adoption then re-plan")
    assert "adopted server-1" in replanned.stderr and "re-plan" in replanned.stdout + replanned.stderr
    moved = load_state(run)
    assert moved is not None and moved.supervisor.pid not in (adopted.supervisor.pid, None)
    assert {s.name: (s.pid, s.models) for s in moved.servers} == {
        "server-0": (server0.pid, models),
        "server-1": (pids["server-1"][0], models[:1]),
    }
    pids["server-0"] = (server0.pid, server0.create_time)

    down = _run(["down", "--run-dir", str(run_dir)])
    assert down.returncode == 0, down.stdout + down.stderr
    final = load_state(run)
    assert final is not None and final.phase == "stopped"
    for name, (pid, created) in pids.items():
        assert not is_alive(pid, created), f"{name} (pid {pid}) is still running"
    assert _ours(str(run_dir)) == [] and _ours(str(repo)) == []
