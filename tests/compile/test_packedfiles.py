"""Packed weights shared through files (compile/packedfiles.py): mapped, not copied; bit-identical; reused
by the next process that packs the same weight; replaced when unreadable; freed with the last graph; and
packing falls back to the process's own memory where files cannot be used."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from inferpack.compile.packedfiles import MAGIC, PackedFiles, default_directory, machine_tag, weight_key
from inferpack.compile.packing import _BACKING, _PACKED, packed_copy
from inferpack.runtime.hardware import cpu_has_native_bf16
from inferpack.runtime.memory import module_storages

native_bf16 = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="packing applies only on a CPU with native bf16 (AVX512-BF16, AMX)"
)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 2)).to(torch.bfloat16).eval()


def _trace(module: nn.Module, pack: PackedFiles | bool) -> torch.jit.ScriptModule:
    with torch.inference_mode():
        graph: torch.jit.ScriptModule = torch.jit.trace(
            packed_copy(module, pack), (torch.randn(3, 32, dtype=torch.bfloat16),), check_trace=False
        )
    return graph


def _mapped(directory: Path) -> set[str]:
    """This process's mappings of files under `directory`."""
    return {
        line.split()[-1]
        for line in Path("/proc/self/maps").read_text().splitlines()
        if str(directory) in line and line.endswith(".packed")
    }


def _files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.packed"))


def test_the_default_directory_is_the_users_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "inferpack" / "packed-weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_directory() == Path.home() / ".cache" / "inferpack" / "packed-weights"


def test_a_weights_key_is_its_content() -> None:
    weight = torch.randn(8, 4, dtype=torch.bfloat16)
    assert weight_key(weight) == weight_key(weight.clone())  # another tensor, the same bytes
    assert weight_key(weight) != weight_key(weight.reshape(4, 8))  # the same bytes, another shape
    changed = weight.clone()
    changed[0, 0] += 1
    assert weight_key(weight) != weight_key(changed)


@native_bf16
def test_a_shared_packed_weight_is_a_mapped_file_and_answers_bit_for_bit(tmp_path: Path) -> None:
    gc.collect()
    before = len(_PACKED), len(_BACKING)
    module = _mlp()
    graph = _trace(module, PackedFiles(tmp_path))
    files = _files(tmp_path)
    assert len(files) == 2 and files[0].parent.name == machine_tag()  # one per linear layer's weight
    assert _mapped(tmp_path) == {str(f) for f in files}
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(graph(x), module(x))
        assert torch.equal(graph(x), _trace(_mlp(), True)(x))  # as a copy packed in memory
    for path in files:
        data = path.read_bytes()
        assert data.endswith(MAGIC)
    # the ledger counts each packed weight once, under its own key, and not the mapping it lives in
    packed = {k: v for k, v in module_storages(graph).items() if k < 0}
    assert sorted(packed.values()) == sorted(m.weight.numel() * 2 for m in module if isinstance(m, nn.Linear))
    assert sum(module_storages(graph).values()) == sum(module_storages(module).values()) + sum(
        packed.values()
    )
    # freed with the graph: no entry left, the files unmapped
    del graph
    gc.collect()
    assert not _mapped(tmp_path)
    assert (len(_PACKED), len(_BACKING)) == before


@native_bf16
def test_the_next_packer_maps_the_file_instead_of_writing_it(tmp_path: Path) -> None:
    graph = _trace(_mlp(), PackedFiles(tmp_path))
    before = {p: (p.stat().st_ino, p.read_bytes()) for p in _files(tmp_path)}
    del graph
    gc.collect()
    # another process (a second server) packing the same weights: it maps the same files
    script = (
        "import sys, torch; from pathlib import Path; from torch import nn;"
        "from inferpack.compile.packedfiles import PackedFiles; from inferpack.compile.packing import packed_copy;"
        "torch.manual_seed(0);"
        "m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 2)).to(torch.bfloat16).eval();"
        "c = packed_copy(m, PackedFiles(Path(sys.argv[1])));"
        "x = torch.randn(4, 32, dtype=torch.bfloat16);"
        "assert torch.equal(c(x), m(x));"
        "print(sorted(l.split()[-1] for l in open('/proc/self/maps') if l.rstrip().endswith('.packed')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(sorted(str(p) for p in before))
    assert {p: (p.stat().st_ino, p.read_bytes()) for p in _files(tmp_path)} == before  # not rewritten


@native_bf16
def test_an_unreadable_file_is_replaced(tmp_path: Path) -> None:
    graph = _trace(_mlp(), PackedFiles(tmp_path))
    del graph
    gc.collect()
    first, second = _files(tmp_path)
    first.write_bytes(b"not a packed weight")
    second.write_bytes(second.read_bytes()[:-4])  # cut short: no magic
    module = _mlp()
    graph = _trace(module, PackedFiles(tmp_path))
    assert all(p.read_bytes().endswith(MAGIC) for p in (first, second))
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(graph(x), module(x))


@native_bf16
def test_without_a_writable_directory_packing_stays_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the directory should be")
    files = PackedFiles(blocked / "packed")
    module = _mlp()
    with caplog.at_level(logging.WARNING, logger="inferpack.packing"):
        graph = _trace(module, files)
    assert "not shared between processes" in caplog.text and "packed_weights_dir" in caplog.text
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(graph(x), module(x))
    assert len([k for k in module_storages(graph) if k < 0]) == 2  # packed all the same, in memory
    assert files.packed(module[0].weight) is None  # and it does not try again


@native_bf16
def test_the_directory_is_kept_within_its_size_least_recently_used_first(tmp_path: Path) -> None:
    graphs = [_trace(_mlp(seed), PackedFiles(tmp_path)) for seed in range(2)]
    files = _files(tmp_path)
    assert len(files) == 4
    sizes = {p: p.stat().st_size for p in files}
    for age, path in enumerate(files):  # the oldest first in this list
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    newest = files[-1]
    limit = sum(sizes.values())  # room for these four, not for a fifth
    _trace(_mlp(7), PackedFiles(tmp_path, max_bytes=limit))
    left = _files(tmp_path)
    assert sum(p.stat().st_size for p in left) <= limit
    assert files[0] not in left and newest in left
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    with torch.inference_mode():  # a graph whose file was deleted keeps its mapped pages
        assert torch.equal(graphs[0](x), _mlp(0)(x))


def test_the_server_settings_choose_how_graphs_read_their_weights(tmp_path: Path) -> None:
    from inferpack.server.app import packing
    from inferpack.settings import ServerSettings

    assert packing(ServerSettings(pack_weights=False)) is False
    assert packing(ServerSettings(share_packed_weights=False)) is True  # packed in each process
    chosen = packing(ServerSettings(packed_weights_dir=str(tmp_path), packed_weights_max_bytes=2**20))
    assert isinstance(chosen, PackedFiles)
    assert (chosen.directory, chosen.max_bytes) == (tmp_path, 2**20)
    default = packing(ServerSettings())
    assert isinstance(default, PackedFiles) and default.directory == default_directory()
