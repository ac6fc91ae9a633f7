"""Version policy: which version of a model a server serves, and which it must refuse."""

from __future__ import annotations

import torch

from inferpack.errors import ModelLoadFailed
from inferpack.repository.local import ModelRepository
from inferpack.repository.manifest import DType, Manifest
from inferpack.runtime.devices import device_kind

TORCH_DTYPES: dict[DType, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def manifest_dtype(dtype: torch.dtype) -> DType:
    """A torch dtype as manifests spell it (anything but bf16 and fp16 computes in fp32)."""
    if dtype == torch.bfloat16:
        return "bf16"
    return "fp16" if dtype == torch.float16 else "fp32"


def _device_kind(device: str) -> str:
    return device_kind(device)


def _check_target(model_id: str, version: int, manifest: Manifest, device: str) -> None:
    """Refuse a version compiled for another processor (a CUDA trace on a CPU server, a Neuron trace with
    fixed shapes on a CPU), and on Neuron anything but a Neuron graph (NeuronCores run compiled graphs
    only; the host's few vCPUs are not where an inf2 server should compute)."""
    kind = _device_kind(device)
    if manifest.format == "onnx" and kind != "cpu":
        raise ModelLoadFailed(
            f"model {model_id!r} v{version} is an ONNX graph, which this server runs on CPUs only, "
            f"not on {kind}",
            hint="serve its safetensors version (or one compiled for this processor)",
        )
    if manifest.format == "torchscript" and manifest.target != kind:
        raise ModelLoadFailed(
            f"model {model_id!r} v{version} was compiled for {manifest.target}, this server runs on {kind}",
            hint="serve a version compiled for this processor (or the safetensors version)",
        )
    if kind == "neuron" and manifest.format != "torchscript":
        raise ModelLoadFailed(
            f"model {model_id!r} v{version} is {manifest.format}; a Neuron server serves versions compiled "
            "for Neuron only",
            hint=f"run `inferpack compile {model_id} --target neuron` on an inf2/trn1 instance",
        )


def choose_version(
    repository: ModelRepository, model_id: str, device: str, dtype: torch.dtype, engine: str = "eager"
) -> int:
    """The version a server serves by default: the newest one that suits it.

    Safetensors versions suit CPU and CUDA servers: fp32 ones in any dtype (converted at load, a private
    copy when the dtype differs), ones stored in another dtype by `inferpack compile --format
    safetensors` only in that dtype (their weights map straight from the file) and when their agreement
    check passed. A compiled version (TorchScript, or ONNX on a server whose engine is onnxruntime) suits
    when it was compiled for this processor, in the dtype this server computes in, without quantisation
    (int8 changes answers: ask for its version explicitly), and its agreement check passed. An eager
    server never picks an ONNX version.
    A Neuron server serves Neuron graphs only, and one in another dtype rather than none (a graph runs in
    the dtype it was compiled in). Falls back to the newest.
    """
    versions = repository.versions(model_id)
    kind = _device_kind(device)
    wanted = manifest_dtype(dtype)
    other_dtype: int | None = None
    for candidate in reversed(versions):
        m = repository.manifest(model_id, candidate)
        passed = m.agreement is None or m.agreement.passed
        if m.format == "safetensors":
            if kind != "neuron" and (m.dtype == "fp32" or (m.dtype == wanted and passed)):
                return candidate
            continue
        if m.format == "onnx" and engine != "onnxruntime":
            continue
        if m.target == kind and m.quantization == "none" and passed:
            if m.dtype == wanted:
                return candidate
            if kind == "neuron" and other_dtype is None:
                other_dtype = candidate
    return other_dtype if other_dtype is not None else versions[-1]


def onnx_alternate(repository: ModelRepository, model_id: str, source: int) -> int | None:
    """The newest ONNX version compiled from the safetensors version `source` that a server on engine
    `mixed` may run beside it (runtime/runtimechoice.py): for the CPU, fp32, not quantised, agreement
    passed (it then answers as `source` computed in fp32 does). None when there is none."""
    for candidate in reversed(repository.versions(model_id)):
        m = repository.manifest(model_id, candidate)
        if (
            m.format == "onnx"
            and m.compiled_from == source
            and m.target == "cpu"
            and m.dtype == "fp32"
            and m.quantization == "none"
            and (m.agreement is None or m.agreement.passed)
        ):
            return candidate
    return None
