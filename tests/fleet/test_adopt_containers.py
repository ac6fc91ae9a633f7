"""Adopting a dead supervisor's containers, with a stand-in for podman (tests/fleet/test_runners.py's
recording engine answering `ps` and `inspect`) and a real process standing for `podman wait`: which
containers are left, which one matches its launch, the handle on an adopted one, the network holder kept,
and the supervisor taking them over and noticing a death. Real podman: tests/fleet/test_fleet_containers.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferpack.fleet import ops
from inferpack.fleet.adoption import AdoptedContainer, container_mismatch, sort_leftovers
from inferpack.fleet.runners import LABEL, ContainerRunner, fleet_id
from inferpack.fleet.state import FleetState, ProcessState, RunDir, save_state, start_time
from inferpack.fleet.supervisor import LaunchSpec, ServerLaunch, Supervisor
from tests.fleet.test_adoption import _settings
from tests.fleet.test_liveness import _stopping, _tick_until
from tests.fleet.test_runners import FakeEngine, runner

IMAGE_ID = "6831d55cb45f"
HOLDER_ID = "07015b8ff88c"


class Waiters:
    """Stand-ins for `podman wait ID`: each a real child that prints an exit status once `release`d."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.calls: list[list[str]] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        self.calls.append(cmd)
        gate = self.tmp_path / f"exit-{cmd[-1]}"
        script = (
            "import pathlib, time\n"
            f"gate = pathlib.Path({str(gate)!r})\n"
            "while not gate.exists(): time.sleep(0.02)\n"
            "print(gate.read_text(), flush=True)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def release(self, container_id: str, status: int) -> None:
        """The container `container_id` exits with `status`."""
        (self.tmp_path / f"exit-{container_id}").write_text(str(status))


@pytest.fixture
def waiters(tmp_path: Path) -> Iterator[Waiters]:
    w = Waiters(tmp_path)
    try:
        yield w
    finally:
        for p in w.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


def inspected(
    r: ContainerRunner, cmd: list[str], *, cid: str = "c0", running: bool = True, **over: Any
) -> dict[str, Any]:
    """What `podman inspect` says of one of the fleet's containers, as the runner would start it."""
    found: dict[str, Any] = {
        "Id": cid,
        "Image": IMAGE_ID,
        "State": {"Running": running, "Status": "running" if running else "exited", "Pid": os.getpid()},
        "Config": {
            "Cmd": cmd,
            "Labels": {LABEL: fleet_id(r.run_root), f"{LABEL}.run-dir": str(r.run_root), "other": "x"},
        },
        "HostConfig": {"NetworkMode": f"container:{HOLDER_ID}"},
    }
    for key, value in over.items():
        found[key] = {**found[key], **value} if isinstance(value, dict) else value
    return found


def answers(r: ContainerRunner, running: list[str], found: dict[str, dict[str, Any]]) -> FakeEngine:
    """An engine where the holder and `found` (process name -> inspect object) are inspectable, and
    `running` (container names) is what `ps` lists."""
    table = {
        "podman ps --filter": (0, "".join(f"{n}\n" for n in running), ""),
        "podman image inspect": (0, f"{IMAGE_ID}\n", ""),
        f"podman inspect --type container {r.holder}": (
            0,
            json.dumps([{"Id": HOLDER_ID, "State": {"Running": True}}]),
            "",
        ),
    }
    for name, obj in found.items():
        table[f"podman inspect --type container {r.container(name)}"] = (0, json.dumps([obj]), "")
    table["podman inspect"] = (125, "", "Error: no such object")
    return FakeEngine(table)


def test_a_container_is_adopted_only_as_its_launch_would_run_it(tmp_path: Path) -> None:
    r = runner(tmp_path, FakeEngine())
    cmd = ["inferpack", "serve", "--port", "8101", "--models", "m0"]

    def mismatch(found: dict[str, Any]) -> str | None:
        return container_mismatch(
            found,
            cmd=cmd,
            image_id=IMAGE_ID,
            labels={LABEL: fleet_id(r.run_root)},
            networks={f"container:{HOLDER_ID}", f"container:{r.holder}"},
        )

    assert mismatch(inspected(r, cmd)) is None
    assert (
        mismatch(inspected(r, cmd, HostConfig={"NetworkMode": f"container:{r.holder}"})) is None
    )  # docker's
    reasons = {
        "not running": inspected(r, cmd, running=False),
        "labels": inspected(r, cmd, Config={"Labels": {LABEL: "another-fleet"}}),
        "network": inspected(r, cmd, HostConfig={"NetworkMode": "container:an-old-holder"}),
        "image": inspected(r, cmd, Image="rebuilt"),
        "command": inspected(r, [*cmd[:-1], "m1"]),  # another launch: other models, port, threads...
    }
    for reason, found in reasons.items():
        why = mismatch(found)
        assert why is not None and why.startswith(reason), (reason, why)


def _state(*processes: ProcessState) -> FleetState:
    router = next(p for p in processes if p.role == "router")
    return FleetState(
        phase="running",
        supervisor=ProcessState(name="supervisor", role="supervisor", pid=None, create_time=1.0),
        router=router,
        servers=[p for p in processes if p.role == "server"],
    )


def _record(name: str, port: int, models: list[str] | None = None) -> ProcessState:
    """A record as a supervisor writes it: pid and start time of its `podman run` client (gone here)."""
    role = "router" if name == "router" else "server"
    return ProcessState(name=name, role=role, pid=None, create_time=1.0, port=port, models=models or [])


def test_leftover_containers_are_found_by_name_while_their_network_holder_runs(tmp_path: Path) -> None:
    r = runner(tmp_path, FakeEngine())
    state = _state(_record("router", 8100), _record("server-0", 8101, ["m0"]), _record("server-1", 8102))
    r.call = answers(r, [r.holder, r.container("server-0")], {})
    left = r.leftovers(state)
    assert [p.name for p in left] == ["server-0"]  # the router's and server-1's containers are gone
    assert r.call.calls[0][:2] == ["podman", "ps"] and "--all" not in r.call.calls[0]  # running ones
    # the same matching as for host processes: name, port and models against the launch
    assert [p.name for p in sort_leftovers(left, 8100, {"server-0": (8101, ["m0"])}).adopt] == ["server-0"]
    assert sort_leftovers(left, 8100, {"server-0": (8101, ["m1"])}).strays == left
    r.call = answers(r, [r.container("server-0")], {})  # no holder: nothing can be kept
    assert r.leftovers(state) == []


def test_an_adopted_container_is_watched_by_the_runtimes_wait_and_signalled_by_id(
    tmp_path: Path, waiters: Waiters
) -> None:
    r = runner(tmp_path, FakeEngine())
    r.spawn_waiter = waiters
    cmd = ["inferpack", "serve", "--port", "8101"]
    r.call = engine = answers(r, [], {"server-0": inspected(r, cmd, cid="c0")})
    proc = r.adopt("server-0", _record("server-0", 8101), cmd)
    assert isinstance(proc, AdoptedContainer)
    assert waiters.calls == [["podman", "wait", "c0"]]
    # the container's main process as the host sees it (status checks and measures it)
    assert proc.pid == os.getpid() and proc.create_time == start_time(os.getpid())
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.05)
    proc.kill()
    proc.terminate()
    assert engine.calls[-2:] == [
        ["podman", "kill", "--signal", "9", "c0"],
        ["podman", "kill", "--signal", "15", "c0"],
    ]
    waiters.release("c0", 137)  # it died of the SIGKILL: the runtime says so, unlike an adopted host process
    assert proc.wait(10) == 137 and proc.poll() == 137 and proc.returncode == 137
    calls = len(engine.calls)
    proc.kill()  # gone: nothing is signalled any more (a new container may have its name)
    assert len(engine.calls) == calls

    # another launch's container, or one not there any more: not adopted, no watcher started
    assert r.adopt("server-0", _record("server-0", 8101), [*cmd, "--threads", "2"]) is None
    assert r.adopt("server-1", _record("server-1", 8102), cmd) is None
    assert len(waiters.calls) == 1


