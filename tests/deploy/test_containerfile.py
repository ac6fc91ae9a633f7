"""The Containerfile agrees with the manifests and the build command.

No image is built here, so these checks run everywhere; tests/deploy/test_container.py (marker
`container`, podman) builds and runs the image."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from inferpack.deploy.image import VARIANTS, build_commands
from inferpack.deploy.servers import RUN_AS
from inferpack.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"


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
    assert steps[-1] == ("CMD", '["inferpack", "serve"]')  # the default serves; Kubernetes passes its own
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


def image_env() -> dict[str, str]:
    """The image's ENV variables (KEY=VALUE pairs, as written in this Containerfile)."""
    pairs = shlex.split(" ".join(rest for word, rest in instructions() if word == "ENV"))
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_default_command_serves_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in image_env().items() if k.startswith("INFERPACK_")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = load_settings(None, {"server": {}}).server  # what `inferpack serve` without flags runs with
    assert (server.host, server.port, server.repository) == ("0.0.0.0", 8080, "/models")
    monkeypatch.setenv("INFERPACK_SERVER__REPOSITORY", "s3://bucket/models")  # how a user points it
    assert load_settings(None, {"server": {}}).server.repository == "s3://bucket/models"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out (the last matching pattern wins, `!` re-includes;
    a pattern matching a folder covers what is inside it)."""
    verdict = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").replace("**/", "*")
        if any(fnmatch.fnmatch(p, glob) for p in prefixes):
            verdict = not negated
    return verdict


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".containerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert (ROOT / ".dockerignore").resolve() == (ROOT / ".containerignore").resolve()  # docker reads that
    copied = [
        src
        for word, rest in instructions()
        if word == "COPY" and "--from" not in rest
        for src in rest.split()[:-1]
    ]
    for src in copied:
        assert not ignored(src, patterns), src
    assert not ignored("src/inferpack/cli.py", patterns)
    for heavy in (
        ".venv/lib/python3.11/site-packages/torch/lib/x.so",
        "demo-repo/m/1/model.safetensors",
        ".git",
    ):
        assert ignored(heavy, patterns), heavy
    assert ignored("src/inferpack/__pycache__/cli.cpython-311.pyc", patterns)


def test_the_cache_folder_belongs_to_the_image_user() -> None:
    """The S3 cache (INFERPACK_S3_CACHE_DIR) is created, owned by the user the image runs as, after that
    user exists and before USER drops root; without it a run without a volume there cannot cache."""
    steps = instructions()
    cache = image_env()["INFERPACK_S3_CACHE_DIR"]
    runs = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "RUN"]
    owning = [
        i for i, rest in runs if re.search(rf"install -d -o {RUN_AS} -g {RUN_AS} .*{re.escape(cache)}", rest)
    ]
    assert owning, f"no RUN creates {cache} owned by {RUN_AS}"
    user_step = steps.index(("USER", f"{RUN_AS}:{RUN_AS}"))
    created = next(i for i, rest in runs if f"--uid {RUN_AS}" in rest)
    assert created <= owning[0] < user_step
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    assert owning[0] > last_from  # in the final stage, not the build stage


def test_the_server_image_is_lean() -> None:
    """The image installs the package with the `onnx` extra only (`pip install "/src[onnx]"`): charting
    (matplotlib) and manifest validation (kubernetes-validate) are extras that `.[dev]` (scripts/setup.sh)
    still installs, and
    nothing a server, router, renderer or load-test worker imports pulls them in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[=<>\[ ]", r)[0] for r in project["dependencies"]}
    assert not names & {"matplotlib", "kubernetes-validate"}
    dev = {re.split(r"[=<>\[ ]", r)[0] for r in project["optional-dependencies"]["dev"]}
    assert {"matplotlib", "kubernetes-validate"} <= dev
    assert project["optional-dependencies"]["report"] == ["matplotlib==3.11.2"]
    code = (
        "import sys, inferpack.cli, inferpack.server.app, inferpack.deploy.cli, inferpack.loadtest.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'kubernetes_validate')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    # the only extra in the image is the serving runtime's (`onnx`), never `report` or `dev`
    installed = re.findall(r"/src\[([a-z,]+)\]", CONTAINERFILE.read_text())
    assert installed and set(",".join(installed).split(",")) == {"onnx"}


def test_without_matplotlib_a_run_notes_no_report_and_bench_report_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from io import StringIO

    from rich.console import Console

    from inferpack.errors import ConfigError
    from inferpack.loadtest import cli

    monkeypatch.setitem(sys.modules, "inferpack.loadtest.report", None)  # import now raises ImportError
    with pytest.raises(ConfigError) as err:
        cli._report_writer()
    assert "inferpack[report]" in str(err.value)
    out = StringIO()
    cli._report(None, tmp_path, Console(file=out, width=200))  # type: ignore[arg-type]
    assert "no report" in out.getvalue() and not list(tmp_path.iterdir())


def variant_arms() -> dict[str, str]:
    """Variant -> the shell of its arm of the build's `case` (up to its `;;`)."""
    script = next(rest for word, rest in instructions() if word == "RUN" and "case" in rest)
    arms = {}
    for variant in VARIANTS:
        found = re.search(rf"\b{variant}\)(.*?);;", script, re.S)
        assert found is not None, variant
        arms[variant] = found.group(1)
    return arms


def test_every_variant_installs_the_onnx_extra() -> None:
    """A plan costed on ONNX Runtime (or server.engine onnxruntime | auto) runs in the image: every variant
    installs the `onnx` extra, and the build fails when onnxruntime does not import."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    assert any(req.startswith("onnxruntime==") for req in extra)
    arms = variant_arms()
    for variant in ("cpu", "cuda"):
        assert re.search(r'pip install [^;]*"/src\[onnx\]"', arms[variant]), variant
    # the neuron arm writes a requirements file with a Python snippet: run it on this pyproject
    snippet = re.search(r'python3 -c "(.*?)" > /tmp/requirements.txt', arms["neuron"])
    assert snippet is not None
    code = snippet.group(1).replace("/src/pyproject.toml", str(ROOT / "pyproject.toml"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    requirements = proc.stdout.split()
    assert set(extra) <= set(requirements) and not any(r.startswith("torch") for r in requirements)
    script = next(rest for word, rest in instructions() if word == "RUN" and "case" in rest)
    assert script.rstrip().endswith('/opt/inferpack/bin/python -c "import onnxruntime"')
