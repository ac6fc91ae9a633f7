"""N copies of one model (the reference's benchmark set-up): one set of weights on disk and in memory, each
copy an independent model id, and a real server answering `/predictions/model0` like the reference's."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from tests.integration.conftest import running_server

from inferpack.errors import RepositoryError
from inferpack.repository import LocalRepository
from inferpack.repository.copies import copy_ids, make_copies
from inferpack.repository.demo import make_demo_models
from inferpack.runtime.batcher import InferencePool
from inferpack.runtime.registry import ModelRegistry
from inferpack.settings import ServerSettings

QUESTION = {"seq_0": "Who went home?", "seq_1": "Bob went home after the game."}
INFERPACK = str(Path(sys.executable).parent / "inferpack")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MiniLM demo model (shared base + own delta) and three seed-named copies of it."""
    root = tmp_path_factory.mktemp("copies")
    make_demo_models(root, 1, prefix="base")
    make_copies(LocalRepository(root), "base-0000", copy_ids("base-0000", 3, seed_names=True))
    return root


def test_ids() -> None:
    assert copy_ids("bert", 3, seed_names=True) == ["model0", "model1", "model2"]
    assert copy_ids("bert", 2) == ["bert-copy-0000", "bert-copy-0001"]
    assert copy_ids("bert", 2, seed_names=True, prefix="m") == ["m0", "m1"]
    with pytest.raises(RepositoryError):
        copy_ids("bert", 0)


def test_copies_hold_no_weights_of_their_own(repo: Path) -> None:
    local = LocalRepository(repo)
    assert local.model_ids() == ["base-0000", "model0", "model1", "model2"]
    source = local.manifest("base-0000")
    shared_files = sorted((repo / "_shared" / "weights").iterdir())
    assert len(shared_files) == 2  # the demo's base, and the source's own tensors stored once for the copies
    for model_id in ("model0", "model1", "model2"):
        vdir = local.version_dir(model_id)
        m = local.manifest(model_id)
        assert (m.task, m.format, m.max_sequence_length) == (source.task, source.format, 128)
        assert (vdir / m.weights).stat().st_size < 100  # an empty safetensors file
        assert sorted(local.resolve_file(model_id, 1, rel) for rel in m.shared_weights) == shared_files
        assert local.resolve_file(model_id, 1, m.tokenizer).parent == repo / "_shared" / "tokenizers"
        # the copy's folder is a few KB: manifest, config, empty weights
        assert sum(p.stat().st_size for p in vdir.iterdir()) < 16_000
    # idempotent: asking again changes nothing
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}
    make_copies(local, "base-0000", ["model0", "model1", "model2"])
    assert before == {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(RepositoryError, match="among the copies"):
        make_copies(local, "base-0000", ["base-0000"])


def test_copies_are_independent_models_sharing_memory(repo: Path) -> None:
    held: list[int] = []

    async def scenario() -> list[str]:
        registry = ModelRegistry(LocalRepository(repo), ServerSettings(dtype="fp32"), InferencePool(1))
        for model_id in ("model0", "model1", "model2"):
            await registry.load(model_id)
            held.append(registry.ledger.total_bytes)
        await registry.unload("model1")
        ready = registry.ready_models()
        await registry.close()
        return ready

    ready = asyncio.run(scenario())
    assert ready == ["model0", "model2"]  # unloading one copy leaves the others loaded
    assert held[0] > 10 * 2**20  # one MiniLM's worth
    assert held[2] - held[0] < held[0] / 50, held  # two more copies add (almost) nothing


def test_a_server_answers_the_reference_ids(repo: Path) -> None:
    with (
        running_server(repo, inference_threads=1, models=["base-0000", "model0", "model1", "model2"]) as s,
        httpx.Client(base_url=s.url, timeout=60) as client,
    ):
        source = client.get("/predictions/base-0000", params=QUESTION)
        assert source.status_code == 200, source.text
        for model_id in ("model0", "model2"):
            copy = client.get(f"/predictions/{model_id}", params=QUESTION)
            assert copy.status_code == 200, copy.text
            assert copy.json() == source.json()  # the same weights give the same answer
        index = client.post("/v2/repository/index", json={}).json()
        assert {m["name"] for m in index} >= {"model0", "model1", "model2"}
        assert client.get("/predictions/model3", params=QUESTION).status_code == 404


def test_cli_copies_from_another_repository(repo: Path, tmp_path: Path) -> None:
    """`--from`: the copies' repository holds only model0..model{N-1} (what the reference client asks
    for), with the source's whole state stored once in its own `_shared/`."""
    out = tmp_path / "bench-repo"
    cmd = [INFERPACK, "models", "demo", "--from", str(repo), "--copies-of", "base-0000", "--count", "2"]
    done = subprocess.run(
        [*cmd, "--seed-names", "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    local = LocalRepository(out)
    assert local.model_ids() == ["model0", "model1"]
    assert len(list((out / "_shared" / "weights").iterdir())) == 1
    m = local.manifest("model1")
    assert [local.resolve_file("model1", 1, rel).parent for rel in m.shared_weights] == [
        out / "_shared" / "weights"
    ]

    async def weights(root: Path, model_id: str) -> dict[str, torch.Tensor]:
        registry = ModelRegistry(LocalRepository(root), ServerSettings(dtype="fp32"), InferencePool(1))
        await registry.load(model_id)
        loaded = registry.entry(model_id).loaded
        assert loaded is not None and isinstance(loaded.module, torch.nn.Module)
        state = {k: v.clone() for k, v in loaded.module.state_dict().items()}
        await registry.close()
        return state

    copied, original = asyncio.run(weights(out, "model1")), asyncio.run(weights(repo, "base-0000"))
    assert copied.keys() == original.keys()
    assert all(torch.equal(copied[k], original[k]) for k in original)
    missing = subprocess.run(
        [INFERPACK, "models", "demo", "--copies-of", "nope", "--count", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2 and "nope" in missing.stderr
    listed = subprocess.run(
        [INFERPACK, "models", "list", "--repository", str(out)], capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0 and "model0" in listed.stdout
    assert json.loads((out / "model0" / "1" / "manifest.json").read_text())["description"].startswith(
        "copy of"
    )


def test_unique_demo_models_with_the_reference_names(tmp_path: Path) -> None:
    args = ["--arch", "tiny", "--count", "2", "--seed-names", "--out", str(tmp_path)]
    done = subprocess.run(
        [INFERPACK, "models", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert LocalRepository(tmp_path).model_ids() == ["model0", "model1"]
