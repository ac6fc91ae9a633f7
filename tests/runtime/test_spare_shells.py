"""Spare module shells: built in the background after a load, so the next cold load of the architecture
refills one instead of building a module tree on the cold request's path."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from inferpack.repository.local import LocalRepository
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.modeling import load_model
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.skeletons import SKELETONS, SkeletonPool, SpareShells
from inferpack.runtime.tasks import TextInput
from inferpack.settings import ServerSettings
from tests.runtime.test_registry import Echo, Repo, clock


class _Builder:
    """Builds tiny meta-device shells and records the niceness of the thread each build ran on."""

    def __init__(self) -> None:
        self.built: list[Any] = []
        self.nice: list[int] = []

    def __call__(self) -> Any:
        self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        with torch.device("meta"):
            shell = torch.nn.Module()
            shell.model = torch.nn.Linear(4, 2)  # TaskWrapper's inner module is `.model`
        self.built.append(shell)
        return shell


def test_a_remembered_architecture_gets_spares_up_to_the_pool_limit() -> None:
    pool = SkeletonPool(per_architecture=2)
    build = _Builder()
    assert not pool.build_spare("arch")  # never told how to build it
    pool.remember("arch", build)
    assert pool.build_spare("arch") and pool.build_spare("arch")
    assert not pool.build_spare("arch")  # full: the third shell is dropped
    assert pool.count("arch") == 2
    assert pool.take("arch") in build.built


def test_top_up_builds_in_the_background_until_count_shells_are_held() -> None:
    pool = SkeletonPool()
    build = _Builder()
    pool.remember("arch", build)
    spares = SpareShells(pool, count=2, nice=5)
    try:
        assert spares.top_up(None) is None and spares.top_up("") is None  # models without a shell
        task = spares.top_up("arch")
        assert task is not None
        task.result(timeout=30)
        assert pool.count("arch") == 2 and len(build.built) == 2
        assert spares.top_up("arch") is None  # already full: nothing to build
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert build.nice == [min(base + 5, 19)] * 2  # a lower priority than the inference threads
        pool.take("arch")
        again = spares.top_up("arch")
        assert again is not None
        again.result(timeout=30)
        assert pool.count("arch") == 2 and len(build.built) == 3  # the one taken is replaced
    finally:
        spares.close()


def test_a_failing_build_leaves_the_pool_usable() -> None:
    pool = SkeletonPool()

    def broken() -> TaskWrapper:
        raise RuntimeError("no memory")

    pool.remember("arch", broken)
    spares = SpareShells(pool, count=2)
    try:
        task = spares.top_up("arch")
        assert task is not None
        task.result(timeout=30)  # logged, not raised
        assert pool.count("arch") == 0
        pool.remember("arch", _Builder())
        task = spares.top_up("arch")  # not stuck as pending after the failure
        assert task is not None
        task.result(timeout=30)
        assert pool.count("arch") == 2
    finally:
        spares.close()


def test_a_spare_shell_answers_as_a_freshly_built_model(demo_repo: Path) -> None:
    repo = LocalRepository(demo_repo)
    texts = [TextInput("Who?", "Ann met Bob at the station.")]
    first = load_model(repo, "qa-0000", dtype="fp32")  # tells the pool how to build this architecture
    key = first.extra["skeleton"]
    expected = load_model(repo, "qa-0001", dtype="fp32").predict(texts)
    while SKELETONS.take(key) is not None:  # another test's shells: only the spare below is held
        pass
    spares = SpareShells(SKELETONS, count=1)
    try:
        task = spares.top_up(key)
        assert task is not None
        task.result(timeout=60)
        spare = SKELETONS.take(key)
        assert spare is not None
        SKELETONS.give(key, spare)  # back (already empty): the next load takes it
        got = load_model(repo, "qa-0001", dtype="fp32")
        assert got.module is spare  # the spare, not a new build
        answer = got.predict(texts)
        assert answer[0]["answer"] == expected[0]["answer"]
        assert abs(answer[0]["score"] - expected[0]["score"]) < 1e-6
    finally:
        spares.close()


async def test_the_registry_replaces_the_shell_a_load_took() -> None:
    key = f"test-arch-{uuid.uuid4()}"  # the process-wide pool: a key no other test uses
    SKELETONS.remember(key, _Builder())

    def loader(repo: Any, model_id: str, version: int | None, cold: bool = False) -> Any:
        model = Echo(model_id)
        model.extra["skeleton"] = key
        return model

    registry = ModelRegistry(
        Repo(["a"]),  # type: ignore[arg-type]
        ServerSettings(max_concurrent_loads=2),
        InferencePool(1),
        loader=loader,  # type: ignore[arg-type]
        measure=lambda m: {id(m): 1},
        estimate=lambda model_id, version: 1,
        clock=clock,
    )
    try:
        await registry.load("a")
        deadline = time.monotonic() + 30
        while SKELETONS.count(key) < 2 and time.monotonic() < deadline:  # built in the background
            time.sleep(0.01)
        assert SKELETONS.count(key) == 2  # one per load lane
    finally:
        await registry.close()
        while SKELETONS.take(key) is not None:
            pass
