"""Container images: find a builder that works (podman, docker, buildah), the build command line for a
variant, run it with its output streamed, and push an image to ECR.

Every process goes through a `Runner`, so tests check the command lines without a container engine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from inferpack.errors import ConfigError

# podman first: it needs no daemon, and a docker client without a daemon is common (`docker info` fails).
BUILDERS = ("podman", "docker", "buildah")
VARIANTS = ("cpu", "cuda", "neuron")
# Builders whose build verb accepts `-v SRC:DST[:ro]` (docker build has no build-time mounts).
MOUNTING_BUILDERS = ("podman", "buildah")
INSTALL_HINT = "install podman (apt-get install podman) or docker with a running daemon, or pass --builder"
ECR_REGISTRY = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


class Runner(Protocol):
    """Runs one command: output streamed to this terminal unless `capture`; `input` goes to its stdin."""

    def __call__(
        self, cmd: list[str], *, input: str | None = None, capture: bool = False
    ) -> subprocess.CompletedProcess[str]: ...


def subprocess_runner(
    cmd: list[str], *, input: str | None = None, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """The real runner: without `capture` the builder writes straight to this terminal as it goes."""
    try:
        return subprocess.run(cmd, input=input, text=True, capture_output=capture, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")


def _quiet_probe(cmd: list[str]) -> int:
    try:
        return subprocess.run(cmd, capture_output=True, check=False, timeout=30).returncode
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 1


def find_builder(
    *,
    which: Callable[[str], str | None] = shutil.which,
    probe: Callable[[list[str]], int] = _quiet_probe,
) -> str:
    """The first of podman, docker, buildah that is on PATH and works (`TOOL info` exits 0: for docker
    that means the daemon answers)."""
    present = [tool for tool in BUILDERS if which(tool)]
    for tool in present:
        if probe([tool, "info"]) == 0:
            return tool
    if not present:
        raise ConfigError(
            "no container builder found (looked for podman, docker, buildah)", hint=INSTALL_HINT
        )
    broken = ", ".join(f"`{tool} info` fails" for tool in present)
    raise ConfigError(
        f"no working container builder: {broken}",
        hint="start the docker daemon (or use podman, which needs none), or pass --builder",
    )


def _check_pairs(values: Sequence[str], *, flag: str, sep: str, form: str) -> None:
    for value in values:
        left, found, right = value.partition(sep)
        if not (left and found and right):
            raise ConfigError(f"{flag} takes {form}, not {value!r}")


def build_commands(
    tool: str,
    *,
    tag: str,
    variant: str,
    platform: str | None,
    base_image: str | None,
    context: Path,
    build_args: Sequence[str] = (),
    volumes: Sequence[str] = (),
) -> list[str]:
    """The build command line for `tool`. `build_args` (KEY=VALUE) become `--build-arg`s; `volumes`
    (SRC:DST[:ro], e.g. a proxy CA, a pip config, a wheel folder) become `-v`, which podman and buildah
    accept and docker build does not."""
    if variant not in VARIANTS:
        raise ConfigError(f"--variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if tool not in BUILDERS:
        raise ConfigError(f"--builder must be one of {', '.join(BUILDERS)}, not {tool!r}")
    _check_pairs(build_args, flag="--build-arg", sep="=", form="KEY=VALUE")
    _check_pairs(volumes, flag="--volume", sep=":", form="SRC:DST[:ro]")
    if volumes and tool not in MOUNTING_BUILDERS:
        raise ConfigError(
            f"{tool} build cannot mount volumes (--volume)",
            hint="use --builder podman or buildah, or put the files in a build argument or the base image",
        )
    verb = ["bud"] if tool == "buildah" else ["build"]
    cmd = [tool, *verb, "-f", str(context / "Containerfile"), "-t", tag, "--build-arg", f"VARIANT={variant}"]
    if platform:
        cmd += ["--platform", platform]
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    for arg in build_args:
        cmd += ["--build-arg", arg]
    for volume in volumes:
        cmd += ["-v", volume]
    return [*cmd, str(context)]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_streamed(
    cmd: list[str], *, runner: Runner = subprocess_runner, echo: Callable[[str], None] = _say
) -> None:
    """Run one command with its output passed straight through (a build's full log, pip's errors
    included); a failure raises a ConfigError that points at that output."""
    echo("$ " + " ".join(cmd))
    proc = runner(cmd)
    if proc.returncode == 127:
        raise ConfigError(f"{cmd[0]} not found", hint=INSTALL_HINT if cmd[0] in BUILDERS else None)
    if proc.returncode != 0:
        raise ConfigError(
            f"`{' '.join(cmd[:2])}` failed with exit status {proc.returncode}: see its output above"
        )


# --- push to ECR -----------------------------------------------------------------------------------


def ecr_target(image: str, registry: str, *, region: str | None = None) -> tuple[str, str, str]:
    """(region, repository, remote image) for pushing local `image` to the ECR `registry`: the repository
    is the image's name without any registry prefix (`localhost/inferpack:1` -> `inferpack`)."""
    match = ECR_REGISTRY.match(registry)
    if not match:
        raise ConfigError(
            f"--registry must be an ECR registry ACCOUNT.dkr.ecr.REGION.amazonaws.com, not {registry!r}"
        )
    name, tag = image, "latest"
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # a registry host, not part of the repository name
    repository = "/".join(parts)
    if not repository:
        raise ConfigError(f"cannot take a repository name from image {image!r}")
    return region or match["region"], repository, f"{registry}/{repository}:{tag}"


