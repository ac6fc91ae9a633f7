"""Serving on the processor a version was compiled for: Neuron graphs through torch-neuronx (a stand-in
module here: the graph is a CPU trace at the fixed shape, which is what the server's padding must respect),
frozen TorchScript memory accounting, and CUDA (only where `torch.cuda.is_available()`)."""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

import pytest
import torch
from torch.jit._trace import TracerWarning

from inferpack.compile.compiler import compile_model
from inferpack.compile.options import CompileOptions
from inferpack.errors import DeviceUnavailable, ModelLoadFailed
from inferpack.runtime.memory import module_storages
from inferpack.runtime.modeling import build_eager, load_model
from inferpack.runtime.neuron import StaticShapeModule
from inferpack.runtime.tasks import TextInput

from .conftest import Compiled, RepoFactory

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
ITEMS = [
    TextInput("When does the museum close?", "The museum opens at nine and closes at five, not on Mondays."),
    TextInput("What is the weather?", "Rain."),
    TextInput(
        "What will the line link?",
        "After a long debate the council approved the new tram line, which will link the harbour, the "
        "university and the airport by 2031 at a cost of 1.2 billion euros.",
    ),
]


@pytest.fixture
def fake_torch_neuronx(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """torch_neuronx as the server and compiler use it: `trace` records a fixed-shape graph (on the CPU)."""
    module = types.ModuleType("torch_neuronx")

    def trace(model: Any, args: Any, compiler_args: list[str] | None = None) -> Any:
        assert compiler_args == ["--auto-cast", "none"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TracerWarning)
            return torch.jit.trace(model, args, check_trace=False)  # type: ignore[no-untyped-call]

    module.trace = trace  # type: ignore[attr-defined]
    module.__version__ = "0.0-test"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_neuronx", module)
    return module


def _same_answers(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    for e, g in zip(expected, got, strict=True):
        assert (g["answer"], g["start"], g["end"]) == (e["answer"], e["start"], e["end"])
        assert g["score"] == pytest.approx(e["score"], rel=1e-3)


@pytest.mark.usefixtures("fake_torch_neuronx")
def test_a_neuron_version_serves_batches_padded_to_its_traced_shape(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000")
    result = compile_model(repo, "qa-0000", CompileOptions(target="neuron"))
    manifest = repo.manifest("qa-0000", result.version)
    assert manifest.target == "neuron" and manifest.static_shape == (1, 128)
    served = load_model(repo, "qa-0000", device="neuron")  # the version policy picks the Neuron graph
    assert served.version == result.version and isinstance(served.module, StaticShapeModule)
    assert served.device == torch.device("cpu")  # Neuron graphs take host tensors
    assert module_storages(served.module) == {id(served.module): (result.path / "model.pt").stat().st_size}
    eager = load_model(repo, "qa-0000", 1, dtype="fp32")
    _same_answers(eager.predict(ITEMS), served.predict(ITEMS))  # 3 items of 3 widths, one at a time
    _same_answers(eager.predict(ITEMS[1:2]), served.predict(ITEMS[1:2]))


@pytest.mark.usefixtures("fake_torch_neuronx")
def test_a_neuron_tagger_cuts_its_per_token_output_back_to_the_batch(repo_copy: RepoFactory) -> None:
    repo = repo_copy("ner-0000")
    result = compile_model(repo, "ner-0000", CompileOptions(target="neuron"))
    served = load_model(repo, "ner-0000", device="neuron")
    assert served.version == result.version and isinstance(served.module, StaticShapeModule)
    items = [TextInput(item.text_pair or item.text) for item in ITEMS]
    batch = served.tokenizer.encode(items)
    out = served.forward(batch)  # traced at [1, 128]: padded to it, then cut back to the batch's width
    assert out.shape[:2] == batch.input_ids.shape and out.shape[2] == len(served.manifest.labels or [])
    eager = load_model(repo, "ner-0000", 1, dtype="fp32")
    for e, g in zip(eager.predict(items), served.predict(items), strict=True):
        spans = [(x["entity_group"], x["start"], x["end"]) for x in g["entities"]]
        assert spans == [(x["entity_group"], x["start"], x["end"]) for x in e["entities"]]
        assert [x["score"] for x in g["entities"]] == pytest.approx(
            [x["score"] for x in e["entities"]], rel=1e-3
        )


def test_static_shape_module_chunks_and_pads_rows_and_width(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000")
    manifest = repo.manifest("qa-0000", 1)
    eager = build_eager(repo.version_dir("qa-0000", 1), manifest)
    loaded = load_model(repo, "qa-0000", 1, dtype="fp32", warmup=False)
    example = loaded.tokenizer.encode(ITEMS[:2])
    width = 64
    fields = (example.input_ids, example.attention_mask, example.token_type_ids)
    args = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in fields]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", TracerWarning)
        graph = torch.jit.trace(eager, tuple(args), check_trace=False)  # type: ignore[no-untyped-call]
    static = StaticShapeModule(graph, 2, width, per_token=True)
    batch = loaded.tokenizer.encode(ITEMS)  # 3 rows: a full chunk of 2, then 1 padded with a copy
    with torch.inference_mode():
        expected = eager(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        got = static(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    assert got.shape == expected.shape
    real = batch.attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)
    too_wide = torch.ones(1, width + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds the traced width 64"):
        static(too_wide, too_wide, too_wide)


@pytest.mark.usefixtures("fake_torch_neuronx")
def test_a_neuron_server_refuses_what_it_cannot_run(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000")
    with pytest.raises(ModelLoadFailed, match="serves versions compiled for Neuron only") as e:
        load_model(repo, "qa-0000", device="neuron")
    assert e.value.hint is not None and "--target neuron" in e.value.hint
    result = compile_model(repo, "qa-0000", CompileOptions(target="cpu"))
    with pytest.raises(ModelLoadFailed, match="compiled for cpu, this server runs on neuron"):
        load_model(repo, "qa-0000", result.version, device="neuron")


def test_neuron_version_without_torch_neuronx_is_a_device_error(
    repo_copy: RepoFactory, fake_torch_neuronx: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_copy("qa-0000")
    compile_model(repo, "qa-0000", CompileOptions(target="neuron"))
    monkeypatch.setitem(sys.modules, "torch_neuronx", None)  # `import torch_neuronx` now fails
    with pytest.raises(DeviceUnavailable, match="needs torch-neuronx"):
        load_model(repo, "qa-0000", device="neuron")


def test_frozen_torchscript_weights_count_in_the_memory_ledger(fp32_compiled: Compiled) -> None:
    """Freezing turns weights into graph constants; the budget must still see them."""
    result = fp32_compiled.results["question-answering"]
    traced = load_model(fp32_compiled.repo, "qa-0000", result.version)
    eager = load_model(fp32_compiled.repo, "qa-0000", 1, dtype="fp32")
    held, weights = sum(module_storages(traced.module).values()), sum(module_storages(eager.module).values())
    assert held == pytest.approx(weights, rel=0.05)


# CUDA: run only where a GPU is visible (skipped here; counted in the test summary) ----------------------
@needs_cuda
def test_cuda_eager_model_computes_on_the_gpu_in_a_native_half_dtype(repo_copy: RepoFactory) -> None:
    from inferpack.runtime.hardware import cuda_native_bf16

    repo = repo_copy("qa-0000")
    gpu = load_model(repo, "qa-0000", 1, device="cuda:0")
    assert gpu.device.type == "cuda"
    assert gpu.dtype == (torch.bfloat16 if cuda_native_bf16("cuda:0") else torch.float16)
    assert all(t.device.type == "cuda" for t in gpu.module.parameters())  # type: ignore[attr-defined]
    before = torch.cuda.memory_allocated(0)
    held = sum(module_storages(gpu.module).values())
    assert 0 < held <= before  # the ledger measures device memory
    cpu = load_model(repo, "qa-0000", 1, dtype="fp32")
    for e, g in zip(cpu.predict(ITEMS), gpu.predict(ITEMS), strict=True):
        assert g["score"] == pytest.approx(e["score"], abs=0.05)


@needs_cuda
def test_cuda_compiled_version_is_chosen_and_served(repo_copy: RepoFactory) -> None:
    repo = repo_copy("qa-0000")
    result = compile_model(repo, "qa-0000", CompileOptions(target="cuda", dtype="fp32"))
    served = load_model(repo, "qa-0000", device="cuda", dtype="fp32")
    assert served.version == result.version and served.device.type == "cuda"
    assert sum(module_storages(served.module).values()) > 0
    eager = load_model(repo, "qa-0000", 1, dtype="fp32")
    _same_answers(eager.predict(ITEMS), served.predict(ITEMS))


@needs_cuda
def test_cuda_fp16_version_serves_a_fp16_server(repo_copy: RepoFactory) -> None:
    """The T4 path (g4dn): no bf16 tensor cores, so fp16 traces, chosen when the server computes fp16."""
    repo = repo_copy("qa-0000")
    result = compile_model(repo, "qa-0000", CompileOptions(target="cuda", dtype="fp16"))
    assert result.agreement.passed
    served = load_model(repo, "qa-0000", device="cuda:0", dtype="fp16")
    assert served.version == result.version and served.dtype == torch.float16
    cpu = load_model(repo, "qa-0000", 1, dtype="fp32")
    for e, g in zip(cpu.predict(ITEMS), served.predict(ITEMS), strict=True):
        assert g["score"] == pytest.approx(e["score"], abs=0.05)
