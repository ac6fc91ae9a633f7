"""The server's device at start-up: a clear exit-2 error for an absent device, and what `auto` chose, in the
log and in the V2 server metadata."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from inferpack.processes import python_cli
from inferpack.server.app import create_app
from inferpack.settings import ServerSettings

no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU")


def _serve(device: str, repository: Path) -> tuple[int, str]:
    """Run `inferpack serve --device DEVICE`; its exit status and stderr with rich's line wrapping undone."""
    done = subprocess.run(
        [*python_cli(), "serve", "--device", device, "--repository", str(repository)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, " ".join(done.stderr.split())


@no_gpu_here
def test_serve_on_an_absent_gpu_exits_2_naming_the_device_and_what_to_install(tmp_path: Path) -> None:
    code, text = _serve("cuda", tmp_path)
    assert code == 2, text
    assert f"CUDA requested (--device cuda) but torch {torch.__version__} is a CPU-only build" in text
    assert "TORCH_SPEC=torch==2.13.0 bash scripts/setup.sh" in text and "nvidia-smi" in text
    assert "Traceback" not in text


def test_serve_neuron_without_the_sdk_exits_2(tmp_path: Path) -> None:
    code, text = _serve("neuron", tmp_path)
    assert code == 2 and "torch-neuronx is not importable" in text


@no_gpu_here
def test_auto_picks_the_cpu_here_and_says_so(demo_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inferpack.server"):
        app = create_app(ServerSettings(repository=str(demo_repo), device="auto"))
    assert "inferpack server computes on cpu" in caplog.text
    assert "auto found no CUDA GPU" in caplog.text
    device = TestClient(app).get("/v2").json()["device"]  # no lifespan: nothing loads
    assert (device["name"], device["kind"], device["requested"]) == ("cpu", "cpu", "auto")


def test_an_explicit_cpu_device_is_reported() -> None:
    settings = ServerSettings(repository="unused", device="cpu", dtype="fp32")
    app = create_app(settings, repository=_EmptyRepo())  # type: ignore[arg-type]
    assert TestClient(app).get("/v2").json()["device"]["name"] == "cpu"
    with pytest.raises(Exception, match="fp16 is for GPUs"):
        create_app(settings.model_copy(update={"dtype": "fp16"}), repository=_EmptyRepo())  # type: ignore[arg-type]


class _EmptyRepo:
    def model_ids(self) -> list[str]:
        return []
