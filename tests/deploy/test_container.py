"""The cpu image, built with `inferpack image build` and run with podman as Kubernetes runs it: the image's
non-root user, a read-only root filesystem, no capabilities, tmpfs for /tmp and the cache, and the model
repository mounted read-only from files another user wrote. It must answer a seed-API request.

Marked `container` (CI requires it; elsewhere it skips without podman: see tests/containers.py)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import httpx
import pytest
from tests.containers import BuiltImage, podman, record

from inferpack.processes import free_port

# The session's image build runs in the first test's set-up: minutes on 2 busy cores.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(3000)]

IMAGE_UID = 10001
OTHER_UID = 4242  # the repository's owner: neither root nor the image's user
CACHE_DIR = "/var/cache/inferpack"
QUESTION = {
    "seq_0": "How many trees did Alice plant?",
    "seq_1": "Alice planted seven apple trees by the mill.",
}


def repository_of_another_user(root: Path) -> Path:
    """Two demo QA models (sharing a base file) written under umask 022, owned by OTHER_UID when we are
    root (else by us, who are not the image's user either)."""
    from inferpack.repository.demo import make_demo_models

    old = os.umask(0o022)
    try:
        make_demo_models(root, 2, task="question-answering", prefix="qa")
    finally:
        os.umask(old)
    if os.geteuid() == 0:
        for path in [root, *root.rglob("*")]:
            os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)
    return root


def wait_ready(url: str, name: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name)
        if state.returncode != 0 or state.stdout.strip() not in ("created", "configured", "running"):
            logs = podman("logs", name).stdout + podman("logs", name).stderr
            pytest.fail(
                f"container {name} stopped before it was ready ({state.stdout.strip()}):\n{logs[-3000:]}"
            )
        time.sleep(0.5)
    pytest.fail(f"container {name} not ready within {timeout_s:g} s:\n{podman('logs', name).stderr[-3000:]}")


def test_the_image_serves_a_read_only_repository_of_another_user(
    inferpack_image: BuiltImage, tmp_path: Path
) -> None:
    repo = repository_of_another_user(tmp_path / "repo")
    weights = next(repo.rglob("*.safetensors"))
    mode = stat.S_IMODE(weights.stat().st_mode)
    assert mode & stat.S_IROTH, f"{weights} is {oct(mode)}: not readable by other users"
    assert weights.stat().st_uid != IMAGE_UID

    name = f"inferpack-container-test-{os.getpid()}"
    port = free_port()
    run = [
        "run", "--detach", "--rm", "--name", name,
        "--read-only", "--tmpfs", "/tmp", "--tmpfs", CACHE_DIR, "--cap-drop", "ALL",
        "-v", f"{repo}:/models:ro", "-p", f"127.0.0.1:{port}:8080",
        inferpack_image.tag,  # the image's default command: `inferpack serve`, set by INFERPACK_SERVER__*
    ]  # fmt: skip
    started = time.monotonic()
    proc = podman(*run)
    assert proc.returncode == 0, proc.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, name)
        answer = httpx.post(f"{url}/predictions/qa-0000", json=QUESTION, timeout=60.0, trust_env=False)
        first_answer_s = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and detail and detail in QUESTION["seq_1"]
        # the other model (same shared base file) answers too: nothing of the repository is unreadable
        other = httpx.get(f"{url}/predictions/qa-0001", timeout=60.0, trust_env=False)
        assert other.status_code == 200, other.text

        # as the image's user, unprivileged, on a read-only root filesystem
        uid = podman("exec", name, "id", "-u")
        assert uid.stdout.strip() == str(IMAGE_UID), uid.stdout + uid.stderr
        caps = podman("exec", name, "grep", "^CapEff", "/proc/self/status")
        assert caps.stdout.split()[-1].strip("0") == "", caps.stdout
        denied = podman("exec", name, "touch", "/opt/inferpack/x")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        memory = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
        record(
            "run",
            {
                "command": "podman " + " ".join(run),
                "time_to_first_answer_s": round(first_answer_s, 1),
                "status": answer.status_code,
                "request": {"model": "qa-0000", **QUESTION},
                "answer": answer.json(),
                "user": uid.stdout.strip(),
                "repository_owner_uid": weights.stat().st_uid,
                "weights_mode": oct(mode),
                "memory": memory,
            },
        )
    finally:
        podman("rm", "--force", name)
