"""compile_model on real (tiny-count) MiniLM demo models: trace, check, store, refuse."""

from __future__ import annotations

import pytest
import torch

import inferpack.compile.agreement as agreement
import inferpack.compile.compiler as compiler
from inferpack.compile.agreement import Tolerance
from inferpack.compile.compiler import compile_model
from inferpack.compile.options import CompileOptions
from inferpack.errors import CompileError
from inferpack.repository.manifest import write_manifest
from inferpack.runtime.heads import TaskWrapper

from .conftest import MODELS, Compiled, RepoFactory


@pytest.mark.parametrize("task", list(MODELS))
def test_fp32_trace_agrees_with_eager(fp32_compiled: Compiled, task: str) -> None:
    result = fp32_compiled.results[task]
    a = result.agreement
    assert a.passed
    assert a.max_abs_diff <= a.tolerance
    assert a.cosine > 0.99999
    assert result.trace_fidelity.passed
    assert (result.source_version, result.version, result.variant) == (1, 2, "fp32")
    # Every decoded answer (QA span, label, entities) is unchanged; embeddings have no discrete answer.
    assert result.same_answers == (None if task == "feature-extraction" else 1.0)


@pytest.mark.parametrize("task", list(MODELS))
def test_new_version_has_a_correct_manifest(fp32_compiled: Compiled, task: str) -> None:
    repo, result = fp32_compiled.repo, fp32_compiled.results[task]
    model_id = MODELS[task]
    assert repo.versions(model_id) == [1, 2]
    source, new = repo.manifest(model_id, 1), repo.manifest(model_id, 2)
    assert new.format == "torchscript"
    assert new.weights == "model.pt" and (result.path / "model.pt").is_file()
    assert (new.dtype, new.quantization, new.target) == ("fp32", "none", "cpu")
    assert new.compiled_from == 1
    assert new.agreement == result.agreement
    assert new.hidden_size == 384
    assert (new.task, new.labels, new.max_sequence_length) == (source.task, source.labels, 128)
    # The tokenizer reference, re-pointed from the new folder, reaches the very same shared file.
    assert repo.resolve_file(model_id, 2, new.tokenizer) == repo.resolve_file(model_id, 1, source.tokenizer)
    assert new.config is not None and repo.resolve_file(model_id, 2, new.config).is_file()
    assert new.footprint is None  # a footprint is measured by a real load, never copied


def test_bf16_is_within_its_tolerance_and_really_bf16(qa_variants: Compiled, fp32_compiled: Compiled) -> None:
    fp32, bf16 = fp32_compiled.results["question-answering"], qa_variants.results["bf16"]
    assert bf16.agreement.passed
    assert 0.0 < bf16.agreement.max_abs_diff <= bf16.agreement.tolerance
    assert bf16.agreement.cosine > 0.999
    manifest = qa_variants.repo.manifest("qa-0000", bf16.version)
    assert (manifest.dtype, manifest.quantization) == ("bf16", "none")
    loaded = torch.jit.load(str(bf16.path / "model.pt"))  # type: ignore[no-untyped-call]
    dtypes = {t.dtype for t in loaded.state_dict().values()} | {
        t.dtype for t in _constants(loaded) if t.is_floating_point()
    }
    assert torch.bfloat16 in dtypes and torch.float32 not in dtypes
    # Half the bytes of fp32 weights (integer buffers and the pickle framing make it a bit more).
    assert (bf16.path / "model.pt").stat().st_size < 0.6 * (fp32.path / "model.pt").stat().st_size


def test_int8_reports_its_larger_disagreement(qa_variants: Compiled) -> None:
    bf16, int8 = qa_variants.results["bf16"].agreement, qa_variants.results["int8"].agreement
    manifest = qa_variants.repo.manifest("qa-0000", qa_variants.results["int8"].version)
    assert (manifest.dtype, manifest.quantization) == ("fp32", "int8-dynamic")
    assert manifest.agreement == int8
    assert int8.max_abs_diff > 3 * bf16.max_abs_diff
    assert int8.cosine < bf16.cosine
    # The share of unchanged answers is reported as measured (int8 moves some QA spans on these
    # untrained heads, whose logits are nearly flat); bf16 must not be worse than int8 at it.
    int8_same, bf16_same = qa_variants.results["int8"].same_answers, qa_variants.results["bf16"].same_answers
    assert int8_same is not None and bf16_same is not None
    assert 0.0 <= int8_same <= bf16_same <= 1.0
    assert qa_variants.results["int8"].trace_fidelity.passed  # tracing itself lost nothing
    assert qa_variants.repo.versions("qa-0000") == [1, 2, 3]


def test_each_compile_is_a_new_version_from_the_latest_safetensors(qa_variants: Compiled) -> None:
    assert [r.version for r in qa_variants.results.values()] == [2, 3]
    assert {r.source_version for r in qa_variants.results.values()} == {1}


def test_compiling_a_torchscript_version_is_refused(qa_variants: Compiled) -> None:
    with pytest.raises(CompileError, match="already torchscript"):
        compile_model(qa_variants.repo, "qa-0000", CompileOptions(source_version=2))
    assert qa_variants.repo.versions("qa-0000") == [1, 2, 3]


