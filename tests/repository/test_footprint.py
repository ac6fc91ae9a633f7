"""The one memory estimate of a model version before loading (server budget and planner alike)."""

from __future__ import annotations

from pathlib import Path

from inferpack.repository.footprint import (
    FILE_EXTRA_BYTES,
    MB,
    ORT_SESSION_FACTOR,
    estimate_from_file_bytes,
    estimate_resident_bytes,
    estimate_session_bytes,
)
from inferpack.repository.local import LocalRepository
from inferpack.repository.manifest import Footprint, Manifest, write_manifest


def _model(
    root: Path, model_id: str, weights: int, shared: int = 0, resident_mb: float | None = None
) -> None:
    folder = root / model_id / "1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * weights)
    shared_files = []
    if shared:
        (root / "_shared").mkdir(exist_ok=True)
        (root / "_shared" / "base.safetensors").write_bytes(b"\0" * shared)
        shared_files = ["../../_shared/base.safetensors"]
    footprint = Footprint(resident_mb=resident_mb, load_seconds=1.0, measured_on="t") if resident_mb else None
    manifest = Manifest(
        format="safetensors",
        task="feature-extraction",
        weights="model.safetensors",
        shared_weights=shared_files,
        footprint=footprint,
    )
    write_manifest(folder / "manifest.json", manifest)


def test_the_formula_is_pinned() -> None:
    # 1% over the files for buffers they do not hold, plus 64 KiB: the registry's budget depends on it.
    assert estimate_from_file_bytes(0) == 65536
    assert estimate_from_file_bytes(100 * MB) == int(100 * MB * 1.01) + 65536


def test_a_measured_footprint_wins(tmp_path: Path) -> None:
    _model(tmp_path, "m", weights=10 * MB, resident_mb=42.5)
    assert estimate_resident_bytes(LocalRepository(tmp_path), "m", 1) == int(42.5 * MB)


def test_shared_weights_count_unless_already_held(tmp_path: Path) -> None:
    _model(tmp_path, "m", weights=MB, shared=3 * MB)
    repo = LocalRepository(tmp_path)
    assert estimate_resident_bytes(repo, "m", 1) == estimate_from_file_bytes(4 * MB)
    held = estimate_resident_bytes(repo, "m", 1, already_held=lambda p: p.name == "base.safetensors")
    assert held == estimate_from_file_bytes(MB)


def test_a_server_converting_at_load_holds_the_weights_at_its_dtypes_size(tmp_path: Path) -> None:
    _model(tmp_path, "m", weights=MB, shared=3 * MB)  # an fp32 version
    repo = LocalRepository(tmp_path)
    assert estimate_resident_bytes(repo, "m", 1, serving_dtype="bf16") == estimate_from_file_bytes(2 * MB)
    assert estimate_resident_bytes(repo, "m", 1, serving_dtype="fp32") == estimate_from_file_bytes(4 * MB)


def test_an_onnx_version_is_estimated_as_its_sessions_own_copy(tmp_path: Path) -> None:
    """An ONNX Runtime session reads the graph's weights into buffers of its own, a little more than the
    file (bench/bench_ort_memory.py): the estimate a server budgets before creating one."""
    folder = tmp_path / "o" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * (10 * MB))
    manifest = Manifest(format="onnx", task="question-answering", weights="model.onnx")
    write_manifest(folder / "manifest.json", manifest)
    got = estimate_resident_bytes(LocalRepository(tmp_path), "o", 1)
    assert got == estimate_session_bytes(10 * MB) == int(10 * MB * ORT_SESSION_FACTOR) + FILE_EXTRA_BYTES
    assert got > estimate_from_file_bytes(10 * MB)
