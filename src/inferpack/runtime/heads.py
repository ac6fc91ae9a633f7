"""Task heads: the wrappers that fix each task's output contract around a transformers module.

Every model, eager or TorchScript, is called as `module(input_ids, attention_mask, token_type_ids)` and
returns one tensor whose meaning the task fixes (see `inferpack.runtime.tasks`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from inferpack.repository.manifest import Task


class TaskWrapper(nn.Module):
    """Base of the task wrappers: holds the transformers module as `model`."""

    model: nn.Module
    skeleton_key: str = ""  # the architecture, for reusing the shell (see SkeletonPool)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class QAHead(TaskWrapper):
    """Start/end logits stacked as [batch, tokens, 2]."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        start, end = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=False,
        )[:2]
        return torch.stack([start, end], dim=-1)


class ClassifierHead(TaskWrapper):
    """Class logits [batch, labels]."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=False,
        )[0]


class MeanPooler(TaskWrapper):
    """Mean of the last hidden states over real tokens, L2-normalised (sentence-transformers style), in
    fp32."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=False,
        )[0]
        # Pool and normalise in fp32 whatever the compute dtype: in bf16 the sum over tokens and the norm
        # lose ~3 significant digits (norms of 0.995-1.0015 instead of 1).
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)


WRAPPERS: dict[Task, type[TaskWrapper]] = {
    "question-answering": QAHead,
    "text-classification": ClassifierHead,
    "feature-extraction": MeanPooler,
}