def test_failed_agreement_stores_nothing_unless_forced(
    repo_copy: RepoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_copy("emb-0000")
    # A bound nothing can meet (cosine above 1): the check must refuse and leave no version behind.
    monkeypatch.setitem(agreement.TOLERANCES, "fp32", Tolerance(relative=1e-3, min_cosine=1.5))
    with pytest.raises(CompileError, match="disagrees with eager fp32") as info:
        compile_model(repo, "emb-0000", CompileOptions())
    assert info.value.hint is not None and "--force" in info.value.hint
    assert repo.versions("emb-0000") == [1]
    assert sorted(p.name for p in (repo.root / "emb-0000").iterdir()) == ["1"]

    forced = compile_model(repo, "emb-0000", CompileOptions(force=True))
    stored = repo.manifest("emb-0000", forced.version).agreement
    assert stored is not None and not stored.passed


def test_a_trace_that_bakes_in_values_is_caught(
    repo_copy: RepoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose Python reads a tensor value traces to a constant: right on the example only."""
    repo = repo_copy("cls-0000")
    from inferpack.runtime.skeletons import build_eager as real_build

    class CountsTokens(TaskWrapper):
        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            logits: torch.Tensor = self.model(ids, mask, types)
            return logits + float(mask.sum()) * 1e-3  # float(): a Python value, frozen by the tracer

    def build(version_dir: object, manifest: object) -> TaskWrapper:
        return CountsTokens(real_build(version_dir, manifest))  # type: ignore[arg-type]

    monkeypatch.setattr(compiler, "build_eager", build)
    # Refused even with --force: a wrong trace answers wrongly on other shapes.
    with pytest.raises(CompileError, match="does not reproduce its eager fp32 outputs"):
        compile_model(repo, "cls-0000", CompileOptions(force=True))
    assert repo.versions("cls-0000") == [1]


def test_a_failure_while_writing_removes_the_half_version(
    repo_copy: RepoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_copy("cls-0000")
    import inferpack.compile.store as store

    def broken_write(path: object, manifest: object) -> None:
        raise OSError("disk full")

    # model.pt is on disk by the time the manifest is written: the worst moment to fail.
    monkeypatch.setattr(store, "write_manifest", broken_write)
    with pytest.raises(OSError, match="disk full"):
        compile_model(repo, "cls-0000", CompileOptions())
    assert sorted(p.name for p in (repo.root / "cls-0000").iterdir()) == ["1"]


def test_a_private_tokenizer_is_copied_into_the_new_version(repo_copy: RepoFactory) -> None:
    repo = repo_copy("emb-0000")
    source = repo.manifest("emb-0000", 1)
    shared = repo.resolve_file("emb-0000", 1, source.tokenizer)
    (repo.version_dir("emb-0000", 1) / "tokenizer.json").write_bytes(shared.read_bytes())
    write_manifest(
        repo.version_dir("emb-0000", 1) / "manifest.json",
        source.model_copy(update={"tokenizer": "tokenizer.json"}),
    )
    result = compile_model(repo, "emb-0000", CompileOptions())
    new = repo.manifest("emb-0000", result.version)
    assert new.tokenizer == "tokenizer.json"
    assert (result.path / "tokenizer.json").read_bytes() == shared.read_bytes()


def test_neuron_without_the_sdk_fails_clearly(repo_copy: RepoFactory) -> None:
    try:
        import torch_neuronx  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - only on a Neuron machine
        pytest.skip("the Neuron SDK is installed here")
    repo = repo_copy("qa-0000")
    with pytest.raises(CompileError, match="Neuron SDK") as info:
        compile_model(repo, "qa-0000", CompileOptions(target="neuron"))
    assert "torch-neuronx" in info.value.message
    assert repo.versions("qa-0000") == [1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: cuda tracing would work")
def test_cuda_without_a_gpu_fails_clearly(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000")
    with pytest.raises(CompileError, match="needs a visible NVIDIA GPU"):
        compile_model(repo, "qa-0000", CompileOptions(target="cuda"))
    assert repo.versions("qa-0000") == [1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (CompileOptions(dtype="bf16", quantize="int8"), "cannot be combined with --dtype bf16"),
        (CompileOptions(target="neuron", quantize="int8"), "runs on CPUs only"),
        (CompileOptions(dtype="fp16"), "fp16 is for GPUs without bf16"),
        # casts (compile --format safetensors) that make no sense
        (CompileOptions(output_format="safetensors"), "fp32 is not one"),
        (CompileOptions(output_format="safetensors", quantize="int8"), "int8 is not one"),
        (CompileOptions(output_format="safetensors", dtype="bf16", target="neuron"), "compiled graphs only"),
    ],
)
def test_impossible_combinations_are_refused(
    repo_copy: RepoFactory, options: CompileOptions, message: str
) -> None:
    repo = repo_copy("qa-0000")
    with pytest.raises(CompileError, match=message):
        compile_model(repo, "qa-0000", options)
    assert repo.versions("qa-0000") == [1]


def _constants(module: torch.jit.ScriptModule) -> list[torch.Tensor]:
    """Tensors a frozen graph holds as constants instead of parameters."""
    found: list[torch.Tensor] = []
    for node in module.graph.nodes():
        if node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType":
            value = node.output().toIValue()
            assert isinstance(value, torch.Tensor)
            found.append(value)
    return found


def test_a_left_over_half_version_is_reported_not_overwritten(repo_copy: RepoFactory) -> None:
    repo = repo_copy("cls-0000")
    stale = repo.root / "cls-0000" / "2"
    stale.mkdir()  # what a compile killed with SIGKILL mid-write leaves: a folder without a manifest
    (stale / "model.pt").write_bytes(b"partial")
    with pytest.raises(CompileError, match="already exists without a manifest"):
        compile_model(repo, "cls-0000", CompileOptions())
    assert (stale / "model.pt").read_bytes() == b"partial"
    assert repo.versions("cls-0000") == [1]
