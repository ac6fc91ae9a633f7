"""Which processor a server computes on: resolving `server.device`, and which hardware a server can use.

`--device` takes `auto`, `cpu`, `cuda`, `cuda:N` or `neuron`. Resolution is split in two so that the rules
are tested on any machine: `probe_devices()` reads the facts (torch, its CUDA build, the visible GPUs,
torch-neuronx and the NeuronCores) and `resolve_device(choice, facts)` decides from them, pure. An absent
device is a start-up error (`DeviceUnavailable`, exit status 2) that names the device and what to install;
`auto` picks CUDA, then the CPU, and says why. Which hardware a plan may use, and which device each plan
group's servers get, is in `inferpack.runtime.targets`.

torch is imported only inside the functions that probe, so torch-free callers (`inferpack up`'s plan
mapping, the targets module) can import this module cheaply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from inferpack.errors import ConfigError, DeviceUnavailable

DeviceKind = Literal["cpu", "cuda", "neuron"]
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?|neuron)$"
CUDA_INSTALL_HINT = (
    "install the CUDA build of PyTorch (TORCH_SPEC=torch==2.13.0 bash scripts/setup.sh, see README) and run "
    "on a machine with an NVIDIA GPU and its driver (check with nvidia-smi)"
)
NEURON_INSTALL_HINT = (
    "run on an inf2/trn1 instance with the AWS Neuron SDK installed in inferpack's environment "
    "(pip install torch-neuronx neuronx-cc --extra-index-url https://pip.repos.neuron.amazonaws.com; "
    "a Neuron deep-learning AMI has them), and serve versions made by `inferpack compile --target neuron`"
)
# Device memory kept free on each GPU for activations, the CUDA context growth and allocator slack when the
# budget is derived from the device (server.memory_budget_mb unset): 10 %, at least 1 GiB.
GPU_HEADROOM_FRACTION = 0.10
GPU_HEADROOM_MIN_BYTES = 2**30
THREADS_PER_GPU = 2


def device_kind(device: str) -> DeviceKind:
    """cpu, cuda or neuron for a device string (`cuda:1` is cuda)."""
    if device.startswith("cuda"):
        return "cuda"
    return "neuron" if device.startswith("neuron") else "cpu"


@dataclass(frozen=True)
class CudaDevice:
    """One visible NVIDIA GPU."""

    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int

    @property
    def native_bf16(self) -> bool:
        """bf16 tensor cores: Ampere (compute capability 8.0) and later; a T4 (7.5) computes fp16."""
        return self.capability >= (8, 0)

    def describe(self) -> str:
        """e.g. "cuda:0 NVIDIA A10G (8.6, 22.1 GiB, bf16)"."""
        major, minor = self.capability
        half = "bf16" if self.native_bf16 else "fp16"
        return f"cuda:{self.index} {self.name} ({major}.{minor}, {self.total_bytes / 2**30:.1f} GiB, {half})"


@dataclass(frozen=True)
class DeviceFacts:
    """What this machine offers, as read by `probe_devices` (or written by hand in tests)."""

    torch_version: str
    cuda_build: str | None = None  # torch.version.cuda: None for a CPU-only build
    cuda_devices: tuple[CudaDevice, ...] = ()
    cuda_error: str = ""  # why CUDA is unusable although the build has it (no driver, no GPU)
    neuron_sdk: str | None = None  # the torch-neuronx version when it imports
    neuron_error: str = ""
    neuron_cores: int = 0
    cpu: str = "cpu"


@dataclass(frozen=True)
class ResolvedDevice:
    """The device a server runs on, what was asked for, and why this one."""

    requested: str
    name: str  # cpu, cuda, cuda:N or neuron
    kind: DeviceKind
    detail: str
    reason: str = ""
    cuda: tuple[CudaDevice, ...] = ()  # the GPUs this server uses (all visible ones for "cuda")
    neuron_cores: int = 0
    _next: list[int] = field(default_factory=lambda: [0], repr=False, compare=False)

    def describe(self) -> str:
        """One line for the start-up log."""
        line = f"{self.name} ({self.detail})"
        return f"{line}: {self.reason}" if self.reason else line

    def metadata(self) -> dict[str, Any]:
        """What the V2 server metadata reports."""
        return {"name": self.name, "kind": self.kind, "requested": self.requested, "detail": self.detail}

    def memory_budget_bytes(self) -> int | None:
        """The model memory budget measured on the device: free GPU memory at start-up less headroom, over
        the GPUs this server uses; None on the CPU and Neuron (no measured device budget there)."""
        if self.kind != "cuda" or not self.cuda:
            return None
        return sum(
            max(0, d.free_bytes - max(GPU_HEADROOM_MIN_BYTES, int(d.total_bytes * GPU_HEADROOM_FRACTION)))
            for d in self.cuda
        )

    def place(self, free_bytes: Callable[[int], int] | None = None) -> str:
        """The device string one model loads onto. With several GPUs (`cuda`) models are spread, each on
        one GPU: the one with the most free memory (`free_bytes(index)`), else the GPUs in turn."""
        if self.kind != "cuda":
            return self.name
        if not self.cuda:
            return self.name
        if len(self.cuda) == 1:
            return f"cuda:{self.cuda[0].index}"
        if free_bytes is None:
            turn = self._next[0]
            self._next[0] += 1
            return f"cuda:{self.cuda[turn % len(self.cuda)].index}"
        return f"cuda:{max(self.cuda, key=lambda d: (free_bytes(d.index), -d.index)).index}"


CPU_DEVICE = ResolvedDevice(requested="cpu", name="cpu", kind="cpu", detail="the CPU")


def _build(facts: DeviceFacts) -> str:
    if facts.cuda_build is None:
        return f"torch {facts.torch_version} is a CPU-only build, without CUDA"
    return f"torch {facts.torch_version} (CUDA {facts.cuda_build})"


def _no_cuda_reason(facts: DeviceFacts) -> str:
    if facts.cuda_build is None:
        return _build(facts)
    why = f": {facts.cuda_error}" if facts.cuda_error else ""
    return f"no NVIDIA GPU is visible to {_build(facts)}{why}"


def resolve_device(choice: str, facts: DeviceFacts) -> ResolvedDevice:
    """The device for a `server.device` choice on a machine with these facts; DeviceUnavailable when the
    asked-for device is absent (the message names it and what to install)."""
    if not re.match(DEVICE_PATTERN, choice):
        raise ConfigError(f"unknown device {choice!r}", hint="one of auto, cpu, cuda, cuda:N, neuron")
    if choice == "cpu":
        return ResolvedDevice(requested=choice, name="cpu", kind="cpu", detail=facts.cpu)
    if choice == "auto":
        if facts.cuda_devices:
            return _cuda(choice, "cuda", facts, reason="auto found a CUDA GPU")
        return ResolvedDevice(
            requested=choice,
            name="cpu",
            kind="cpu",
            detail=facts.cpu,
            reason=f"auto found no CUDA GPU ({_no_cuda_reason(facts)}), so the CPU",
        )
    if choice.startswith("cuda"):
        if not facts.cuda_devices:
            raise DeviceUnavailable(
                f"CUDA requested (--device {choice}) but {_no_cuda_reason(facts)}", hint=CUDA_INSTALL_HINT
            )
        return _cuda(choice, choice, facts)
    if facts.neuron_sdk is None:
        why = f" ({facts.neuron_error})" if facts.neuron_error else ""
        raise DeviceUnavailable(
            f"Neuron requested (--device neuron) but torch-neuronx is not importable here{why}",
            hint=NEURON_INSTALL_HINT,
        )
    if facts.neuron_cores < 1:
        raise DeviceUnavailable(
            f"Neuron requested (--device neuron): torch-neuronx {facts.neuron_sdk} is installed but no "
            "NeuronCore is visible (no /dev/neuron* device, or NEURON_RT_VISIBLE_CORES names none)",
            hint="run on an inf2/trn1 instance; on Kubernetes the pod must request aws.amazon.com/neuron",
        )
    return ResolvedDevice(
        requested=choice,
        name="neuron",
        kind="neuron",
        detail=f"{facts.neuron_cores} NeuronCore(s), torch-neuronx {facts.neuron_sdk}",
        neuron_cores=facts.neuron_cores,
    )


def _cuda(requested: str, name: str, facts: DeviceFacts, reason: str = "") -> ResolvedDevice:
    devices = facts.cuda_devices
    if name != "cuda":
        index = int(name.split(":", 1)[1])
        chosen = [d for d in devices if d.index == index]
        if not chosen:
            seen = ", ".join(d.describe() for d in devices)
            raise DeviceUnavailable(
                f"CUDA device {name} requested but only {len(devices)} GPU(s) are visible: {seen}",
                hint="pick one of them, or check CUDA_VISIBLE_DEVICES",
            )
        devices = tuple(chosen)
    detail = "; ".join(d.describe() for d in devices) + f"; {_build(facts)}"
    return ResolvedDevice(
        requested=requested, name=name, kind="cuda", detail=detail, reason=reason, cuda=devices
    )


def default_inference_threads(device: ResolvedDevice, cores: int) -> int:
    """Inference threads when `server.inference_threads` is 0.

    CPU: one per core (each with one intra-op thread: the cores are the executors). CUDA: two per GPU,
    capped by the cores: the GPU is the executor and runs one stream's kernels in order, so more threads
    only queue on it; a second thread tokenises, copies and decodes the next batch while the first one's
    kernels run, which is where a GPU server loses time to its bare loop. Neuron: one per NeuronCore (a
    call blocks its thread while its core computes; models are spread over the cores).
    """
    if device.kind == "cuda":
        return max(1, min(cores, THREADS_PER_GPU * max(1, len(device.cuda))))
    if device.kind == "neuron":
        return max(1, device.neuron_cores)
    return max(1, cores)


def check_dtype(choice: str, device: ResolvedDevice) -> None:
    """Refuse dtypes the device does not compute natively when asked for explicitly (ConfigError)."""
    if choice == "fp16" and device.kind != "cuda":
        raise ConfigError(
            f"dtype fp16 is for GPUs; this server runs on {device.name}",
            hint="use dtype auto, bf16 (CPUs with AVX512-BF16/AMX) or fp32",
        )
    if choice == "bf16" and device.kind == "cuda":
        slow = [d for d in device.cuda if not d.native_bf16]
        if slow:
            raise ConfigError(
                f"dtype bf16 is not native on {slow[0].describe()}: it needs compute capability 8.0 "
                "(Ampere) or later",
                hint="use dtype auto or fp16 on this GPU",
            )


def cuda_free_bytes(index: int) -> int:
    """Free memory on one GPU now (torch.cuda.mem_get_info: the driver's figure, other processes
    included)."""
    import torch

    return int(torch.cuda.mem_get_info(index)[0])


def neuron_core_count(env: dict[str, str], device_files: Iterable[str]) -> int:
    """NeuronCores this process may use: NEURON_RT_NUM_CORES, else NEURON_RT_VISIBLE_CORES ("0-3", "0,2"),
    else two per /dev/neuronN device (NeuronCore-v2: inf2 and trn1 chips have two cores each)."""
    if env.get("NEURON_RT_NUM_CORES", "").strip().isdigit():
        return int(env["NEURON_RT_NUM_CORES"])
    visible = env.get("NEURON_RT_VISIBLE_CORES", "").strip()
    if visible:
        count = 0
        for part in visible.split(","):
            low, _, high = part.strip().partition("-")
            if low.isdigit() and (not high or high.isdigit()):
                count += int(high) - int(low) + 1 if high else 1
        return count
    return 2 * sum(1 for f in device_files if re.fullmatch(r"neuron[0-9]+", f))


def probe_devices(*, neuron: bool = False) -> DeviceFacts:
    """Read this machine's devices (imports torch; torch-neuronx only when `neuron`)."""
    import torch

    from inferpack.runtime.hardware import cpu_model, usable_cores

    cuda: list[CudaDevice] = []
    error = ""
    if torch.version.cuda is not None:
        try:
            if torch.cuda.is_available():
                for index in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(index)
                    free, total = torch.cuda.mem_get_info(index)
                    cuda.append(
                        CudaDevice(index, props.name, (props.major, props.minor), int(total), int(free))
                    )
            else:
                error = "torch.cuda.is_available() is False (no GPU or driver, or CUDA_VISIBLE_DEVICES empty)"
        except Exception as exc:  # a broken driver raises here; report it instead of crashing
            error = f"{type(exc).__name__}: {exc}"
    sdk, neuron_error, cores = None, "", 0
    if neuron:
        try:
            import torch_neuronx  # type: ignore[import-not-found]

            sdk = str(getattr(torch_neuronx, "__version__", "unknown version"))
            dev = Path("/dev")
            cores = neuron_core_count(dict(os.environ), [p.name for p in dev.glob("neuron*")])
        except ImportError as exc:
            neuron_error = str(exc)
    return DeviceFacts(
        torch_version=str(torch.__version__),
        cuda_build=torch.version.cuda,
        cuda_devices=tuple(cuda),
        cuda_error=error,
        neuron_sdk=sdk,
        neuron_error=neuron_error,
        neuron_cores=cores,
        cpu=f"{cpu_model()}, {usable_cores()} core(s)",
    )


def open_device(choice: str) -> ResolvedDevice:
    """Probe this machine and resolve `choice` (DeviceUnavailable when absent)."""
    return resolve_device(choice, probe_devices(neuron=choice == "neuron"))
