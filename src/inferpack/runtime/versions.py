"""Version policy: which version of a model a server serves, and which it must refuse."""

from __future__ import annotations

import torch

from inferpack.errors import ModelLoadFailed
from inferpack.repository.local import ModelRepository
from inferpack.repository.manifest import Manifest


def _device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "neuron" if device.startswith("neuron") else "cpu"


def _check_target(model_id: str, version: int, manifest: Manifest, device: str) -> None:
    """Refuse a version compiled for another processor (a CUDA trace on a CPU server, a Neuron trace with
    fixed shapes that dynamic padding would break)."""
    if manifest.format == "torchscript" and manifest.target != _device_kind(device):
        raise ModelLoadFailed(
            f"model {model_id!r} v{version} was compiled for {manifest.target}, this server runs on "
            f"{_device_kind(device)}",
            hint="serve a version compiled for this processor (or the safetensors version)",
        )


def choose_version(repository: ModelRepository, model_id: str, device: str, dtype: torch.dtype) -> int:
    """The version a server serves by default: the newest one that suits it.

    Safetensors versions always suit (they are converted at load). A TorchScript version suits when it was
    compiled for this processor, in the dtype this server computes in, without quantisation (int8 changes
    answers: ask for its version explicitly), and its agreement check passed. Falls back to the newest.
    """
    versions = repository.versions(model_id)
    wanted = "bf16" if dtype == torch.bfloat16 else "fp32"
    for candidate in reversed(versions):
        m = repository.manifest(model_id, candidate)
        if m.format == "safetensors":
            return candidate
        passed = m.agreement is None or m.agreement.passed
        if m.target == _device_kind(device) and m.dtype == wanted and m.quantization == "none" and passed:
            return candidate
    return versions[-1]
