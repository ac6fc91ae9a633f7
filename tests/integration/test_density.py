"""Density policies on real MiniLM models: shared base held once, budget under concurrent load, RSS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from inferpack.repository import LocalRepository
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.registry import ModelRegistry
from inferpack.runtime.tasks import TextInput
from inferpack.settings import ServerSettings
from tests.integration.conftest import running_server

MB = 2**20


@pytest.fixture(scope="module")
def tenant_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tenants")
    make_demo_models(root, 6, prefix="tenant")  # share one MiniLM base; each has its own top layer + head
    make_demo_models(root, 2, prefix="full", share_base=False)
    return root


def test_shared_base_is_stored_and_held_once(tenant_repo: Path) -> None:
    own = (tenant_repo / "tenant-0000" / "1" / "model.safetensors").stat().st_size
    full = (tenant_repo / "full-0000" / "1" / "model.safetensors").stat().st_size
    assert own < full / 8  # the delta, not the whole model
    registry_memory: list[int] = []

    async def scenario() -> None:
        registry = ModelRegistry(LocalRepository(tenant_repo), ServerSettings(dtype="fp32"), InferencePool(1))
        for i in range(6):
            await registry.load(f"tenant-{i:04d}")
            registry_memory.append(registry.ledger.total_bytes)
        await registry.close()

    asyncio.run(scenario())
    base = registry_memory[0]
    per_tenant = (registry_memory[-1] - base) / 5
    assert per_tenant < base / 8, (base, per_tenant)


async def test_budget_holds_under_concurrent_load(tenant_repo: Path) -> None:
    settings = ServerSettings(dtype="fp32", lazy_load=True, memory_budget_mb=100)  # the base + about 2 deltas
    registry = ModelRegistry(LocalRepository(tenant_repo), settings, InferencePool(2))
    peak = 0

    async def client(k: int) -> None:
        nonlocal peak
        for j in range(6):
            model = f"tenant-{(k + j) % 6:04d}"
            try:
                async with registry.use(model) as (batcher, _):
                    await batcher.submit(TextInput("Who?", "Ann met Bob."))
            except Exception as exc:  # an Overloaded refusal is allowed, a budget breach is not
                assert "memory budget full" in str(exc), exc
            peak = max(peak, registry.ledger.total_bytes)

    await asyncio.gather(*(client(k) for k in range(4)))
    assert peak <= settings.memory_budget_mb * MB  # type: ignore[operator]
    assert registry.stats.evictions["budget"] > 0
    await registry.close()


RSS_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from inferpack.repository import LocalRepository
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.memory import rss_bytes
from inferpack.runtime.registry import ModelRegistry
from inferpack.settings import ServerSettings

async def main():
    repo = LocalRepository(Path(sys.argv[1]))
    registry = ModelRegistry(repo, ServerSettings(dtype="fp32"), InferencePool(1))
    await registry.load("full-0000")  # warm up imports and the allocator first
    await registry.unload("full-0000")
    before = rss_bytes()
    await registry.load("full-0000")
    await registry.load("full-0001")
    loaded = rss_bytes()
    await registry.unload("full-0000")
    await registry.unload("full-0001")
    after = rss_bytes()
    await registry.close()
    print(json.dumps({"before": before, "loaded": loaded, "after": after}))

asyncio.run(main())
"""


def test_rss_returns_after_unloading(tenant_repo: Path) -> None:
    # a fresh process, so allocator state left by other tests cannot blur the figures
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(tenant_repo)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    grown = rss["loaded"] - rss["before"]
    assert grown > 50 * MB, rss  # two full MiniLM models (untouched embedding rows stay file-backed)
    assert rss["loaded"] - rss["after"] > 0.9 * grown, rss


def test_index_reports_evicted_models(tenant_repo: Path) -> None:
    with (
        running_server(tenant_repo, lazy_load=True, memory_budget_mb=100, dtype="fp32") as s,
        httpx.Client(base_url=s.url, timeout=60) as c,
    ):
        for model in ("tenant-0000", "tenant-0001", "full-0000"):
            assert c.get(f"/predictions/{model}").status_code == 200
        index = {m["name"]: m for m in c.post("/v2/repository/index").json()}
        assert index["full-0000"]["state"] == "READY"
        assert {index["tenant-0000"]["state"], index["tenant-0001"]["state"]} == {"EVICTED"}
        assert "budget" in index["tenant-0000"]["reason"]
        metrics = c.get("/metrics").text
        assert 'inferpack_model_evictions_total{reason="budget"} 2.0' in metrics
        assert "inferpack_model_cache_misses_total 3.0" in metrics
        assert "process_resident_memory_bytes" in metrics
