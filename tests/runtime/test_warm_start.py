"""Access statistics (decayed counts, the file format), the warm start's choice of models, and the
frequency eviction policy, with the registry's injected loader (no real models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inferpack.runtime.accessstats import AccessStats
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.registry import PROTECTED_AFTER_HITS, ModelRegistry
from inferpack.runtime.warmstart import read_stats, stats_text, warm_load, write_stats
from inferpack.settings import ServerSettings
from tests.runtime.test_registry import MB, Loader, Repo, clock, ready_batcher


class Wall:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_counts_decay_by_half_life_and_rank_hottest_first() -> None:
    stats = AccessStats(half_life_s=10.0)
    for t in (0.0, 0.0, 0.0, 0.0):
        stats.record("old-hot", t)
    stats.record("new", 20.0)
    stats.record("new", 20.0)
    assert stats.score("old-hot", 0.0) == 4.0
    assert stats.score("old-hot", 20.0) == pytest.approx(1.0)  # two half-lives later
    assert stats.score("new", 20.0) == 2.0 and stats.score("never", 20.0) == 0.0
    assert stats.ranked(20.0) == ["new", "old-hot"]
    assert stats.ranked(0.0)[0] == "old-hot"
    stats.record("old-hot", 20.0)  # the old count is aged before the new use is added
    assert stats.score("old-hot", 20.0) == pytest.approx(2.0)


def test_file_round_trip_keeps_the_hottest_and_rejects_bad_content(tmp_path: Path) -> None:
    stats = AccessStats(60.0)
    for i, model in enumerate(["a", "b", "c"]):
        for _ in range(i + 1):
            stats.record(model, 100.0)
    data = stats.to_json(100.0, limit=2)
    assert list(data["models"]) == ["c", "b"]  # type: ignore[call-overload]
    again = AccessStats.from_json(json.loads(json.dumps(data)), 60.0)
    assert again.ranked(100.0) == ["c", "b"] and again.score("c", 100.0) == 3.0
    for bad in ({}, {"version": 1, "models": []}, {"version": 1, "models": {"a": [1]}}, {"version": 99}):
        with pytest.raises(ValueError):
            AccessStats.from_json(bad, 60.0)

    path = tmp_path / "sub" / "stats.json"
    assert len(read_stats(path, 60.0)) == 0  # none yet: empty
    write_stats(path, stats_text(stats, 100.0))
    assert read_stats(path, 60.0).ranked(100.0) == ["c", "b", "a"]
    assert [p.name for p in path.parent.iterdir()] == ["stats.json"]  # no temporary file left
    path.write_text("{not json")
    assert len(read_stats(path, 60.0)) == 0  # a bad file is ignored (logged), never fatal


def _registry(loader: Loader, wall: Wall, **settings: Any) -> ModelRegistry:
    return ModelRegistry(
        Repo(["a", "b", "c", "d", "bad", "slow"]),  # type: ignore[arg-type]
        ServerSettings(lazy_load=True, **settings),
        InferencePool(2),
        loader=loader,  # type: ignore[arg-type]
        measure=lambda m: {id(m): MB},
        estimate=lambda model_id, version: MB,
        clock=clock,
        wall_clock=wall,
    )


async def test_requests_are_recorded_and_warm_load_fills_only_free_budget() -> None:
    wall, loader = Wall(), Loader()
    registry = _registry(loader, wall, memory_budget_mb=3)
    for model in ("c", "b", "c", "c"):
        await ready_batcher(registry, model)
    assert registry.access.ranked(wall()) == ["c", "b"]
    # 1 MiB of 3 is free: "zzz" is unknown, "c" loaded, "bad" fails (logged), "a" fills the free MiB and
    # "d" no longer fits; nothing is evicted for the warm start
    done = await warm_load(registry, ["zzz", "c", "bad", "a", "d"], max_models=10)
    assert done == ["a"] and registry.stats.evictions["budget"] == 0
    assert registry.entry("bad").state == "failed" and registry.entry("d").state == "unavailable"
    assert registry.stats.warm_start_loads == 1 and registry.stats.warm_start_pending == 0
    await registry.close()


async def test_warm_load_respects_max_models_and_protects_models_with_history() -> None:
    wall, loader = Wall(), Loader()
    registry = _registry(loader, wall)  # no budget
    for _ in range(3):
        registry.access.record("b", wall())
    registry.access.record("a", wall())
    assert await warm_load(registry, registry.access.ranked(wall()), max_models=1) == ["b"]
    assert registry.entry("b").hits == PROTECTED_AFTER_HITS  # hot by its history: not on probation
    assert await warm_load(registry, ["a"], max_models=5) == ["a"]
    assert registry.entry("a").hits == 0 and loader.calls == {"b": 1, "a": 1}
    await registry.close()


async def test_frequency_policy_evicts_the_lowest_decayed_count_not_the_oldest() -> None:
    wall = Wall()
    registry = _registry(Loader(), wall, memory_budget_mb=2, eviction_policy="frequency")
    for model in ("a", "a", "a", "b"):  # a: 3 uses, then b: 1 use (b is the most recent)
        await ready_batcher(registry, model)
    wall.now += 1
    await ready_batcher(registry, "c")  # must evict b (count 1), though a was used longer ago
    assert registry.entry("b").state == "evicted" and registry.entry("a").state == "ready"
    # history survives the unload: b comes back with its count, and now c (1 use) is the one to go
    await ready_batcher(registry, "b")
    assert registry.entry("c").state == "evicted" and registry.access.score("b", wall()) == pytest.approx(
        2.0, rel=1e-3
    )
    await registry.close()
