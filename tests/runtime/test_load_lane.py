"""The load lane: loads run on threads of their own with one intra-op thread and a lower priority, so a
cold load does not stretch the requests running on the inference threads."""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.registry import ModelRegistry
from inferpack.settings import ServerSettings
from tests.runtime.test_registry import Echo, Repo, clock


class _Probe:
    """A loader that records the scheduling niceness and torch threads of the thread it runs on."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def __call__(self, repo: Any, model_id: str, version: int | None, cold: bool = False) -> Any:
        self.seen.append(
            (os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), torch.get_num_threads())
        )
        return Echo(model_id)


def _registry(probe: _Probe, nice: int) -> ModelRegistry:
    return ModelRegistry(
        Repo(["a"]),  # type: ignore[arg-type]
        ServerSettings(load_nice=nice),
        InferencePool(1),
        loader=probe,  # type: ignore[arg-type]
        measure=lambda m: {id(m): 1},
        estimate=lambda model_id, version: 1,
        clock=clock,
    )


async def test_loads_run_niced_on_one_intra_op_thread() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    probe = _Probe()
    await _registry(probe, 10).load("a")
    assert probe.seen == [(min(base + 10, 19), 1)]
    plain = _Probe()
    await _registry(plain, 0).load("a")
    assert plain.seen == [(base, 1)]  # 0: the inference threads' priority


def test_fast_runtime_upgrades_stay_niced_when_loads_are_not() -> None:
    """An upgrade (an ONNX Runtime session created while its stand-in serves) is off every request's path:
    niced even at `load_nice = 0`, which puts cold loads at the inference threads' priority."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    registry = _registry(_Probe(), 0)
    try:
        seen = registry._upgrades._executor.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result(timeout=30)
    finally:
        registry._upgrades.shutdown()
    assert seen == min(base + 10, 19)
