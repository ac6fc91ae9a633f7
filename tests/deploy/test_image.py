"""`inferpack image build` / `image push`: the builder chosen, the command lines, streamed output and the
ECR push, all through injected runners (no container engine, no AWS)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.image import (
    build_commands,
    ecr_target,
    find_builder,
    push_commands,
    push_image,
    push_script,
    run_streamed,
)
from inferpack.errors import ConfigError

REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


class Recorder:
    """A Runner that records (cmd, input, capture) and answers from a table of exit statuses/outputs."""

    def __init__(self, answers: dict[str, tuple[int, str, str]] | None = None) -> None:
        self.calls: list[tuple[list[str], str | None, bool]] = []
        self.answers = answers or {}

    def __call__(
        self, cmd: list[str], *, input: str | None = None, capture: bool = False
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append((cmd, input, capture))
        code, out, err = self.answers.get(" ".join(cmd[:3]), (0, "", ""))
        return subprocess.CompletedProcess(cmd, code, out, err)


def test_find_builder_skips_a_docker_without_daemon() -> None:
    on_path = {"docker", "podman"}
    probes: list[list[str]] = []

    def probe(cmd: list[str]) -> int:
        probes.append(cmd)
        return 0 if cmd[0] == "podman" else 1

    def which(tool: str) -> str | None:
        return f"/usr/bin/{tool}" if tool in on_path else None

    assert find_builder(which=which, probe=probe) == "podman"
    assert ["podman", "info"] in probes
    # docker alone with a working daemon is taken; docker alone without one is refused, naming the check
    on_path = {"docker"}
    assert find_builder(which=which, probe=lambda cmd: 0) == "docker"
    with pytest.raises(ConfigError, match="docker info` fails") as err:
        find_builder(which=which, probe=lambda cmd: 1)
    assert "daemon" in str(err.value)


def test_a_missing_builder_names_podman_and_docker_not_kubectl() -> None:
    with pytest.raises(ConfigError) as err:
        find_builder(which=lambda tool: None, probe=lambda cmd: 0)
    text = str(err.value)
    assert "podman" in text and "docker" in text and "kubectl" not in text


def build(tool: str, *, build_args: list[str] | None = None, volumes: list[str] | None = None) -> list[str]:
    return build_commands(
        tool,
        tag="t",
        variant="cpu",
        platform=None,
        base_image=None,
        context=Path("."),
        build_args=build_args or (),
        volumes=volumes or (),
    )


def test_build_args_and_volumes_pass_through() -> None:
    cmd = build(
        "podman",
        build_args=["TORCH_CPU_INDEX=http://mirror/whl", "PIP_CONFIG_FILE=/run/pip.conf"],
        volumes=["/etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro", "/srv/wheels:/wheels"],
    )
    assert cmd == [
        "podman", "build", "-f", "Containerfile", "-t", "t", "--build-arg", "VARIANT=cpu",
        "--build-arg", "TORCH_CPU_INDEX=http://mirror/whl", "--build-arg", "PIP_CONFIG_FILE=/run/pip.conf",
        "-v", "/etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro", "-v", "/srv/wheels:/wheels", ".",
    ]  # fmt: skip
    assert "-v" in build("buildah", volumes=["/a:/b"])


def test_docker_refuses_volumes_and_bad_pairs_are_refused() -> None:
    with pytest.raises(ConfigError, match="docker build cannot mount") as err:
        build("docker", volumes=["/a:/b"])
    assert "podman" in str(err.value)
    assert "--build-arg" in build("docker", build_args=["A=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build("podman", build_args=["NOEQUALS"])
    with pytest.raises(ConfigError, match="SRC:DST"):
        build("podman", volumes=["/only-a-source"])


def test_the_build_streams_and_a_failure_points_at_the_output() -> None:
    runner = Recorder()
    lines: list[str] = []
    run_streamed(["podman", "build", "."], runner=runner, echo=lines.append)
    assert runner.calls == [(["podman", "build", "."], None, False)]  # not captured: the log goes through
    assert lines == ["$ podman build ."]
    failing = Recorder({"podman build .": (1, "", "")})
    with pytest.raises(ConfigError, match="exit status 1: see its output above"):
        run_streamed(["podman", "build", "."], runner=failing, echo=lines.append)
    with pytest.raises(ConfigError, match="podman not found") as err:
        run_streamed(["podman", "build", "."], runner=Recorder({"podman build .": (127, "", "")}), echo=print)
    assert "kubectl" not in str(err.value)


def test_ecr_target_names() -> None:
    assert ecr_target("inferpack:0.1.0-cpu", REGISTRY) == (
        "eu-west-1", "inferpack", f"{REGISTRY}/inferpack:0.1.0-cpu"
    )  # fmt: skip
    assert ecr_target("localhost/inferpack", REGISTRY)[2] == f"{REGISTRY}/inferpack:latest"
    assert ecr_target("localhost:5000/team/inferpack:1", REGISTRY, region="us-east-1")[:2] == (
        "us-east-1", "team/inferpack"
    )  # fmt: skip
    with pytest.raises(ConfigError, match="must be an ECR registry"):
        ecr_target("inferpack:1", "docker.io")


def test_push_creates_logs_in_tags_and_pushes() -> None:
    runner = Recorder(
        {
            "aws ecr create-repository": (254, "", "RepositoryAlreadyExistsException: exists"),
            "aws ecr get-login-password": (0, "SECRET\n", ""),
        }
    )
    remote = push_image("inferpack:1", REGISTRY, tool="podman", runner=runner, echo=lambda line: None)
    assert remote == f"{REGISTRY}/inferpack:1"
    cmds = [c for c, _, _ in runner.calls]
    assert cmds == push_commands("inferpack:1", REGISTRY, tool="podman")
    assert cmds[0] == [
        "aws",
        "ecr",
        "create-repository",
        "--repository-name",
        "inferpack",
        "--region",
        "eu-west-1",
    ]
    login = runner.calls[2]
    assert login[0] == ["podman", "login", "--username", "AWS", "--password-stdin", REGISTRY]
    assert login[1] == "SECRET\n"  # on stdin, never on a command line
    assert all("SECRET" not in " ".join(c) for c in cmds)
    assert cmds[3:] == [["podman", "tag", "inferpack:1", remote], ["podman", "push", remote]]
    assert [capture for _, _, capture in runner.calls[3:]] == [False, False]  # the push streams


def test_push_stops_on_real_failures() -> None:
    denied = Recorder({"aws ecr create-repository": (255, "", "AccessDeniedException")})
    with pytest.raises(ConfigError, match="AccessDenied"):
        push_image("inferpack:1", REGISTRY, tool="podman", runner=denied, echo=lambda line: None)
    assert len(denied.calls) == 1
    no_login = Recorder({"podman login --username": (1, "", "unauthorized")})
    with pytest.raises(ConfigError, match="login"):
        push_image("inferpack:1", REGISTRY, tool="podman", runner=no_login, echo=lambda line: None)
    assert not any(c[0][1] == "push" for c in no_login.calls)


def test_cli_dry_runs() -> None:
    runner = CliRunner()
    build = runner.invoke(
        app, ["image", "build", "--dry-run", "--build-arg", "A=1", "-v", "/a:/b:ro", "--tag", "x:1"]
    )
    assert build.exit_code == 0, build.output
    assert (
        "podman build" in build.output and "--build-arg A=1" in build.output and "-v /a:/b:ro" in build.output
    )
    push = runner.invoke(app, ["image", "push", "inferpack:1", "--registry", REGISTRY, "--dry-run"])
    assert push.exit_code == 0, push.output
    assert push.output.strip() == push_script(push_commands("inferpack:1", REGISTRY, tool="podman"))
    assert "get-login-password --region eu-west-1 | podman login" in push.output
    assert "|| true" in push.output
