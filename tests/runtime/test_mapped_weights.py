"""Loads that do not copy: a loaded model's weights are views of its memory-mapped safetensors files.

Checked by address, not by timing or memory totals: every weight storage's data must lie inside a mapping
of one of the model's safetensors files in /proc/self/maps (file pages the page cache shares between
processes), and must still be there after inference (nothing copies them later).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from inferpack.compile.cast import cast_model
from inferpack.compile.options import CompileOptions
from inferpack.repository import LocalRepository
from inferpack.runtime.memory import MemoryLedger, module_storages, tensor_storages
from inferpack.runtime.modeling import LoadedModel, load_model, recycle
from inferpack.runtime.tasks import TextInput

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
SLOW = pytest.mark.slow  # casting the two tenants (two agreement checks) takes ~10-25 s on 2 shared cores
ITEM = TextInput("Who met Bob?", "Ann met Bob at the station.")


def _file_mappings() -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's mappings of safetensors files; adjacent areas of one file
    are joined (the kernel may split a mapping into several areas)."""
    found: list[tuple[int, int, str]] = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".safetensors"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if found and found[-1][1] == start and found[-1][2] == fields[5]:
                start = found.pop()[0]
            found.append((start, end, fields[5]))
    return found


def _weights_by_file(model: LoadedModel) -> dict[str, int]:
    """Bytes of the model's weight storages per safetensors file they are mapped from ('' = not mapped:
    a private copy). Buffers rebuilt at load (position ids, token type ids) are not weights: skipped."""
    module = model.module
    assert isinstance(module, torch.nn.Module)
    mappings = _file_mappings()
    out: dict[str, int] = {}
    for ptr, size in tensor_storages(module.parameters()).items():
        path = next((p for lo, hi, p in mappings if lo <= ptr and ptr + size <= hi), "")
        out[path] = out.get(path, 0) + size
    return out


@pytest.fixture(scope="module")
def cast_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalRepository:
    """Two QA tenants of one base with their weights also stored in bf16 (version 2, by compile)."""
    root = tmp_path_factory.mktemp("cast")
    for name in ("_shared", "qa-0000", "qa-0001"):
        shutil.copytree(demo_repo / name, root / name, copy_function=os.link)
    repo = LocalRepository(root)
    for model_id in ("qa-0000", "qa-0001"):
        cast_model(repo, model_id, CompileOptions(dtype="bf16", output_format="safetensors"))
    return repo


def test_fp32_weights_are_views_of_the_mapped_files(demo_repo: Path) -> None:
    repo = LocalRepository(demo_repo)
    model = load_model(repo, "qa-0000", dtype="fp32", warmup=False)
    model.predict([ITEM])  # inference must not copy them either
    by_file = _weights_by_file(model)
    assert "" not in by_file, f"{by_file.get('', 0)} bytes of weights were copied"
    own = str((demo_repo / "qa-0000" / "1" / "model.safetensors").resolve())
    assert own in by_file
    assert any("/_shared/weights/" in path for path in by_file)  # the tenants' base, mapped too
    assert sum(by_file.values()) > 80 * 2**20  # MiniLM's weights, all of them


@SLOW
def test_bf16_weights_stored_in_bf16_are_mapped_and_shared_by_tenants(cast_repo: LocalRepository) -> None:
    first = load_model(cast_repo, "qa-0000", dtype="bf16", warmup=False)
    second = load_model(cast_repo, "qa-0001", dtype="bf16", warmup=False)
    assert (first.version, second.version) == (2, 2)  # the version policy picks the bf16 weights
    first.predict([ITEM])
    for model in (first, second):
        assert model.dtype == torch.bfloat16
        by_file = _weights_by_file(model)
        assert "" not in by_file, f"{by_file.get('', 0)} bytes of weights were copied"
    base = [p for p in _weights_by_file(first) if "/_shared/weights/" in p]
    assert base and base == [p for p in _weights_by_file(second) if "/_shared/weights/" in p]
    first_ptrs = {t.data_ptr() for t in first.module.parameters()}  # type: ignore[union-attr]
    shared = first_ptrs & {t.data_ptr() for t in second.module.parameters()}  # type: ignore[union-attr]
    assert len(shared) > 50  # one mapping of the base, the same tensors in both tenants


@SLOW
def test_a_refilled_shell_maps_the_next_models_weights(cast_repo: LocalRepository) -> None:
    first = load_model(cast_repo, "qa-0000", dtype="bf16", warmup=False)
    shell = first.module
    recycle(first)
    again = load_model(cast_repo, "qa-0001", dtype="bf16", warmup=False)
    assert again.module is shell
    assert "" not in _weights_by_file(again)


def test_converting_at_load_copies_which_is_what_the_cast_version_avoids(demo_repo: Path) -> None:
    # the check above can fail: a bf16 load of fp32 weights makes private copies, found as unmapped
    model = load_model(LocalRepository(demo_repo), "qa-0000", dtype="bf16", warmup=False)
    assert model.version == 1
    assert _weights_by_file(model).get("", 0) > 40 * 2**20


@SLOW
def test_the_budget_counts_the_mapped_base_once_at_its_file_size(cast_repo: LocalRepository) -> None:
    # the ledger's bytes for two bf16 tenants are the bytes of the files they map: the base once, each
    # own file once (and the few small buffers rebuilt at load), so the budget matches what can be resident
    ledger = MemoryLedger()
    files: set[Path] = set()
    for model_id in ("qa-0000", "qa-0001"):
        model = load_model(cast_repo, model_id, dtype="bf16", warmup=False)
        ledger.add(model_id, module_storages(model.module))
        manifest = cast_repo.manifest(model_id, model.version)
        for rel in (manifest.weights, *manifest.shared_weights):
            files.add(cast_repo.resolve_file(model_id, model.version, rel))
    assert len(files) == 3
    file_bytes = sum(p.stat().st_size for p in files)
    assert 0.99 * file_bytes < ledger.total_bytes < 1.01 * file_bytes
    assert ledger.freeable_bytes("qa-0000") < 0.1 * ledger.total_bytes  # the base goes with its last user
