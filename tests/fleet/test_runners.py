"""The fleet's process runners: the host runner's stop, and the container runner's command lines, checks
and clean-up with a recording stand-in for podman (the real one: tests/fleet/test_fleet_containers.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inferpack.errors import ConfigError, FleetError
from inferpack.fleet.runners import LABEL, ContainerRunner, HostRunner, config_mounts, fleet_id, make_runner
from inferpack.fleet.state import RunDir
from inferpack.fleet.supervisor import LaunchSpec, ServerLaunch, Supervisor


class FakeEngine:
    """Records every command; answers from {first words: (status, stdout, stderr)}."""

    def __init__(self, answers: dict[str, tuple[int, str, str]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        for prefix, (code, out, err) in self.answers.items():
            if " ".join(cmd).startswith(prefix):
                return subprocess.CompletedProcess(cmd, code, out, err)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def runner(tmp_path: Path, engine: FakeEngine) -> ContainerRunner:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    repo.chmod(0o755)
    return ContainerRunner("podman", "inferpack:latest", tmp_path / "run", [8100, 8101], [repo], call=engine)


def test_a_container_runs_unprivileged_read_only_with_settings_passed_by_name(tmp_path: Path) -> None:
    r = runner(tmp_path, FakeEngine())
    env = {"INFERPACK_SERVER__AUTH__TOKENS": '["s3cret"]', "OMP_NUM_THREADS": "1", "HOME": "/root"}
    cmd = r.run_command("server-0", ["inferpack", "serve", "--port", "8101"], env)
    text = " ".join(cmd)
    assert cmd[:3] == ["podman", "run", "--rm"]
    assert f"--name inferpack-{fleet_id(tmp_path / 'run')}-server-0" in text
    assert f"--network container:{r.holder}" in text
    assert "--read-only" in cmd and "--cap-drop ALL" in text and "--tmpfs /tmp" in text
    assert f"-v {tmp_path / 'repo'}:{tmp_path / 'repo'}:ro" in text
    # but the servers' shared packed weights: read-write, one directory for every container of the fleet
    packed = tmp_path / "run" / "packed-weights"
    assert f"-v {packed}:{packed}:rw" in text
    # settings travel by name (the value comes from the client's environment, never the command line)
    assert "-e INFERPACK_SERVER__AUTH__TOKENS" in text and "s3cret" not in text
    assert "-e OMP_NUM_THREADS" in text and "HOME" not in text
    assert cmd[-5:] == ["inferpack:latest", "inferpack", "serve", "--port", "8101"]
    assert f"--label {LABEL}={fleet_id(tmp_path / 'run')}" in text


def test_the_containers_are_pointed_at_the_shared_packed_weights(tmp_path: Path) -> None:
    r = runner(tmp_path, FakeEngine())
    env = r.container_env({"OMP_NUM_THREADS": "1"})
    assert env["INFERPACK_SERVER__PACKED_WEIGHTS_DIR"] == str(r.packed_weights)
    assert "-e INFERPACK_SERVER__PACKED_WEIGHTS_DIR" in " ".join(r.run_command("server-0", ["x"], env))
    configured = {"INFERPACK_SERVER__PACKED_WEIGHTS_DIR": "/elsewhere"}  # a host path: not mounted
    assert r.container_env(configured)["INFERPACK_SERVER__PACKED_WEIGHTS_DIR"] == str(r.packed_weights)
    r.open()  # made before any container starts, writable by the image's uid (sticky, like /tmp)
    assert r.packed_weights.is_dir() and r.packed_weights.stat().st_mode & 0o7777 == 0o1777


def test_open_publishes_every_port_on_loopback_from_one_network_container(tmp_path: Path) -> None:
    engine = FakeEngine()
    runner(tmp_path, engine).open()
    ps, holder = engine.calls[0], engine.calls[-1]
    assert ps[:3] == ["podman", "ps", "--all"]  # what an earlier crash left goes first
    assert holder[:3] == ["podman", "run", "--detach"]
    text = " ".join(holder)
    assert "-p 127.0.0.1:8100:8100" in text and "-p 127.0.0.1:8101:8101" in text
    assert "--read-only" in holder and holder[-3:] == ["inferpack:latest", "sleep", "infinity"]


def test_open_failure_is_a_fleet_error_with_the_engines_words(tmp_path: Path) -> None:
    engine = FakeEngine({"podman run": (125, "", "Error: address already in use")})
    with pytest.raises(FleetError, match="address already in use"):
        runner(tmp_path, engine).open()


def test_check_names_the_next_step(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        runner(tmp_path, FakeEngine({"podman image inspect": (125, "", "image not known")})).check()
    assert "inferpack image build --tag inferpack:latest" in str(err.value)
    with pytest.raises(ConfigError, match="podman not found") as err:
        runner(tmp_path, FakeEngine({"podman image inspect": (127, "", "")})).check()
    assert "--runtime host" in str(err.value)
    private = runner(tmp_path, FakeEngine())
    (tmp_path / "repo").chmod(0o700)  # e.g. made under umask 077: uid 10001 cannot list it
    with pytest.raises(ConfigError, match="not readable by the image's user") as err:
        private.check()
    assert f"chmod -R o+rX {tmp_path / 'repo'}" in str(err.value)


def test_cleanup_removes_what_the_label_finds(tmp_path: Path) -> None:
    r = runner(tmp_path, FakeEngine())
    engine = FakeEngine({"podman ps": (0, f"{r.holder}\n{r.container('server-0')}\n", "")})
    r.call = engine
    assert r.cleanup() == sorted([r.holder, r.container("server-0")])
    label = engine.calls[0][engine.calls[0].index("--filter") + 1]
    assert label == f"label={LABEL}={fleet_id(tmp_path / 'run')}"
    # the server first, then the holder of their network (killed: its `sleep` ignores SIGTERM)
    assert engine.calls[1:] == [
        ["podman", "rm", "--force", r.container("server-0")],
        ["podman", "kill", r.holder],
        ["podman", "rm", "--force", r.holder],
    ]


def test_stop_asks_the_engine_to_stop_the_running_ones(tmp_path: Path) -> None:
    engine = FakeEngine()
    r = runner(tmp_path, engine)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert r.stop([("server-0", done), ("server-1", running)], 20) == []
    assert engine.calls == [["podman", "stop", "-t", "20", r.container("server-1")]]
    assert running.returncode == 0


def test_a_hung_process_is_killed_where_it_runs(tmp_path: Path) -> None:
    """The supervisor's liveness kill: under containers the container itself gets SIGKILL (killing the
    `run` client alone would leave the hung server running); on the host, the process."""
    engine = FakeEngine()
    r = runner(tmp_path, engine)
    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    r.kill("server-0", stopped)
    assert engine.calls == [["podman", "kill", "--signal", "KILL", r.container("server-0")]]
    assert stopped.wait(timeout=10) == -9
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    HostRunner().kill("server-0", host)
    assert host.wait(timeout=10) == -9


def test_host_runner_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # the handler is in place
    assert HostRunner().stop([("server-0", stubborn)], 0.5) == ["server-0"]
    assert stubborn.returncode is not None


def test_make_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_runner("host", image="x", run_root=tmp_path, ports=[], mounts=[]), HostRunner)
    with pytest.raises(ConfigError, match="host, podman or docker"):
        make_runner("lxc", image="x", run_root=tmp_path, ports=[], mounts=[])
    monkeypatch.setattr("shutil.which", lambda tool: None)
    with pytest.raises(ConfigError, match="docker not found"):
        make_runner("docker", image="x", run_root=tmp_path, ports=[], mounts=[])
    monkeypatch.setenv("INFERPACK_CONFIG", str(tmp_path / "c.toml"))
    assert config_mounts("s3://bucket/p", tmp_path, None) == [tmp_path, tmp_path / "c.toml"]


def test_the_supervisor_builds_commands_for_where_its_runner_runs(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    spec = LaunchSpec(
        repository=str(tmp_path / "repo"),
        servers=[ServerLaunch(name="server-0", port=8101, models=["m"], threads=1)],
        router_port=8100,
        runtime="podman",
    )
    sup = Supervisor(run, spec, runner=runner(tmp_path, FakeEngine()))
    server, router = sup.servers[0].cmd, sup.router.cmd
    assert server[:2] == ["inferpack", "serve"] and router[:2] == ["inferpack", "router"]
    assert server[server.index("--host") + 1] == "0.0.0.0" == router[router.index("--host") + 1]
    host = Supervisor(run, spec.model_copy(update={"runtime": "host"}), runner=HostRunner())
    cmd = host.servers[0].cmd
    assert cmd[:3] == [sys.executable, "-m", "inferpack.cli"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
