"""`inferpack compile --format onnx`: export, agreement check, version policy, loading with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferpack.compile.compiler import compile_model
from inferpack.compile.options import CompileOptions
from inferpack.errors import CompileError, ModelLoadFailed
from inferpack.repository.local import LocalRepository
from inferpack.runtime.heads import TaskWrapper
from inferpack.runtime.modeling import load_model
from inferpack.runtime.onnxrt import OrtModule
from inferpack.runtime.versions import _check_target, choose_version
from tests.onnx_models import QUESTIONS, assert_same_answers, onnx_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalRepository, list[str]]:
    return onnx_repo(tmp_path_factory.mktemp("onnx"), count=1)


def test_the_onnx_version_records_its_source_and_a_passed_agreement(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, (model_id,) = repo
    manifest = repository.manifest(model_id, 2)
    assert (manifest.format, manifest.weights, manifest.compiled_from) == ("onnx", "model.onnx", 1)
    assert (manifest.target, manifest.dtype, manifest.quantization) == ("cpu", "fp32", "none")
    assert manifest.agreement is not None and manifest.agreement.passed
    assert manifest.agreement.max_abs_diff <= manifest.agreement.tolerance
    assert (repository.version_dir(model_id, 2) / "model.onnx").stat().st_size > 0
    assert "ONNX opset 17" in manifest.description


def test_onnx_runtime_answers_as_eager_fp32_on_other_batches(repo: tuple[LocalRepository, list[str]]) -> None:
    repository, (model_id,) = repo
    eager = load_model(repository, model_id, 1, dtype="fp32")
    ort = load_model(repository, model_id, 2, dtype="fp32")
    assert isinstance(ort.module, OrtModule) and isinstance(eager.module, TaskWrapper)
    assert (ort.version, ort.dtype) == (2, torch.float32)
    batch = eager.tokenizer.encode(QUESTIONS)  # a padded batch of 3: not the shape it was exported with
    assert torch.allclose(ort.forward(batch), eager.forward(batch), atol=1e-4)
    assert_same_answers(ort.predict(QUESTIONS), eager.predict(QUESTIONS))


def test_only_an_onnxruntime_server_picks_the_onnx_version(repo: tuple[LocalRepository, list[str]]) -> None:
    repository, (model_id,) = repo
    assert choose_version(repository, model_id, "cpu", torch.float32) == 1
    assert choose_version(repository, model_id, "cpu", torch.float32, "onnxruntime") == 2
    # ONNX graphs compute fp32: a bf16 server keeps the eager version
    assert choose_version(repository, model_id, "cpu", torch.bfloat16, "onnxruntime") == 1
    with pytest.raises(ModelLoadFailed, match="ONNX graph, which this server runs on CPUs only"):
        _check_target(model_id, 2, repository.manifest(model_id, 2), "cuda")


def test_a_tiered_load_answers_from_the_eager_source_and_upgrades_to_the_session(
    repo: tuple[LocalRepository, list[str]],
) -> None:
    repository, (model_id,) = repo
    stand_in = load_model(repository, model_id, dtype="fp32", engine="onnxruntime", tier=True)
    assert isinstance(stand_in.module, TaskWrapper) and stand_in.dtype == torch.float32
    assert (stand_in.version, stand_in.manifest.format) == (2, "onnx")  # it stands in for v2
    fast = stand_in.extra["upgrade"]()
    assert isinstance(fast.module, OrtModule) and fast.version == 2
    assert_same_answers(fast.predict(QUESTIONS), stand_in.predict(QUESTIONS))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            CompileOptions(output_format="onnx", dtype="bf16"),
            "fp32 graphs for ONNX Runtime on CPUs, not cpu bf16",
        ),
        (CompileOptions(output_format="onnx", quantize="int8"), "not cpu fp32 int8"),
        (CompileOptions(output_format="onnx", target="cuda"), "not cuda fp32"),
    ],
)
def test_what_onnx_does_not_offer_is_refused_before_any_work(
    tmp_path: Path, options: CompileOptions, message: str
) -> None:
    # an empty repository: the options are refused before the model is even looked up
    with pytest.raises(CompileError, match=message):
        compile_model(LocalRepository(tmp_path), "absent", options)
