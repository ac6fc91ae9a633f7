"""Facts about the processor that decide defaults (bf16 where native) and tag measurements.

torch is imported only inside the functions that need it, so torch-free callers (the fleet commands and
the router, which must start in well under a second) can use `usable_cores` and `cpu_model`."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from inferpack.settings import DTypeChoice

if TYPE_CHECKING:
    import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (x86 'flags', arm64 'Features'); empty when unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name, or the machine architecture when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 / AMX on x86, BF16 on arm64)."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def resolve_dtype(choice: DTypeChoice, device: str = "cpu", *, cuda_bf16: bool | None = None) -> torch.dtype:
    """The dtype a choice means on a device. `auto`: on CUDA bf16 where the GPU has bf16 tensor cores
    (Ampere and later) else fp16 (a T4); on Neuron bf16 (NeuronCores compute it natively); on CPUs bf16
    where native (AVX512-BF16/AMX, arm64 BF16) else fp32. `cuda_bf16` overrides the GPU probe (tests)."""
    import torch

    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp16":
        return torch.float16
    if device.startswith("cuda"):
        if cuda_bf16 is None:
            cuda_bf16 = cuda_native_bf16(device)
        return torch.bfloat16 if cuda_bf16 else torch.float16
    if device.startswith("neuron"):
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cuda_native_bf16(device: str) -> bool:
    """True when the CUDA device (the index in `device`, else the current one) has bf16 tensor cores."""
    import torch

    if not torch.cuda.is_available():
        return False
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def usable_cores() -> int:
    """Cores this process may run on (affinity-aware, so containers and taskset are respected)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def hardware_tag() -> str:
    """A short tag naming the machine a measurement came from."""
    import torch

    accel = f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "none"
    return f"{cpu_model()}|{platform.machine()}|{usable_cores()}c|{accel}|torch {torch.__version__}"
