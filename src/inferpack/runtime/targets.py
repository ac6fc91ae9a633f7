"""Which hardware a server can compute on, and which `--device` each plan group's servers get.

The planner refuses catalog entries the server cannot use (`unservable_reason`), so no plan buys hardware
whose pods would leave the accelerator idle; `inferpack up` and the Kubernetes renderer turn each group's
target into its servers' `--device`. Pure and torch-free: the planner and the renderer import it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from inferpack.errors import ConfigError, DeviceUnavailable
from inferpack.runtime.devices import (
    CUDA_INSTALL_HINT,
    NEURON_INSTALL_HINT,
    DeviceFacts,
    DeviceKind,
    device_kind,
)

# Accelerators each target's server runs (catalog `accelerator` names, shell patterns). inf1's first
# Inferentia needs torch-neuron, a different (legacy) SDK from torch-neuronx: the server cannot run it.
SERVABLE_ACCELERATORS: dict[DeviceKind, tuple[str, ...]] = {
    "cpu": ("*",),
    "cuda": ("nvidia-*",),
    "neuron": ("aws-inferentia2", "aws-trainium", "aws-trainium2"),
}


def unservable_reason(target: str, accelerator: str | None) -> str | None:
    """Why a server cannot run on hardware of this target and accelerator, or None when it can."""
    if target == "cpu":
        return None
    patterns = SERVABLE_ACCELERATORS.get(target, ())  # type: ignore[call-overload]
    if accelerator is not None and any(fnmatch.fnmatchcase(accelerator, p) for p in patterns):
        return None
    if accelerator == "aws-inferentia":
        return (
            "inf1's Inferentia (NeuronCore-v1) needs torch-neuron, the legacy Neuron SDK; inferpack serves "
            "Neuron through torch-neuronx, which runs inf2 and trn1 only"
        )
    return f"inferpack serves {target} on {' or '.join(patterns)} accelerators, not {accelerator or 'none'}"


# GPUs with bf16 tensor cores (compute capability 8.0+, as `devices.check_dtype` requires); a T4 has none.
BF16_GPUS = ("nvidia-a10g", "nvidia-a100*", "nvidia-l4", "nvidia-l40*", "nvidia-h100*", "nvidia-h200*")
SERVER_DTYPES = ("fp32", "bf16", "fp16")  # what `server.dtype` may name, less auto


def dtype_unservable_reason(target: str, accelerator: str | None, dtype: str) -> str | None:
    """Why a server of this target and accelerator would refuse to compute in `dtype` (the rules of
    `devices.check_dtype`), or None when it accepts it. Whether a CPU computes bf16 natively is the
    profile's processor record's to say (the planner checks it)."""
    if dtype not in SERVER_DTYPES:
        return f"the server computes in {', '.join(SERVER_DTYPES)}, not {dtype}"
    if dtype == "fp16" and target != "cuda":
        return f"fp16 is for GPUs; a {target} server refuses it"
    native = accelerator is not None and any(fnmatch.fnmatchcase(accelerator, p) for p in BF16_GPUS)
    if dtype == "bf16" and target == "cuda" and not native:
        return f"bf16 needs a GPU of compute capability 8.0 or later, not {accelerator or 'none'}"
    return None


def target_device(target: str) -> str:
    """The `--device` a server of a plan group with this target runs with."""
    if target not in SERVABLE_ACCELERATORS:
        raise ConfigError(f"unknown target {target!r}", hint="one of cpu, cuda, neuron")
    return target


def host_device_kinds(facts: DeviceFacts) -> set[DeviceKind]:
    """The device kinds this host can serve on."""
    kinds: set[DeviceKind] = {"cpu"}
    if facts.cuda_devices:
        kinds.add("cuda")
    if facts.neuron_sdk is not None and facts.neuron_cores > 0:
        kinds.add("neuron")
    return kinds


def group_devices(
    targets: Mapping[str, str], available: set[DeviceKind], *, allow_cpu_fallback: bool
) -> tuple[dict[str, str], list[str]]:
    """Group name -> `--device` for the servers of each plan group on this host, and a warning per group
    that falls back to the CPU. DeviceUnavailable when a group's device is absent and fallback is off."""
    devices: dict[str, str] = {}
    warnings: list[str] = []
    for group, target in targets.items():
        device = target_device(target)
        if device_kind(device) in available:
            devices[group] = device
            continue
        if not allow_cpu_fallback:
            raise DeviceUnavailable(
                f"plan group {group!r} targets {target}, which this host lacks",
                hint=(CUDA_INSTALL_HINT if target == "cuda" else NEURON_INSTALL_HINT)
                + "; or pass --allow-cpu-fallback to run its servers on the CPU (slower than planned)",
            )
        devices[group] = "cpu"
        warnings.append(
            f"plan group {group!r} targets {target}, which this host lacks: its servers run on the CPU "
            "(--allow-cpu-fallback), far slower than the plan assumed"
        )
    return devices, warnings
