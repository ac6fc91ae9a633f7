"""`inferpack exec SERVER [-- CMD]`: a shell (or one command) in a fleet process's environment, in the run
directory; the local twin of `kubectl exec` (`inferpack k8s exec`).

The environment is the live process's own (read from the OS, so it holds exactly what the supervisor gave
it: offline flags, thread counts, INFERPACK_* overrides, the virtual environment's PATH). A process that is
not running (crashed, restarting, fleet down) gets the environment the supervisor would give it now, so a
crash-looping server can be investigated too. Either way a few INFERPACK_EXEC_* variables say where it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from inferpack import processes as P
from inferpack.errors import ConfigError
from inferpack.fleet.state import FleetState, ProcessState, RunDir, is_alive


@dataclass(frozen=True)
class ExecSpec:
    """What to run, with which environment, where."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    live: bool  # the environment is the running process's own


def find_process(state: FleetState, name: str) -> ProcessState:
    """A server of the fleet, or its router, by name (ConfigError naming the choices otherwise)."""
    if name == state.router.name:
        return state.router
    names = [s.name for s in state.servers]
    if name not in names:
        raise ConfigError(f"no fleet process named {name!r}", hint=f"one of {', '.join([*names, 'router'])}")
    return state.server(name)


def process_env(process: ProcessState) -> tuple[dict[str, str], bool]:
    """(environment, live): the running process's own, else the one the supervisor starts it with."""
    if is_alive(process.pid, process.create_time) and process.pid is not None:
        try:
            return dict(psutil.Process(process.pid).environ()), True
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return P.child_env(process.threads), False


def exec_spec(run: RunDir, state: FleetState, name: str, command: list[str] | None = None) -> ExecSpec:
    """The command (default: the user's shell) to run in process `name`'s environment, in the run dir."""
    process = find_process(state, name)
    env, live = process_env(process)
    env.update(
        {
            "INFERPACK_EXEC_PROCESS": process.name,
            "INFERPACK_EXEC_RUN_DIR": str(run.root),
            "INFERPACK_EXEC_LOG": str(run.log_path(process.name)),
            "INFERPACK_EXEC_PID": str(process.pid) if live and process.pid is not None else "",
            "INFERPACK_EXEC_URL": process.url or "",
            "INFERPACK_EXEC_MODELS": ",".join(process.models),
            "INFERPACK_ROUTER_URL": state.router.url or "",
        }
    )
    argv = list(command) if command else [os.environ.get("SHELL") or env.get("SHELL") or "/bin/sh"]
    return ExecSpec(argv=argv, env=env, cwd=run.root, live=live)


def replace_process(spec: ExecSpec) -> None:
    """Become the command (as `kubectl exec` does: its exit status is ours); ConfigError when it does
    not exist."""
    os.chdir(spec.cwd)
    try:
        os.execvpe(spec.argv[0], spec.argv, spec.env)
    except OSError as exc:
        raise ConfigError(f"cannot run {spec.argv[0]}: {exc.strerror or exc}") from exc