def test_the_network_holder_and_the_adopted_containers_are_kept(tmp_path: Path) -> None:
    r = runner(tmp_path, FakeEngine())
    listed = [r.holder, r.container("router"), r.container("server-0"), r.container("server-1")]
    engine = FakeEngine({"podman ps --all": (0, "\n".join(listed), "")})
    r.call = engine
    r.open(keep=["server-0"])
    assert engine.calls[1:] == [
        ["podman", "rm", "--force", r.container("router")],
        ["podman", "rm", "--force", r.container("server-1")],
    ]  # the holder stays (the adopted server lives in its namespace), and is not started again


def test_the_supervisor_adopts_matching_containers_and_notices_their_death(
    tmp_path: Path, waiters: Waiters
) -> None:
    r = runner(tmp_path, FakeEngine())
    r.spawn_waiter = waiters
    spec = LaunchSpec(
        repository=str(tmp_path / "repo"),
        servers=[
            ServerLaunch(name="server-0", port=8101, models=["m0"], threads=1),
            ServerLaunch(name="server-1", port=8102, models=["m1"], threads=1),
        ],
        router_port=8100,
        runtime="podman",
        image="inferpack:latest",
        restart_backoff_s=60.0,  # no restart within the test (it would run the real podman)
    )
    previous = _state(
        _record("router", 8100), _record("server-0", 8101, ["m0"]), _record("server-1", 8102, ["m1"])
    )
    sup = Supervisor(RunDir(tmp_path / "run"), spec, runner=r, previous=previous)
    s0, s1 = sup.servers
    r.call = answers(
        r,
        [r.holder, *(r.container(n) for n in ("router", "server-0", "server-1"))],
        {
            "server-0": inspected(r, s0.cmd, cid="c0"),
            "server-1": inspected(r, [*s1.cmd, "--log-level", "debug"], cid="c1"),  # started otherwise
            "router": inspected(r, sup.router.cmd, cid="cr"),
        },
    )
    with _stopping(sup):
        assert sup.adopt() == [s0, sup.router]
        assert s1.proc is None and not s1.record.adopted  # replaced (started again), as before
        rec = s0.record
        assert rec.adopted and rec.status == "starting" and rec.pid == os.getpid()
        assert rec.create_time == start_time(os.getpid())
        assert "adopted from supervisor" in (rec.message or "")

        waiters.release("c0", 137)
        _tick_until(sup, lambda: rec.status == "restarting")
        assert rec.last_exit == 137 and rec.last_restart_reason == "exited with status 137"
        assert rec.pid is None and s0.restart_at is not None
        waiters.release("cr", 0)  # let the router's watcher end too: no process left behind