def push_commands(image: str, registry: str, *, tool: str, region: str | None = None) -> list[list[str]]:
    """The commands `image push` runs, in order: create the repository (an existing one is fine), get a
    login password, log in with it on stdin, tag, push."""
    region, repository, remote = ecr_target(image, registry, region=region)
    return [
        ["aws", "ecr", "create-repository", "--repository-name", repository, "--region", region],
        ["aws", "ecr", "get-login-password", "--region", region],
        [tool, "login", "--username", "AWS", "--password-stdin", registry],
        [tool, "tag", image, remote],
        [tool, "push", remote],
    ]


def push_script(commands: list[list[str]]) -> str:
    """The push as shell lines (for --dry-run): the repository step tolerates an existing repository and
    the password goes through a pipe, never onto a command line."""
    create, password, login, *rest = commands
    return "\n".join(
        [
            " ".join(create) + " >/dev/null 2>&1 || true  # exists already: fine",
            " ".join(password) + " | " + " ".join(login),
            *(" ".join(cmd) for cmd in rest),
        ]
    )


def push_image(
    image: str,
    registry: str,
    *,
    tool: str,
    region: str | None = None,
    runner: Runner = subprocess_runner,
    echo: Callable[[str], None] = _say,
) -> str:
    """Push local `image` to ECR; returns the remote name."""
    commands = push_commands(image, registry, tool=tool, region=region)
    create, password, login, tag, push = commands
    echo("$ " + " ".join(create))
    proc = runner(create, capture=True)
    if proc.returncode == 127:
        raise ConfigError("aws not found", hint="install the AWS CLI v2 and configure credentials")
    if proc.returncode != 0 and "RepositoryAlreadyExistsException" not in (proc.stderr or "") + (
        proc.stdout or ""
    ):
        raise ConfigError(f"creating ECR repository failed: {(proc.stderr or proc.stdout or '').strip()}")
    echo("$ " + " ".join(password) + " | " + " ".join(login))
    pw = runner(password, capture=True)
    if pw.returncode != 0 or not pw.stdout:
        raise ConfigError(
            f"aws ecr get-login-password failed: {(pw.stderr or '').strip()}",
            hint="check AWS credentials (aws sts get-caller-identity)",
        )
    done = runner(login, input=pw.stdout.strip() + "\n", capture=True)
    if done.returncode != 0:
        raise ConfigError(f"{tool} login to {registry} failed: {(done.stderr or done.stdout or '').strip()}")
    run_streamed(tag, runner=runner, echo=echo)
    run_streamed(push, runner=runner, echo=echo)
    return push[-1]
