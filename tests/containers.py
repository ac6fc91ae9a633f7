"""Fixtures of the tests marked `container`: podman ready to use, and the cpu image built once per session
with `inferpack image build` (a pytest plugin, loaded by tests/conftest.py).

`bash scripts/podman-setup.sh` prepares a machine (podman, containers.conf, the debootstrap base image).
Where the container tests are required (CI, or INFERPACK_CONTAINER_TESTS=1) anything missing fails them;
elsewhere they skip, saying how to enable them. The figures of a run (build time, image size, the
container's first answer) go to build/container-test.json, and are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "build" / "container-test.json"
BASE_IMAGE = os.environ.get("INFERPACK_BASE_IMAGE", "localhost/debian-python:bookworm")
TEST_IMAGE = "localhost/inferpack:container-test"
SETUP_CONF = Path(os.environ.get("INFERPACK_CONTAINERS_CONF", "/etc/inferpack/containers.conf"))
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 1800


def required() -> bool:
    """CI (or INFERPACK_CONTAINER_TESTS=1) must run the container tests: a missing part fails them."""
    return bool(os.environ.get("CI")) or os.environ.get("INFERPACK_CONTAINER_TESTS") == "1"


def unavailable(reason: str) -> None:
    """Fail (where required) or skip, with the way to fix it."""
    message = f"{reason}; run `bash scripts/podman-setup.sh` (root) to prepare podman and its base image"
    if required():
        pytest.fail(message + " (container tests are required here: CI / INFERPACK_CONTAINER_TESTS=1)")
    pytest.skip(message)


def podman(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run one podman command, output captured."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False, timeout=timeout_s)


def record(section: str, values: dict[str, Any]) -> None:
    """Add one section to build/container-test.json and print it."""
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(SUMMARY.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data[section] = values
    SUMMARY.write_text(json.dumps(data, indent=1) + "\n")
    print(f"\ncontainer test {section}: {json.dumps(values)}  (all figures: {SUMMARY})")


@dataclass(frozen=True)
class BuiltImage:
    """The image the session built, with its figures."""

    tag: str
    build_s: float
    size_bytes: int


@pytest.fixture(scope="session")
def podman_ready() -> Iterator[None]:
    """podman present and configured (CONTAINERS_CONF from scripts/podman-setup.sh), base image there."""
    if shutil.which("podman") is None:
        unavailable("podman is not installed")
    with pytest.MonkeyPatch.context() as mp:
        if "CONTAINERS_CONF" not in os.environ and SETUP_CONF.is_file():
            mp.setenv("CONTAINERS_CONF", str(SETUP_CONF))
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}")
        if info.returncode != 0:
            unavailable(f"`podman info` fails: {info.stderr.strip()[-500:]}")
        if podman("image", "exists", BASE_IMAGE).returncode != 0:
            unavailable(f"the base image {BASE_IMAGE} is missing")
        yield


def pip_find_links() -> list[Path]:
    """The host's pip wheel folders (`find-links`), where the torch CPU wheel may be the only copy."""
    value = os.environ.get("PIP_FIND_LINKS")
    if not value:
        got = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
            check=False,
        )
        value = got.stdout.strip() if got.returncode == 0 else ""
    return [Path(v) for v in value.split() if Path(v).is_dir()]


def host_build_options(workdir: Path) -> list[str]:
    """`image build` flags that let pip in the build do what pip does on this host: trust the host's CA
    bundle (a TLS-intercepting proxy) and find the torch wheel in the host's wheel folder."""
    lines, flags = ["[global]"], []
    if HOST_CA.is_file():
        flags += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro"]
        lines.append("cert = /run/host-ca.crt")
    folders = pip_find_links()
    if folders:
        inside = [f"/run/wheels/{i}" for i in range(len(folders))]
        for folder, target in zip(folders, inside, strict=True):
            flags += ["-v", f"{folder}:{target}:ro"]
        lines.append("find-links = " + " ".join(inside))
        if any(f.glob("torch-*+cpu-*.whl") for f in folders):
            # the wheel is here; the PyTorch index may be unreachable: ask PyPI, pip takes the local wheel
            flags += ["--build-arg", "TORCH_CPU_INDEX=https://pypi.org/simple"]
    conf = workdir / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o644)
    return [*flags, "-v", f"{conf}:/etc/pip.conf:ro"]


@pytest.fixture(scope="session")
def inferpack_image(podman_ready: None, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The cpu image, built once per session by `inferpack image build` (its output in a log file).
    INFERPACK_TEST_IMAGE=TAG reuses an image built before instead (to iterate on the tests; CI builds)."""
    if reused := os.environ.get("INFERPACK_TEST_IMAGE"):
        if required() and os.environ.get("CI"):
            pytest.fail("INFERPACK_TEST_IMAGE is for local runs: CI builds the image")
        inspect = podman("image", "inspect", "--format", "{{.Size}}", reused)
        if inspect.returncode != 0:
            pytest.fail(f"INFERPACK_TEST_IMAGE={reused}: {inspect.stderr.strip()}")
        record("build", {"reused_image": reused, "image_size_bytes": int(inspect.stdout.strip())})
        return BuiltImage(reused, 0.0, int(inspect.stdout.strip()))
    work = tmp_path_factory.mktemp("image-build")
    cmd = [
        sys.executable, "-m", "inferpack.cli", "image", "build",
        "--builder", "podman", "--tag", TEST_IMAGE, "--base-image", BASE_IMAGE, "--context-dir", str(ROOT),
        *host_build_options(work),
    ]  # fmt: skip
    log_path = work / "build.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False, timeout=BUILD_TIMEOUT_S)
    build_s = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"`inferpack image build` failed ({proc.returncode}); log {log_path}:\n{tail}")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", TEST_IMAGE).stdout.strip())
    # a re-run on the same machine reuses the layers: say whether pip ran (the minutes of a build)
    pip_ran = "Installing collected packages" in log_path.read_text(errors="replace")
    record(
        "build",
        {
            "command": " ".join(cmd[1:]),
            "build_s": round(build_s, 1),
            "pip_install_ran": pip_ran,
            "image_size_bytes": size,
            "image_size_gb": round(size / 1e9, 2),
        },
    )
    return BuiltImage(TEST_IMAGE, build_s, size)
