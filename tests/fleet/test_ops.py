"""The fleet's preparation without processes: simple plan, thread split, ports, run directory files."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch

from inferpack.errors import ConfigError, DeviceUnavailable, FleetError, PlanError
from inferpack.fleet import ops
from inferpack.fleet.state import FleetState, ProcessState, RunDir, save_state, start_time
from inferpack.fleet.supervisor import load_launch
from inferpack.plan import Plan, load_plan
from inferpack.processes import metric_sum, server_command, tail
from inferpack.runtime.hardware import usable_cores
from inferpack.settings import load_settings


def test_local_plan_spreads_copies_on_different_servers(demo_repo: Path) -> None:
    plan = ops.local_plan(demo_repo, servers=2, copies=2)
    assert plan.created_by == "simple"
    placement = plan.placement()
    assert set(placement) == set(plan.models()) and len(placement) == 5
    assert all(len(set(servers)) == 2 for servers in placement.values())
    # more copies than servers is capped, not an error
    assert all(len(s) == 1 for s in ops.local_plan(demo_repo, servers=1, copies=3).placement().values())


def test_local_plan_of_an_empty_repository(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no models"):
        ops.local_plan(tmp_path, 2, 2)


def test_threads_split_the_cores() -> None:
    cores = usable_cores()  # the CPUs this process may run on (affinity), as the code counts them
    assert ops.threads_per_server(0, 2) == max(1, cores // 2)
    assert ops.threads_per_server(0, 1000) == 1
    assert ops.threads_per_server(3, 2) == 3


def test_prepare_writes_plan_endpoints_and_launch(demo_repo: Path, tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {"fleet": {"run_dir": tmp_path / "run", "base_port": 0, "router_port": 0, "threads_per_server": 1}},
    )
    plan = ops.local_plan(demo_repo, 3, 1)
    run, spec = ops.prepare(settings, plan, None)
    endpoints = json.loads(run.endpoints_file.read_text())
    assert endpoints["format_version"] == 1
    assert sorted(endpoints["servers"]) == [s.name for s in spec.servers]
    ports = [s.port for s in spec.servers] + [spec.router_port]
    assert len(set(ports)) == len(ports)
    assert load_plan(run.plan_file).placement() == plan.placement()
    assert load_launch(run) == spec
    assert spec.servers[0].threads == 1


def test_prepare_refuses_a_busy_port(demo_repo: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        settings = load_settings(None, {"fleet": {"run_dir": tmp_path, "router_port": busy, "base_port": 0}})
        with pytest.raises(ConfigError, match="already in use"):
            ops.prepare(settings, ops.local_plan(demo_repo, 2, 1), None)


def test_prepare_refuses_a_running_fleet(demo_repo: Path, tmp_path: Path) -> None:
    me = os.getpid()
    save_state(
        RunDir(tmp_path),
        FleetState(
            supervisor=ProcessState(name="supervisor", role="supervisor", pid=me, create_time=start_time(me)),
            router=ProcessState(name="router", role="router"),
            servers=[],
        ),
    )
    settings = load_settings(None, {"fleet": {"run_dir": tmp_path, "base_port": 0, "router_port": 0}})
    with pytest.raises(FleetError, match="already running"):
        ops.prepare(settings, ops.local_plan(demo_repo, 2, 1), None)


def test_plan_with_unknown_models_is_refused(demo_repo: Path, tmp_path: Path) -> None:
    plan = ops.local_plan(demo_repo, 2, 1)
    plan.groups[0].servers[0].models.append("not-in-repo")
    settings = load_settings(None, {"fleet": {"run_dir": tmp_path, "base_port": 0, "router_port": 0}})
    with pytest.raises(PlanError, match="not in"):
        ops.prepare(settings, plan, None)


def test_helpers(tmp_path: Path) -> None:
    cmd = server_command(repository="r", models=["a", "b"], port=1, threads=2, device="cuda")
    assert cmd[-12:] == [
        "--models",
        "a,b",
        "--host",
        "127.0.0.1",
        "--port",
        "1",
        "--threads",
        "2",
        "--device",
        "cuda",
        "--log-level",
        "info",
    ]
    text = 'x_total{a="1"} 2.0\nx_total{a="2"} 3.0\nx_total_created 5.0\n# x_total 9\n'
    assert metric_sum(text, "x_total") == 5.0
    assert metric_sum(text, "x_total", {"a": "2"}) == 3.0
    assert metric_sum(text, "x_total", {"a": "3"}) == 0.0
    every = server_command(repository="r", models=None, port=1, threads=None, extra_args=["--lazy"])
    assert "--models" not in every and "--threads" not in every and every[-1] == "--lazy"
    log = tmp_path / "l.log"
    log.write_text("\n".join(str(i) for i in range(100)))
    assert tail(log, 3) == "97\n98\n99"
    assert tail(tmp_path / "missing.log") == ""


def test_follow_yields_new_lines_of_every_log(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("old line\n")
    got: list[tuple[str, str]] = []
    stream = ops.follow([("a", a), ("b", b)], stop=lambda: len(got) >= 3)
    with a.open("a") as f:
        f.write("new 1\nnew 2\npartial")
    b.write_text("from b\n")
    for item in stream:
        got.append(item)
    assert sorted(got) == [("a", "new 1"), ("a", "new 2"), ("b", "from b")]  # the partial line waits


def test_down_on_a_stale_fleet_stops_leftovers(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        state = FleetState(
            phase="running",
            supervisor=ProcessState(name="supervisor", role="supervisor", pid=dead.pid, create_time=1.0),
            router=ProcessState(name="router", role="router"),
            servers=[
                ProcessState(
                    name="server-0", role="server", pid=child.pid, create_time=start_time(child.pid), port=1
                )
            ],
        )
        save_state(RunDir(tmp_path), state)
        final, left = ops.down(tmp_path, timeout_s=5)
        assert [p.name for p in left] == ["server-0"]
        assert child.wait(timeout=15) is not None
        assert final.phase == "stopped"
        assert ops.read_state(tmp_path)[1].phase == "stopped"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_read_state_without_a_fleet(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="no fleet state"):
        ops.read_state(tmp_path)


def test_demo_load_test_config_follows_the_test_settings() -> None:
    from inferpack.fleet.demo import bench_config
    from inferpack.loadtest.shapes import ClosedLoop, OpenLoop

    closed = bench_config("http://r:1", ["a", "b"], load_settings(None, {"fleet": {"test": {"users": 3}}}))
    assert isinstance(closed.shape, ClosedLoop) and closed.shape.users == 3
    assert (closed.duration_s, closed.requests) == (20.0, None)
    assert closed.target.urls == ["http://r:1"] and closed.models == ["a", "b"]
    opened = bench_config(
        "http://r:1",
        ["a"],
        load_settings(None, {"fleet": {"test": {"rate": 5, "requests": 50, "api": "v2"}}}),
    )
    assert isinstance(opened.shape, OpenLoop) and opened.shape.steps[0].rate == 5
    assert (opened.duration_s, opened.requests, opened.api) == (None, 50, "v2")


def _gpu_plan(demo_repo: Path) -> Plan:
    """A simple plan whose second group targets CUDA (as a planned g4dn group would)."""
    plan = ops.local_plan(demo_repo, 2, 1)
    group = plan.groups[0]
    cpu = group.model_copy(update={"servers": group.servers[:1]})
    gpu = group.model_copy(update={"name": "g4dn", "target": "cuda", "servers": group.servers[1:]})
    return plan.model_copy(update={"groups": [cpu, gpu]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: the plan's device exists")
def test_up_refuses_a_group_whose_device_this_host_lacks(demo_repo: Path, tmp_path: Path) -> None:
    fleet = {"run_dir": tmp_path / "run", "base_port": 0, "router_port": 0}
    with pytest.raises(DeviceUnavailable, match="plan group 'g4dn' targets cuda, which this host lacks"):
        ops.prepare(load_settings(None, {"fleet": fleet}), _gpu_plan(demo_repo), None)
    assert not (tmp_path / "run" / "launch.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: the plan's device exists")
def test_cpu_fallback_runs_the_group_on_the_cpu_and_warns(
    demo_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = {"run_dir": tmp_path / "run", "base_port": 0, "router_port": 0, "allow_cpu_fallback": True}
    with caplog.at_level(logging.WARNING, logger="inferpack.fleet"):
        _, spec = ops.prepare(load_settings(None, {"fleet": fleet}), _gpu_plan(demo_repo), None)
    assert [s.device for s in spec.servers] == ["cpu", "cpu"]
    assert "'g4dn' targets cuda, which this host lacks: its servers run on the CPU" in caplog.text


def test_each_server_gets_its_groups_device(demo_repo: Path, tmp_path: Path) -> None:
    fleet = {"run_dir": tmp_path / "run", "base_port": 0, "router_port": 0}
    _, spec = ops.prepare(load_settings(None, {"fleet": fleet}), ops.local_plan(demo_repo, 2, 1), None)
    assert [s.device for s in spec.servers] == ["cpu", "cpu"]
    assert "--device" not in server_command(repository="r", models=["a"], port=1, threads=1)  # its default


def test_a_gpu_host_runs_the_gpu_group_on_its_gpu(
    demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferpack.runtime.devices import CudaDevice, DeviceFacts

    t4 = CudaDevice(0, "Tesla T4", (7, 5), 16 * 2**30, 15 * 2**30)
    monkeypatch.setattr(ops, "probe_devices", lambda neuron: DeviceFacts("2.13.0", "12.8", (t4,)))
    fleet = {"run_dir": tmp_path / "run", "base_port": 0, "router_port": 0, "threads_per_server": 0}
    _, spec = ops.prepare(load_settings(None, {"fleet": fleet}), _gpu_plan(demo_repo), None)
    assert [s.device for s in spec.servers] == ["cpu", "cuda"]
    # the GPU server keeps its device's default thread count (0: two per GPU), the CPU one its core share
    assert spec.servers[0].threads >= 1 and spec.servers[1].threads == 0
