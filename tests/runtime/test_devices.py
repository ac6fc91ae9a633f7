"""Device resolution and the plan -> device mapping, from hand-written machine facts (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from inferpack.errors import ConfigError, DeviceUnavailable
from inferpack.runtime.devices import (
    CPU_DEVICE,
    CudaDevice,
    DeviceFacts,
    check_dtype,
    default_inference_threads,
    neuron_core_count,
    resolve_device,
)
from inferpack.runtime.hardware import resolve_dtype
from inferpack.runtime.targets import group_devices, host_device_kinds

GIB = 2**30
T4 = CudaDevice(0, "Tesla T4", (7, 5), 15 * GIB, 14 * GIB)
A10G = CudaDevice(1, "NVIDIA A10G", (8, 6), 22 * GIB, 21 * GIB)
CPU_BUILD = DeviceFacts(torch_version="2.13.0+cpu", cpu="AMD EPYC, 2 core(s)")
CUDA_NO_GPU = DeviceFacts(torch_version="2.13.0", cuda_build="12.8", cuda_error="no driver")
TWO_GPUS = DeviceFacts(torch_version="2.13.0", cuda_build="12.8", cuda_devices=(T4, A10G))
NEURON = DeviceFacts(torch_version="2.5.1", neuron_sdk="2.5.1.2.4.0", neuron_cores=2)


def test_cpu_and_auto_without_a_gpu_say_why() -> None:
    assert resolve_device("cpu", CPU_BUILD).name == "cpu"
    auto = resolve_device("auto", CPU_BUILD)
    assert (auto.name, auto.kind, auto.requested) == ("cpu", "cpu", "auto")
    assert "auto found no CUDA GPU" in auto.describe()
    assert "2.13.0+cpu is a CPU-only build" in auto.describe()
    assert auto.metadata() == {"name": "cpu", "kind": "cpu", "requested": "auto", "detail": auto.detail}


def test_auto_picks_cuda_when_a_gpu_is_visible() -> None:
    auto = resolve_device("auto", TWO_GPUS)
    assert (auto.name, auto.kind) == ("cuda", "cuda") and auto.cuda == (T4, A10G)
    assert "auto found a CUDA GPU" in auto.describe() and "Tesla T4" in auto.detail


def test_cuda_on_a_cpu_only_build_names_the_device_and_what_to_install() -> None:
    with pytest.raises(
        DeviceUnavailable, match=r"CUDA requested \(--device cuda\) but torch 2.13.0\+cpu"
    ) as e:
        resolve_device("cuda", CPU_BUILD)
    assert e.value.hint is not None and "TORCH_SPEC=torch==2.13.0" in e.value.hint
    assert isinstance(e.value, ConfigError)  # the CLI maps it to exit status 2


def test_cuda_build_without_a_gpu_and_a_missing_index() -> None:
    with pytest.raises(DeviceUnavailable, match=r"no NVIDIA GPU is visible.*no driver"):
        resolve_device("cuda:0", CUDA_NO_GPU)
    with pytest.raises(DeviceUnavailable, match="cuda:3 requested but only 2 GPU"):
        resolve_device("cuda:3", TWO_GPUS)
    one = resolve_device("cuda:1", TWO_GPUS)
    assert one.cuda == (A10G,) and one.place() == "cuda:1"


def test_neuron_needs_torch_neuronx_and_cores() -> None:
    with pytest.raises(DeviceUnavailable, match="torch-neuronx is not importable") as e:
        resolve_device("neuron", DeviceFacts(torch_version="2.13.0+cpu", neuron_error="No module"))
    assert e.value.hint is not None and "inf2" in e.value.hint
    with pytest.raises(DeviceUnavailable, match="no NeuronCore is visible"):
        resolve_device("neuron", DeviceFacts(torch_version="2.5.1", neuron_sdk="2.5"))
    neuron = resolve_device("neuron", NEURON)
    assert (neuron.kind, neuron.neuron_cores, neuron.place()) == ("neuron", 2, "neuron")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu", CPU_BUILD)


def test_worker_threads_per_processor() -> None:
    assert default_inference_threads(CPU_DEVICE, 8) == 8
    assert default_inference_threads(resolve_device("cuda:0", TWO_GPUS), 16) == 2
    assert default_inference_threads(resolve_device("cuda", TWO_GPUS), 16) == 4
    assert default_inference_threads(resolve_device("cuda", TWO_GPUS), 1) == 1
    assert default_inference_threads(resolve_device("neuron", NEURON), 4) == 2


def test_gpu_budget_is_free_device_memory_less_headroom_and_models_spread() -> None:
    gpus = resolve_device("cuda", TWO_GPUS)
    headroom = int(15 * GIB * 0.1) + int(22 * GIB * 0.1)  # 10 % of each, over the 1 GiB minimum
    assert gpus.memory_budget_bytes() == 14 * GIB + 21 * GIB - headroom
    assert CPU_DEVICE.memory_budget_bytes() is None
    free = {0: 5 * GIB, 1: 9 * GIB}
    assert gpus.place(lambda i: free[i]) == "cuda:1"
    free[0] = 12 * GIB
    assert gpus.place(lambda i: free[i]) == "cuda:0"
    assert [gpus.place() for _ in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]  # no probe: in turn


def test_dtypes_per_processor() -> None:
    assert resolve_dtype("auto", "cuda:0", cuda_bf16=True) == torch.bfloat16  # Ampere and later
    assert resolve_dtype("auto", "cuda", cuda_bf16=False) == torch.float16  # T4
    assert resolve_dtype("auto", "neuron") == torch.bfloat16
    assert resolve_dtype("fp16", "cuda", cuda_bf16=True) == torch.float16
    check_dtype("auto", CPU_DEVICE)
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        check_dtype("fp16", CPU_DEVICE)
    with pytest.raises(ConfigError, match="bf16 is not native on cuda:0 Tesla T4"):
        check_dtype("bf16", resolve_device("cuda:0", TWO_GPUS))
    check_dtype("bf16", resolve_device("cuda:1", TWO_GPUS))


def test_neuron_core_count_from_the_runtime_environment() -> None:
    assert neuron_core_count({"NEURON_RT_NUM_CORES": "3"}, []) == 3
    assert neuron_core_count({"NEURON_RT_VISIBLE_CORES": "0-3"}, []) == 4
    assert neuron_core_count({"NEURON_RT_VISIBLE_CORES": "0,2"}, ["neuron0"]) == 2
    assert neuron_core_count({}, ["neuron0", "neuron1", "neuron_x"]) == 4  # two NeuronCore-v2 per chip
    assert neuron_core_count({}, []) == 0


def test_plan_groups_get_their_processor_or_a_clear_error() -> None:
    targets = {"c7i": "cpu", "g4dn": "cuda", "inf2": "neuron"}
    assert host_device_kinds(CPU_BUILD) == {"cpu"}
    assert host_device_kinds(TWO_GPUS) == {"cpu", "cuda"}
    assert host_device_kinds(NEURON) == {"cpu", "neuron"}
    devices, warnings = group_devices(targets, {"cpu", "cuda", "neuron"}, allow_cpu_fallback=False)
    assert devices == targets and warnings == []
    with pytest.raises(DeviceUnavailable, match="plan group 'g4dn' targets cuda, which this host lacks") as e:
        group_devices(targets, {"cpu"}, allow_cpu_fallback=False)
    assert e.value.hint is not None and "--allow-cpu-fallback" in e.value.hint
    devices, warnings = group_devices(targets, {"cpu"}, allow_cpu_fallback=True)
    assert devices == {"c7i": "cpu", "g4dn": "cpu", "inf2": "cpu"}
    assert len(warnings) == 2 and "'inf2' targets neuron" in warnings[1]
