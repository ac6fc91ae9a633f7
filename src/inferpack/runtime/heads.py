"""Task heads: the wrappers that fix each task's output contract around a transformers module.

Every model, eager or TorchScript, is called as `module(input_ids, attention_mask, token_type_ids)` and
returns one tensor whose meaning the task fixes (see `inferpack.runtime.tasks`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from inferpack.repository.manifest import Pooling, Task


class TaskWrapper(nn.Module):
    """Base of the task wrappers: holds the transformers module as `model`.

    Architectures differ in the inputs they take: DistilBERT's forward has no `token_type_ids`, RoBERTa and
    XLM-R have one token type (type_vocab_size 1) and DeBERTa-v2 often none. The wrapper passes token types
    only to a model that takes them and has more than one, exactly as transformers' own tokenizers do for
    these models (their `model_input_names`); the others use their built-in zeros. The call signature stays
    `(input_ids, attention_mask, token_type_ids)` for every model, eager or traced.
    """

    model: nn.Module
    skeleton_key: str = ""  # the architecture, for reusing the shell (see SkeletonPool)
    own_keys: frozenset[str] = frozenset()  # state-dict keys its own weights file filled (not shared ones)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.token_types = takes_token_types(model)

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
        """The transformers module's outputs as a tuple."""
        if self.token_types:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=False,
            )
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)


def takes_token_types(model: nn.Module) -> bool:
    """True when the module's forward accepts token types and its config has more than one."""
    if "token_type_ids" not in inspect.signature(model.forward).parameters:
        return False
    return int(getattr(getattr(model, "config", None), "type_vocab_size", 0) or 0) > 1


class QAHead(TaskWrapper):
    """Start/end logits stacked as [batch, tokens, 2]."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        start, end = self.run(input_ids, attention_mask, token_type_ids)[:2]
        return torch.stack([start, end], dim=-1)


class ClassifierHead(TaskWrapper):
    """Class logits [batch, labels]; for a token classifier, per-token tag logits [batch, tokens, labels]
    (its head is a linear layer over every token's hidden state, like QA's)."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        return self.run(input_ids, attention_mask, token_type_ids)[0]


class Pooler(TaskWrapper):
    """A sentence embedding from the last hidden states, as sentence-transformers' Pooling (+ Normalize)
    modules compute it: `mean` over real tokens (the default), the `cls` token, or the `max` over real
    tokens; L2-normalised unless `normalize` is off. Pooling runs in fp32 whatever the compute dtype."""

    def __init__(self, model: nn.Module, pooling: Pooling = "mean", normalize: bool = True) -> None:
        super().__init__(model)
        self.pooling = pooling
        self.normalize = normalize

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        hidden = self.run(input_ids, attention_mask, token_type_ids)[0]
        # Pool and normalise in fp32 whatever the compute dtype: in bf16 the sum over tokens and the norm
        # lose ~3 significant digits (norms of 0.995-1.0015 instead of 1).
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        return pooled


def make_head(
    task: Task, model: nn.Module, *, pooling: Pooling = "mean", normalize: bool = True
) -> TaskWrapper:
    """The task's wrapper around a transformers module (pooling applies to feature-extraction only)."""
    if task == "question-answering":
        return QAHead(model)
    if task in ("text-classification", "token-classification"):
        return ClassifierHead(model)
    return Pooler(model, pooling, normalize)
