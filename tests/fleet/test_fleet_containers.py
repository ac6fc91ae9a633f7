"""`inferpack up --runtime podman`: the plan's servers and router as containers of the image the session
built (tests/containers.py), with the same `status`, `logs`, restarts and `down` as host processes,
`down` finding the containers by name after the supervisor was killed, and a killed supervisor's
containers adopted by the next `up` (the same containers, no failed request through the router, a killed
adopted container started again, then `up --plan OTHER` adopting and re-planning).

Marked `container` (CI requires it; elsewhere it skips without podman)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from inferpack.fleet import ops
from inferpack.fleet.runners import LABEL, fleet_id
from inferpack.fleet.state import RunDir, is_alive, load_state
from inferpack.plan import load_plan, save_plan
from inferpack.repository.local import LocalRepository
from inferpack.runtime.hardware import cpu_has_native_bf16
from tests.containers import BuiltImage, podman
from tests.fleet.routerload import run_under_load
from tests.fleet.test_fleet_e2e import _wait as wait_for

# The session's image build runs in the first test's set-up: minutes on 2 busy cores.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(3000)]
CLI = [sys.executable, "-m", "inferpack.cli"]
QUESTION = {"seq_0": "Who went home?", "seq_1": "Bob went home after the game."}
# run inside a server container: pack one bf16 weight through the fleet's shared directory, print the
# files there with their inodes
PACK_ONE = (
    "import os, torch; from pathlib import Path; from inferpack.compile.packedfiles import PackedFiles;"
    "root = Path(os.environ['INFERPACK_SERVER__PACKED_WEIGHTS_DIR']); torch.manual_seed(0);"
    "assert PackedFiles(root).packed(torch.randn(64, 32).to(torch.bfloat16)) is not None;"
    "print(sorted((str(p), p.stat().st_ino) for p in root.rglob('*.packed')))"
)


def cli(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s, env=env)


def containers(run_dir: Path) -> list[str]:
    """Names of the containers (running or not) labelled with this run directory's fleet."""
    label = f"label={LABEL}={fleet_id(run_dir)}"
    listed = podman("ps", "--all", "--filter", label, "--format", "{{.Names}}")
    return sorted(listed.stdout.split())


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inferpack.repository.demo import make_demo_models

    root = tmp_path_factory.mktemp("container-fleet") / "repo"  # mktemp's own folder is 0700
    old = os.umask(0o022)  # readable by the image's user, whoever we are
    try:
        make_demo_models(root, 2)
    finally:
        os.umask(old)
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "run"
    try:
        yield run
    finally:  # leave nothing behind, whatever failed
        state = load_state(RunDir(run)) if run.exists() else None
        if state is not None and state.phase != "stopped":
            with contextlib.suppress(Exception):
                ops.down(run, timeout_s=60)
        if state is not None and is_alive(state.supervisor.pid, state.supervisor.create_time):
            assert state.supervisor.pid is not None
            psutil.Process(state.supervisor.pid).kill()
        if names := containers(run):
            podman("rm", "--force", *names)


