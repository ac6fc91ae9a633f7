"""`python -m inferpack` runs the command line, as the `inferpack` console script does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import inferpack

SRC = str(Path(inferpack.__file__).resolve().parent.parent)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "inferpack", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_python_dash_m_inferpack_prints_the_version() -> None:
    done = _run("version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == inferpack.__version__


def test_python_dash_m_inferpack_maps_errors_to_status_2(tmp_path: Path) -> None:
    done = _run("models", "import", str(tmp_path / "absent"), "--repository", str(tmp_path / "repo"))
    assert done.returncode == 2
    assert "error:" in done.stderr
