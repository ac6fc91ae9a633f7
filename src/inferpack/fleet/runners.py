"""Where the fleet's processes run: on this host (the default) or in containers (`up --runtime podman`).

The supervisor starts, watches and stops its servers and router through one `ProcessRunner`; it never
knows which kind it has. Either way each process is a child `subprocess.Popen` whose output goes to its log
file, so exits, restarts, `status`, `logs` and `down` work the same:

- `HostRunner` runs `python -m inferpack.cli ...` with this interpreter (what `up` always did);
- `ContainerRunner` runs `podman|docker run --rm --name inferpack-<run>-<process> IMAGE inferpack ...` in
  the foreground (the `run` client is the child; the container's output is its output). The containers
  share the network namespace of one holder container that publishes every port on 127.0.0.1, so the
  router reaches the servers at the same 127.0.0.1 URLs as on the host, and the host reaches all of them.
  Each runs as the image's non-root user with a read-only root filesystem, no capabilities, tmpfs for
  /tmp and the cache, the repository, run directory and config file mounted read-only at their host paths
  (but the run directory's `packed-weights`, read-write: the servers' shared packed weights), and its
  environment's INFERPACK_* settings passed by name (`-e NAME`: values never on a command line).
  Containers are named and labelled after the run directory, so `down` finds them after a crash, and
  the next `up` adopts them (`leftovers`, `adopt`: `fleet.adoption`) when their supervisor died.

Both take over a dead supervisor's processes the same way (`fleet.adoption`): `leftovers` says which of its
records still run, `adopt` returns a handle on one that runs what the launch would start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import psutil

from inferpack import processes as P
from inferpack.errors import ConfigError, FleetError
from inferpack.fleet.adoption import AdoptedContainer, AdoptedProcess, container_mismatch
from inferpack.fleet.state import FleetState, ProcessState, leftover_processes, start_time

Runtime = Literal["host", "podman", "docker"]
CONTAINER_RUNTIMES = ("podman", "docker")
LABEL = "dev.inferpack.fleet"
# The image's writable places (its root filesystem is read-only): see the Containerfile.
TMPFS = ("/tmp", "/var/cache/inferpack")
# What a container process gets from the supervisor's environment, besides every INFERPACK_* variable.
PASSED_ENV = (
    "PYTHONUNBUFFERED", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)  # fmt: skip
# The process inside a container binds every address of the fleet's network namespace: the holder
# publishes the ports on the host's 127.0.0.1 only.
CONTAINER_BIND = "0.0.0.0"
PACKED_WEIGHTS_ENV = "INFERPACK_SERVER__PACKED_WEIGHTS_DIR"
log = logging.getLogger("inferpack.fleet.runners")


class ChildProcess(Protocol):
    """A fleet process as the supervisor holds it: a `subprocess.Popen` it started, or a process it
    adopted from a dead supervisor (`fleet.adoption.AdoptedProcess`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class AdoptedChild(ChildProcess, Protocol):
    """A process taken over from a dead supervisor, with the start time that identifies it."""

    @property
    def create_time(self) -> float | None: ...


class ProcessRunner(Protocol):
    """Starts and stops the fleet's processes somewhere (this host, containers)."""

    @property
    def cli(self) -> list[str]:
        """How the inferpack CLI is invoked where the processes run."""
        ...

    @property
    def bind_host(self) -> str:
        """The address servers and the router bind there (their URLs stay http://127.0.0.1:PORT)."""
        ...

    def check(self) -> None:
        """What this runner needs is there (ConfigError saying what to do otherwise)."""

    def open(self, keep: Collection[str] = ()) -> None:
        """Before the first start: set up what the processes share, keeping what the adopted processes
        `keep` (names) run in."""

    def leftovers(self, state: FleetState) -> list[ProcessState]:
        """The records of a dead supervisor's `state` whose processes still run here."""
        ...

    def adopt(self, name: str, record: ProcessState, cmd: list[str]) -> AdoptedChild | None:
        """A handle on leftover process `name` (`record`) if it still runs what `cmd` would start; None
        (it is then started again) otherwise."""
        ...

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        """Start process `name` (`cmd` begins with `cli`), its output appended to `log_path`."""
        ...

    def stop(self, children: Sequence[tuple[str, ChildProcess]], timeout_s: float) -> list[str]:
        """SIGTERM every running child (they drain), SIGKILL what is left after `timeout_s`, reap them;
        returns the names that had to be killed."""
        ...

    def kill(self, name: str, child: ChildProcess) -> None:
        """SIGKILL process `name` at once (a hung or stopped one ignores SIGTERM); the caller reaps it."""

    def close(self) -> None:
        """After the last stop: remove what `open` set up."""

    def cleanup(self) -> list[str]:
        """Remove what a crashed supervisor left behind that pids cannot find; returns what was removed."""
        ...

    def memory_mb(self, name: str, pid: int | None) -> float | None:
        """Resident memory of process `name` (`pid`: the child the supervisor recorded), None if gone."""
        ...


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class HostRunner:
    """Processes of this interpreter on this host."""

    @property
    def cli(self) -> list[str]:
        return P.python_cli()

    @property
    def bind_host(self) -> str:
        return "127.0.0.1"

    def check(self) -> None:
        return None

    def open(self, keep: Collection[str] = ()) -> None:
        return None

    def leftovers(self, state: FleetState) -> list[ProcessState]:
        return leftover_processes(state)  # same pid and start time

    def adopt(self, name: str, record: ProcessState, cmd: list[str]) -> AdoptedChild | None:
        # Its command line is not compared: the launch's name, port and models (`sort_leftovers`) are.
        if record.pid is None:
            return None
        proc = AdoptedProcess(record.pid, record.create_time)
        return proc if proc.poll() is None else None

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        return P.spawn(cmd, log_path, env)

    def stop(self, children: Sequence[tuple[str, ChildProcess]], timeout_s: float) -> list[str]:
        procs: dict[int, str] = {}
        handles = []
        for name, child in children:
            if child.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    handles.append(psutil.Process(child.pid))
                    procs[child.pid] = name
        killed = P.terminate(handles, timeout_s)
        for _, child in children:
            child.poll()  # reap
        return [procs[p.pid] for p in killed]

    def kill(self, name: str, child: ChildProcess) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()

    def close(self) -> None:
        return None

    def cleanup(self) -> list[str]:
        return []  # host processes are found by their recorded pid and start time (ops.cleanup_stale)

    def memory_mb(self, name: str, pid: int | None) -> float | None:
        return _rss_mb(pid)


def fleet_id(run_root: Path) -> str:
    """A short stable name for the fleet of a run directory (its resolved path's digest)."""
    return hashlib.sha256(str(run_root.resolve()).encode()).hexdigest()[:10]


def _quiet(cmd: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired:
        why = f"{' '.join(cmd[:2])} timed out after {timeout_s:g} s"
        return subprocess.CompletedProcess(cmd, 124, "", why)


def _waiter(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


@dataclass
class ContainerRunner:
    """The fleet's processes as containers of `image`, run by `tool` (podman or docker)."""

    tool: str
    image: str
    run_root: Path
    ports: list[int]
    mounts: list[Path]
    call: Callable[[list[str]], subprocess.CompletedProcess[str]] = field(default=_quiet)
    # starts the `TOOL wait ID` that watches an adopted container (a stand-in in tests)
    spawn_waiter: Callable[[list[str]], subprocess.Popen[bytes]] = field(default=_waiter)

    @property
    def cli(self) -> list[str]:
        return ["inferpack"]

    @property
    def bind_host(self) -> str:
        return CONTAINER_BIND

    @property
    def prefix(self) -> str:
        return f"inferpack-{fleet_id(self.run_root)}"

    @property
    def holder(self) -> str:
        """The container that owns the fleet's network namespace and published ports."""
        return f"{self.prefix}-net"

    def container(self, name: str) -> str:
        """The container name of fleet process `name`."""
        return f"{self.prefix}-{name}"

    def _label_values(self) -> dict[str, str]:
        return {LABEL: fleet_id(self.run_root), f"{LABEL}.run-dir": str(self.run_root)}

    def _labels(self) -> list[str]:
        return [arg for key, value in self._label_values().items() for arg in ("--label", f"{key}={value}")]

    def _must(self, cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
        proc = self.call(cmd)
        if proc.returncode != 0:
            raise FleetError(
                f"{what} failed: {(proc.stderr or proc.stdout).strip() or f'exit status {proc.returncode}'}",
                hint=f"the command was: {' '.join(cmd)}",
            )
        return proc

    def check(self) -> None:
        """The runtime answers and has the image, and the image's user can read what is mounted:
        ConfigError saying what to do otherwise."""
        for path in self.mounts:
            need = 0o005 if path.is_dir() else 0o004  # others (the image's uid) read, and enter folders
            mode = path.stat().st_mode & 0o777
            if mode & need != need:
                raise ConfigError(
                    f"{path} is not readable by the image's user (uid 10001): mode {oct(mode)}",
                    hint=f"chmod -R o+rX {path} (inferpack writes repositories readable under umask 022)",
                )
        proc = self.call([self.tool, "image", "inspect", "--format", "{{.Id}}", self.image])
        if proc.returncode == 127:
            raise ConfigError(
                f"{self.tool} not found",
                hint=f"install {self.tool} (scripts/podman-setup.sh prepares podman), or use --runtime host",
            )
        if proc.returncode != 0:
            raise ConfigError(
                f"image {self.image} not found by {self.tool}: {(proc.stderr or proc.stdout).strip()}",
                hint=f"build it with `inferpack image build --tag {self.image}`, or pass --image",
            )

    @property
    def packed_weights(self) -> Path:
        """The host directory the server containers share their packed weights in (compile/packedfiles.py),
        mounted read-write at the same path in each: one copy per host, as for host processes. Writable by
        the image's user (sticky, like /tmp), whatever uid the engine maps it to."""
        return self.run_root / "packed-weights"

    def container_env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with the server setting pointed at `packed_weights`: a directory configured for host
        processes is not mounted, so inside a container it is no place to share."""
        return {**env, PACKED_WEIGHTS_ENV: str(self.packed_weights)}

    def open(self, keep: Collection[str] = ()) -> None:
        self.packed_weights.mkdir(parents=True, exist_ok=True)
        self.packed_weights.chmod(0o1777)
        kept = {self.container(name) for name in keep}
        if kept:  # adopted containers live in the holder's network namespace: it stays too
            kept.add(self.holder)
        self.cleanup(keep=kept)  # a previous fleet of this run directory that was never taken down
        if self.holder in kept:
            return
        published = [arg for port in self.ports for arg in ("-p", f"127.0.0.1:{port}:{port}")]
        self._must(
            [
                self.tool, "run", "--detach", "--rm", "--name", self.holder, *self._labels(),
                "--read-only", "--cap-drop", "ALL", *published, self.image, "sleep", "infinity",
            ],
            f"starting the fleet's network container {self.holder}",
        )  # fmt: skip

    def run_command(self, name: str, cmd: list[str], env: dict[str, str]) -> list[str]:
        """The `TOOL run` command line of process `name` (variables passed by name, values from `env`)."""
        mounts = [arg for path in self.mounts for arg in ("-v", f"{path}:{path}:ro")]
        mounts += ["-v", f"{self.packed_weights}:{self.packed_weights}:rw"]  # over the run directory's
        tmpfs = [arg for path in TMPFS for arg in ("--tmpfs", path)]
        names = sorted(k for k in env if k.startswith("INFERPACK_") or k in PASSED_ENV)
        return [
            self.tool, "run", "--rm", "--name", self.container(name), *self._labels(),
            "--network", f"container:{self.holder}", "--read-only", *tmpfs, "--cap-drop", "ALL",
            *mounts, *(arg for key in names for arg in ("-e", key)), self.image, *cmd,
        ]  # fmt: skip

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        self.call([self.tool, "rm", "--force", self.container(name)])  # one left by a crash: same name
        env = self.container_env(env)
        return P.spawn(self.run_command(name, cmd, env), log_path, env)

    def stop(self, children: Sequence[tuple[str, ChildProcess]], timeout_s: float) -> list[str]:
        running = [(name, child) for name, child in children if child.poll() is None]
        if running:
            # `stop` sends SIGTERM, waits, then SIGKILL: as the host runner does, inside the containers.
            seconds = str(math.ceil(timeout_s))
            self.call([self.tool, "stop", "-t", seconds, *(self.container(n) for n, _ in running)])
        killed = []
        for name, child in running:
            try:
                code = child.wait(timeout=15.0)
            except subprocess.TimeoutExpired:  # the client hangs although its container is gone
                child.kill()
                code = child.wait()
            if code in (137, -9):  # SIGKILL: the container or its client did not stop in time
                killed.append(name)
        return killed

    def kill(self, name: str, child: ChildProcess) -> None:
        # the container itself: killing only the `run` client would leave the hung server running
        self.call([self.tool, "kill", "--signal", "KILL", self.container(name)])
        with contextlib.suppress(ProcessLookupError):
            child.kill()

    def close(self) -> None:
        self.call([self.tool, "kill", self.holder])  # `sleep` as pid 1 ignores SIGTERM: nothing to drain
        self.call([self.tool, "rm", "--force", self.holder])

    def _listed(self, *flags: str) -> list[str]:
        """Names of the fleet's containers (`ps` with `flags`: `--all` for stopped ones too)."""
        label = f"label={LABEL}={fleet_id(self.run_root)}"
        listed = self.call([self.tool, "ps", *flags, "--filter", label, "--format", "{{.Names}}"])
        return sorted(line.strip() for line in listed.stdout.splitlines() if line.strip())

    def _inspect(self, name: str) -> dict[str, Any] | None:
        proc = self.call([self.tool, "inspect", "--type", "container", name])
        try:
            found = json.loads(proc.stdout) if proc.returncode == 0 else []
        except json.JSONDecodeError:
            return None
        return found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else None

    def leftovers(self, state: FleetState) -> list[ProcessState]:
        running = set(self._listed())
        if self.holder not in running:  # the others' network namespace and published ports are gone
            return []
        return [p for p in state.processes() if self.container(p.name) in running]

    def adopt(self, name: str, record: ProcessState, cmd: list[str]) -> AdoptedChild | None:
        holder, found = self._inspect(self.holder), self._inspect(self.container(name))
        image = self.call([self.tool, "image", "inspect", "--format", "{{.Id}}", self.image])
        if holder is None or found is None or image.returncode != 0:
            return None
        networks = {f"container:{holder.get('Id')}", f"container:{self.holder}"}
        why = container_mismatch(
            found,
            cmd=cmd,
            image_id=image.stdout.strip(),
            labels=self._label_values(),
            networks=networks,
        )
        if why is None and not (holder.get("State") or {}).get("Running"):
            why = f"its network holder {self.holder} is not running"
        if why is not None:
            log.warning("%s: container %s is not adopted: %s", name, self.container(name), why)
            return None
        cid, pid = str(found["Id"]), int((found.get("State") or {}).get("Pid") or 0)
        waiter = self.spawn_waiter([self.tool, "wait", cid])
        return AdoptedContainer(pid, start_time(pid) if pid > 0 else None, waiter, partial(self._signal, cid))

    def _signal(self, container: str, sig: int) -> None:
        self.call([self.tool, "kill", "--signal", str(sig), container])

    def cleanup(self, keep: Collection[str] = ()) -> list[str]:
        names = [name for name in self._listed("--all") if name not in keep]
        # One at a time (a container that goes away meanwhile fails only its own removal), the network
        # holder last: the others live in its namespace.
        for name in sorted(names, key=lambda n: n == self.holder):
            if name == self.holder:
                self.close()
            else:
                self.call([self.tool, "rm", "--force", name])
        return names

    def memory_mb(self, name: str, pid: int | None) -> float | None:
        proc = self.call([self.tool, "inspect", "--format", "{{.State.Pid}}", self.container(name)])
        if proc.returncode != 0:
            return None
        try:
            main = int(proc.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None
        return _rss_mb(main) if main > 0 else None


def make_runner(
    runtime: str,
    *,
    image: str,
    run_root: Path,
    ports: Sequence[int],
    mounts: Sequence[Path],
) -> ProcessRunner:
    """The runner of a runtime: `host`, `podman` or `docker` (ConfigError for anything else)."""
    if runtime == "host":
        return HostRunner()
    if runtime not in CONTAINER_RUNTIMES:
        raise ConfigError(f"runtime must be host, podman or docker, not {runtime!r}")
    if shutil.which(runtime) is None:
        raise ConfigError(
            f"{runtime} not found",
            hint=f"install {runtime} (scripts/podman-setup.sh prepares podman), or use --runtime host",
        )
    # The same absolute paths inside: the command lines and files (plan, endpoints) name host paths.
    kept = sorted({p.resolve() for p in mounts if p.exists()})
    return ContainerRunner(runtime, image, run_root.resolve(), list(ports), kept)


def config_mounts(repository: str, run_root: Path, config: Path | None) -> list[Path]:
    """Host paths a containerised process reads: a local repository, the run directory, the config file
    (the `--config` flag's, or INFERPACK_CONFIG's)."""
    paths = [run_root]
    if "://" not in repository:
        paths.append(Path(repository))
    for cfg in (config, os.environ.get("INFERPACK_CONFIG")):
        if cfg:
            paths.append(Path(cfg))
    return paths