def test_up_adopts_a_container_fleet_only_on_its_runtime_and_image(
    demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    podman = _settings(tmp_path, runtime="podman", image="inferpack:1")
    plan = ops.local_plan(demo_repo, 2, 1)
    run, spec = ops.prepare(podman, plan, None)
    s0, s1 = spec.servers
    dead = _state(
        _record("router", spec.router_port),
        _record(s0.name, s0.port, s0.models),
        _record(s1.name, s1.port, s1.models),
    )
    save_state(run, dead)
    r = runner(tmp_path, FakeEngine())
    r.call = answers(r, [r.holder, r.container("server-1")], {})
    monkeypatch.setattr(ops, "launch_runner", lambda run, spec: r)  # the stand-in runtime
    found = ops.adoptable(podman, plan, None, run)
    assert found is not None and found[1]  # the same launch: adopt
    assert [p.name for p in found[0].adopt] == ["server-1"] and found[0].strays == []
    # another runtime or image than the recorded ones: start afresh
    assert ops.adoptable(_settings(tmp_path), plan, None, run) is None
    assert ops.adoptable(_settings(tmp_path, runtime="podman", image="inferpack:2"), plan, None, run) is None
    r.call = answers(r, [r.container("server-1")], {})  # the network holder is gone: nothing to keep
    assert ops.adoptable(podman, plan, None, run) is None
