"""The Containerfile agrees with the manifests and the build command.

No image is built here: a build needs a container engine and a base image, which a test cannot count on
(see "Checking the image build" in docs/kubernetes.md for the check by hand)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from inferpack.deploy.image import VARIANTS, build_commands
from inferpack.deploy.servers import RUN_AS

CONTAINERFILE = Path(__file__).resolve().parents[2] / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_runs_as_the_manifests_user_and_sets_the_cache() -> None:
    steps = instructions()
    assert ("USER", f"{RUN_AS}:{RUN_AS}") in steps
    assert steps[-1] == ("CMD", '["inferpack", "--help"]')
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "INFERPACK_S3_CACHE_DIR=/var/cache/inferpack" in env and "HF_HUB_OFFLINE=1" in env
    run = " ".join(rest for word, rest in steps if word == "RUN")
    assert f"--uid {RUN_AS}" in run


def test_build_args_match_the_build_command() -> None:
    args = {rest.split("=")[0] for word, rest in instructions() if word == "ARG"}
    cmd = build_commands("podman", tag="t", variant="cpu", platform=None, base_image="b", context=Path("."))
    used = {a.split("=")[0] for a in cmd[cmd.index("--build-arg") :] if "=" in a}
    assert used <= args
    script = next(rest for word, rest in instructions() if word == "RUN" and "case" in rest)
    for variant in VARIANTS:
        assert f"{variant})" in script
    # Only the package sources go in: never a local .venv or model folders.
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from" not in rest]
    assert copies == ["pyproject.toml README.md /src/", "src /src/src"]


def test_run_scripts_are_valid_shell() -> None:
    for word, rest in instructions():
        if word == "RUN":
            proc = subprocess.run(["sh", "-n", "-c", rest], capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr
