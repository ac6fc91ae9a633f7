"""Imports of each supported kind of source, each checked against transformers by the importer itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from inferpack.errors import ImportFailed
from inferpack.imports.importer import Importer
from inferpack.imports.samples import make_folder
from inferpack.repository.local import LocalRepository
from inferpack.runtime.modeling import load_model
from inferpack.runtime.tasks import TextInput


@pytest.mark.parametrize(
    ("arch", "head", "task", "tokenizer"),
    [
        ("distilbert", "ForQuestionAnswering", "question-answering", "json"),
        ("roberta", "ForSequenceClassification", "text-classification", "json"),
        ("xlm-roberta", "Model", "feature-extraction", "json"),
        ("electra", "ForQuestionAnswering", "question-answering", "vocab"),
        ("deberta-v2", "ForSequenceClassification", "text-classification", "json"),
        ("deberta-v2", "ForQuestionAnswering", "question-answering", "json"),
        # taggers: no token types (DistilBERT), one token type (RoBERTa)
        ("distilbert", "ForTokenClassification", "token-classification", "vocab"),
        ("roberta", "ForTokenClassification", "token-classification", "json"),
        # only a sentencepiece slow tokenizer: converted to tokenizer.json at import
        ("xlm-roberta", "ForQuestionAnswering", "question-answering", "sentencepiece"),
        ("deberta-v2", "ForSequenceClassification", "text-classification", "sentencepiece"),
    ],
)
def test_each_encoder_architecture_imports_and_matches_transformers(
    arch: str, head: str, task: str, tokenizer: str, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / f"{arch}-src", arch, head, tokenizer=tokenizer)
    repo = LocalRepository(tmp_path / "repo")
    result = Importer(repo).import_source(str(folder), model_id=arch)
    assert result.task == task and result.version == 1
    assert result.agreement is not None and result.agreement.passed
    assert result.agreement.max_abs_diff <= 1e-4
    if tokenizer != "json":
        assert not (folder / "tokenizer.json").exists()  # converted: the repository holds one
    loaded = load_model(repo, arch, dtype="fp32")  # as a server loads it (warm-up forwards included)
    item = TextInput("Who won?", "Ann won the race.") if task == "question-answering" else TextInput("hi")
    assert loaded.predict([item, item])[0].keys()


def test_sharded_safetensors_and_a_new_version_on_reimport(tmp_path: Path) -> None:
    import transformers

    folder = make_folder(tmp_path / "src", "bert", "ForSequenceClassification")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="200KB")
    assert (folder / "model.safetensors.index.json").is_file()
    repo = LocalRepository(tmp_path / "repo")
    importer = Importer(repo)
    assert importer.import_source(str(folder)).version == 1
    assert importer.import_source(str(folder)).version == 2  # the same id again: a new version
    assert repo.versions("src") == [1, 2]
    assert repo.manifest("src", 2).labels == ["negative", "neutral", "positive"]


@pytest.mark.parametrize(("pooling", "normalize"), [("cls", False), ("max", True)])
def test_sentence_transformers_pooling_is_recorded_and_honoured(
    pooling: str, normalize: bool, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "st", "bert", "Model")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    modes = {f"pooling_mode_{m}": False for m in ("cls_token", "mean_tokens", "max_tokens")}
    modes[{"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}[pooling]] = True
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    repo = LocalRepository(tmp_path / "repo")
    result = Importer(repo).import_source(str(folder))
    manifest = repo.manifest("st")
    assert (manifest.task, manifest.pooling, manifest.normalize) == ("feature-extraction", pooling, normalize)
    assert result.agreement is not None and result.agreement.passed
    embedding = load_model(repo, "st", dtype="fp32").predict([TextInput("a short text")])[0]["embedding"]
    norm = float((embedding**2).sum() ** 0.5)
    assert (abs(norm - 1.0) < 1e-4) == normalize


def _hub_cache(root: Path, repo_id: str, source: Path) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/files}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    model_dir = root / ("models--" + repo_id.replace("/", "--"))
    (model_dir / "refs").mkdir(parents=True)
    (model_dir / "refs" / "main").write_text(revision)
    shutil.copytree(source, model_dir / "snapshots" / revision)
    return root


def test_hub_id_resolves_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "src", "bert", "ForQuestionAnswering")
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", "acme/tiny-qa", folder)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = LocalRepository(tmp_path / "repo")
    result = Importer(repo).import_source("acme/tiny-qa")
    assert (result.model_id, result.source) == ("tiny-qa", "hf://acme/tiny-qa")
    with pytest.raises(ImportFailed, match=r"not in the Hugging Face cache .* HF_HUB_OFFLINE is set"):
        Importer(repo).import_source("acme/not-there")


def test_torchscript_file_with_tokenizer_and_task(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "src", "bert", "ForQuestionAnswering")
    repo = LocalRepository(tmp_path / "repo")
    Importer(repo).import_source(str(folder), model_id="eager")
    eager = load_model(repo, "eager", dtype="fp32")
    batch = eager.tokenizer.encode([TextInput("Who?", "Ann won the race.")])
    traced = torch.jit.trace(eager.module, (batch.input_ids, batch.attention_mask, batch.token_type_ids))
    traced.save(str(tmp_path / "qa.pt"))
    with pytest.raises(ImportFailed, match="needs --tokenizer and --task"):
        Importer(repo).import_source(str(tmp_path / "qa.pt"))
    with pytest.raises(ImportFailed, match=r"returns \(3, \d+, 2\) .* not a text-classification output"):
        Importer(repo).import_source(
            str(tmp_path / "qa.pt"), tokenizer=folder / "tokenizer.json", task="text-classification"
        )
    result = Importer(repo).import_source(
        str(tmp_path / "qa.pt"), tokenizer=folder / "tokenizer.json", task="question-answering"
    )
    assert (result.model_id, repo.manifest("qa").format) == ("qa", "torchscript")
    items = [TextInput("Who won the race?", "After a long day, Ann won the race in Paris.")]
    assert (
        load_model(repo, "qa", dtype="fp32").predict(items)[0]["answer"] == eager.predict(items)[0]["answer"]
    )
