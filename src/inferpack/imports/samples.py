"""Hugging Face-format model folders made offline with transformers: sources for the import tests, the
import benchmark, and for trying `inferpack models import` without a model of one's own.

Random-initialised small models of each supported architecture, with MiniLM's BERT vocabulary as their
tokenizer (a tokenizer.json, or only the slow tokenizer's vocab.txt), and fine-tunes of one base that
froze every layer but the top one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from inferpack.repository.demo import minilm_path

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
# IOB tags of a named-entity tagger (CoNLL-2003's entity types)
TAGS = dict(enumerate(("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")))


def bert_vocab_size() -> int:
    """Entries in MiniLM's BERT vocabulary (every sample model uses it)."""
    return len((minilm_path() / "vocab.txt").read_text().splitlines())


def make_config(arch: str, head: str, **extra: Any) -> Any:
    """A small random config of an architecture (vocabulary: MiniLM's BERT vocab)."""
    import transformers

    vocab = bert_vocab_size()
    shape = {**SMALL, **{k: v for k, v in extra.items() if k in SMALL}}
    common: dict[str, Any] = {"vocab_size": vocab, **{k: v for k, v in extra.items() if k not in SMALL}}
    if head in ("ForSequenceClassification", "ForTokenClassification"):
        names = LABELS if head == "ForSequenceClassification" else TAGS
        common.update(id2label=names, label2id={v: k for k, v in names.items()})
    if arch == "bert":
        return transformers.BertConfig(**shape, **common)
    if arch == "distilbert":
        return transformers.DistilBertConfig(
            dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128, **common
        )
    if arch == "roberta":
        return transformers.RobertaConfig(**shape, **{"type_vocab_size": 1, "pad_token_id": 0, **common})
    if arch == "xlm-roberta":
        return transformers.XLMRobertaConfig(**shape, **{"type_vocab_size": 1, "pad_token_id": 0, **common})
    if arch == "electra":
        return transformers.ElectraConfig(**shape, embedding_size=16, **common)
    if arch == "deberta-v2":
        return transformers.DebertaV2Config(
            **shape,
            type_vocab_size=0,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            **common,
        )
    raise ValueError(arch)


def make_folder(
    out: Path,
    arch: str = "bert",
    head: str = "ForQuestionAnswering",
    *,
    seed: int = 0,
    weights: str = "safetensors",
    tokenizer: str = "json",
    **extra: Any,
) -> Path:
    """A save_pretrained folder: a random `arch` model with `head` ("ForQuestionAnswering",
    "ForSequenceClassification", "ForTokenClassification" (IOB tags: `TAGS`) or "Model"), weights as
    safetensors or pytorch_model.bin, and the BERT tokenizer as tokenizer.json ("json") or only the slow
    tokenizer's vocab.txt ("vocab"), or ("sentencepiece", xlm-roberta and deberta-v2) only a small
    sentencepiece model trained here."""
    import transformers

    torch.manual_seed(seed)
    if tokenizer == "sentencepiece":
        extra = {"pad_token_id": 1, **extra}  # <pad> of XLM-R's and DeBERTa's sentencepiece vocabularies
    config = make_config(arch, head, **extra)
    cls = getattr(transformers, "AutoModel" if head == "Model" else f"AutoModel{head}")
    model = cls.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if weights == "bin":
        (out / "model.safetensors").unlink()
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    src = minilm_path()
    if tokenizer == "sentencepiece":
        _write_sentencepiece(out, arch)
    elif tokenizer == "json":
        shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
        shutil.copyfile(src / "tokenizer_config.json", out / "tokenizer_config.json")
    else:
        shutil.copyfile(src / "vocab.txt", out / "vocab.txt")
        cls_name = "DistilBertTokenizer" if arch == "distilbert" else "BertTokenizer"
        settings = {"tokenizer_class": cls_name, "do_lower_case": True, "model_max_length": 512}
        (out / "tokenizer_config.json").write_text(json.dumps(settings))
    return out


def copy_minilm(out: Path) -> Path:
    """Copy the real all-MiniLM-L6-v2 sentence-transformers folder to `out`."""
    shutil.copytree(minilm_path(), out)
    return out


def make_finetunes(base: Path, out: Path, count: int, *, prefix: str = "tenant") -> list[Path]:
    """`count` fine-tunes of a base folder that froze every layer but the top one: each copy has its
    own top encoder layer and task head (seeded noise), every other tensor identical to the base."""
    from safetensors.torch import load_file, save_file

    config = json.loads((base / "config.json").read_text())
    layers = int(config.get("num_hidden_layers") or config.get("n_layers"))
    tensors = load_file(str(base / "model.safetensors"))
    folders = []
    for i in range(count):
        gen = torch.Generator().manual_seed(1000 + i)
        tuned = {
            name: (t + 0.02 * torch.randn(t.shape, generator=gen) if _is_tuned(name, layers) else t)
            for name, t in tensors.items()
        }
        folder = out / f"{prefix}-{i:04d}"
        folder.mkdir(parents=True)
        save_file(tuned, str(folder / "model.safetensors"))
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            if (base / name).is_file():
                shutil.copyfile(base / name, folder / name)
        folders.append(folder)
    return folders


def _is_tuned(name: str, layers: int) -> bool:
    return f"layer.{layers - 1}." in name or name.startswith(
        ("qa_outputs.", "classifier.", "pre_classifier.")
    )


SPM_TEXT = (
    "Who won the race in Paris after a long day on the road?",
    "The museum is in Rome, near the river and the old market.",
    "On a clear day the sky is blue; at dusk it is red.",
    "What a lovely day for a walk; the parcel arrived broken and late.",
)
SPM_FILES = {
    "xlm-roberta": ("sentencepiece.bpe.model", "XLMRobertaTokenizer"),
    "deberta-v2": ("spm.model", "DebertaV2Tokenizer"),
}


def _write_sentencepiece(out: Path, arch: str) -> None:
    """Only a slow tokenizer: a tiny unigram sentencepiece model (trained here, offline) and its
    tokenizer_config.json, named as XLM-R and DeBERTa-v2 folders name them."""
    import io

    import sentencepiece  # type: ignore[import-untyped]

    name, tokenizer_class = SPM_FILES[arch]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_TEXT * 10),
        model_writer=model,
        vocab_size=60,
        hard_vocab_limit=False,
        model_type="unigram",
        minloglevel=2,
    )
    (out / name).write_bytes(model.getvalue())
    settings = {"tokenizer_class": tokenizer_class, "model_max_length": 512}
    (out / "tokenizer_config.json").write_text(json.dumps(settings))