def up(image: BuiltImage, repo: Path, run: Path) -> dict[str, str]:
    """`inferpack up --runtime podman`; returns {process name: URL} from the state."""
    started = cli(
        "up", "--runtime", "podman", "--image", image.tag, "--repository", str(repo),
        "--servers", "2", "--copies", "1", "--threads", "1", "--base-port", "0", "--router-port", "0",
        "--run-dir", str(run),
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    state = load_state(RunDir(run))
    assert state is not None and state.phase == "running"
    return {p.name: p.url or "" for p in state.processes()}


def test_up_runs_the_fleet_as_containers_with_status_logs_restart_and_down(
    inferpack_image: BuiltImage, small_repo: Path, run_dir: Path
) -> None:
    urls = up(inferpack_image, small_repo, run_dir)
    prefix = f"inferpack-{fleet_id(run_dir)}"
    assert containers(run_dir) == sorted(
        [f"{prefix}-net", f"{prefix}-router", f"{prefix}-server-0", f"{prefix}-server-1"]
    )
    # every model answers through the router, which reaches the servers inside the fleet's network
    models = LocalRepository(small_repo).model_ids()
    assert len(models) == 2
    for model in models:
        r = httpx.post(f"{urls['router']}/predictions/{model}", json=QUESTION, timeout=60, trust_env=False)
        assert r.status_code == 200, r.text
        assert r.json()["detail"] in QUESTION["seq_1"]

    # the servers share one directory of packed weights on the host (compile/packedfiles.py), writable by
    # the image's user: what one server packs, the other maps from the same file
    for server in ("server-0", "server-1"):
        writable = podman(
            "exec", f"{prefix}-{server}", "sh", "-c", 'test -w "$INFERPACK_SERVER__PACKED_WEIGHTS_DIR"'
        )
        assert writable.returncode == 0, writable.stderr
    if cpu_has_native_bf16():  # elsewhere no server packs (nothing to share)
        seen = [podman("exec", f"{prefix}-{s}", "python3", "-c", PACK_ONE) for s in ("server-0", "server-1")]
        assert all(p.returncode == 0 for p in seen), [p.stderr for p in seen]
        assert seen[0].stdout == seen[1].stdout and str(run_dir) in seen[0].stdout  # one file, not rewritten

    status = cli("status", "--run-dir", str(run_dir))
    assert status.returncode == 0, status.stderr
    rows = [line for line in status.stdout.splitlines() if "server-" in line or "router" in line]
    assert len(rows) == 3 and all("yes" in line for line in rows), status.stdout
    state = load_state(RunDir(run_dir))
    assert state is not None
    rss = {row.name: row.rss_mb for row in ops.status_rows(state, ops.runner_of(RunDir(run_dir)))}
    assert all(v is not None and v > 50 for v in rss.values()), rss  # the processes inside, not clients

    logs = cli("logs", "server-0", "--run-dir", str(run_dir))
    assert "podman run --rm --name " + f"{prefix}-server-0" in logs.stdout
    assert "--read-only" in logs.stdout and "Uvicorn running" in logs.stdout, logs.stdout[-2000:]

    # a server container that dies is started again, like a host process
    assert podman("kill", f"{prefix}-server-0").returncode == 0

    def restarted() -> bool:
        state = load_state(RunDir(run_dir))
        server = state.server("server-0") if state is not None else None
        return server is not None and server.restarts >= 1 and server.status == "ready"

    wait_for(restarted, 300, "server-0 to be restarted and ready")
    r = httpx.post(f"{urls['router']}/predictions/{models[0]}", json=QUESTION, timeout=60, trust_env=False)
    assert r.status_code == 200, r.text

    down = cli("down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert containers(run_dir) == []
    state = load_state(RunDir(run_dir))
    assert state is not None and state.phase == "stopped"


def test_down_removes_the_containers_after_the_supervisor_crashed(
    inferpack_image: BuiltImage, small_repo: Path, run_dir: Path
) -> None:
    up(inferpack_image, small_repo, run_dir)
    state = load_state(RunDir(run_dir))
    assert state is not None and state.supervisor.pid is not None
    os.kill(state.supervisor.pid, signal.SIGKILL)
    supervisor = state.supervisor
    wait_for(lambda: not is_alive(supervisor.pid, supervisor.create_time), 30, "the supervisor to die")
    assert len(containers(run_dir)) == 4  # orphans: nobody supervises them now

    down = cli("down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert "leftover" in down.stderr, down.stderr
    assert containers(run_dir) == []
    final = load_state(RunDir(run_dir))
    assert final is not None and final.phase == "stopped"
    assert json.loads(RunDir(run_dir).state_file.read_text())["phase"] == "stopped"


# --- a dead supervisor's containers are adopted ---------------------------------------------------------
def container_ids(run: Path) -> dict[str, str]:
    """Running containers of the fleet of `run`: name -> full id."""
    label = f"label={LABEL}={fleet_id(run)}"
    listed = podman("ps", "--no-trunc", "--filter", label, "--format", "{{.Names}} {{.ID}}")
    return dict(line.split() for line in listed.stdout.splitlines() if line.strip())


def kill_supervisor(run: Path) -> None:
    """SIGKILL the fleet's supervisor (not this test's child: init reaps it) and wait until it is gone."""
    state = load_state(RunDir(run))
    assert state is not None and state.supervisor.pid is not None
    sup = state.supervisor
    psutil.Process(sup.pid).send_signal(signal.SIGKILL)
    wait_for(lambda: not is_alive(sup.pid, sup.create_time), 30, "the supervisor to die")


def test_a_dead_supervisors_containers_are_adopted_without_a_failed_request(
    inferpack_image: BuiltImage, small_repo: Path, run_dir: Path
) -> None:
    common = [
        "--runtime", "podman", "--image", inferpack_image.tag, "--repository", str(small_repo),
        "--threads", "1", "--base-port", "0", "--router-port", "0", "--run-dir", str(run_dir),
    ]  # fmt: skip
    started = cli("up", *common, "--servers", "2", "--copies", "1")
    assert started.returncode == 0, started.stdout + started.stderr
    run = RunDir(run_dir)
    first = load_state(run)
    assert first is not None and first.phase == "running" and first.router.url is not None
    router, models = first.router.url, LocalRepository(small_repo).model_ids()
    prefix = f"inferpack-{fleet_id(run_dir)}"
    ids = container_ids(run_dir)
    assert sorted(ids) == sorted(f"{prefix}-{n}" for n in ("net", "router", "server-0", "server-1"))

    kill_supervisor(run_dir)
    assert container_ids(run_dir) == ids  # orphans, still serving
    # without --plan (nor --servers/--copies): the fleet's own plan, adopted as it runs
    again = run_under_load(router, models, lambda: cli("up", *common), "container adoption", 120)
    said = again.stdout + again.stderr
    assert "keeping its plan" in said and "adopted server-0" in said and "adopted router" in said, said
    assert container_ids(run_dir) == ids  # the same containers, the network holder included
    adopted = load_state(run)
    assert adopted is not None and adopted.phase == "running"
    assert adopted.supervisor.pid not in (None, first.supervisor.pid)
    assert all(p.adopted and p.status == "ready" for p in adopted.processes())
    shown = cli("status", "--run-dir", str(run_dir))
    assert shown.stdout.count("(adopted)") == 3, shown.stdout
    assert adopted.supervisor.pid is not None
    watchers = [c.cmdline()[:2] for c in psutil.Process(adopted.supervisor.pid).children()]
    assert watchers.count(["podman", "wait"]) == 3, watchers

    # An adopted server container that dies is started again: a new container, its exit status known.
    assert podman("kill", f"{prefix}-server-0").returncode == 0

    def restarted() -> bool:
        s = load_state(run)
        return s is not None and s.server("server-0").status == "ready" and s.server("server-0").restarts >= 1

    wait_for(restarted, 300, "the adopted server container's restart")
    after = load_state(run)
    assert after is not None
    server0 = after.server("server-0")
    assert not server0.adopted and server0.last_exit == 137, server0
    now = container_ids(run_dir)
    assert now[f"{prefix}-server-0"] != ids[f"{prefix}-server-0"]
    assert {k: v for k, v in now.items() if not k.endswith("server-0")} == {
        k: v for k, v in ids.items() if not k.endswith("server-0")
    }

    # Another crash, another plan: adopted as it runs, then re-planned (server-1 takes a copy of both).
    kill_supervisor(run_dir)
    other = load_plan(run.plan_file)
    other.groups[0].servers[1].models = sorted(models)
    other_file = run_dir.parent / "other.json"
    save_plan(other, other_file)
    replan = [*common, "--plan", str(other_file)]
    replanned = run_under_load(router, models, lambda: cli("up", *replan), "adoption then re-plan", 120)
    said = replanned.stdout + replanned.stderr
    assert "adopted server-1" in said and "re-plan" in said, said
    moved = load_state(run)
    assert moved is not None and moved.server("server-1").models == sorted(models)
    assert container_ids(run_dir)[f"{prefix}-server-1"] == ids[f"{prefix}-server-1"]

    down = cli("down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert containers(run_dir) == []
    final = load_state(run)
    assert final is not None and final.phase == "stopped"
