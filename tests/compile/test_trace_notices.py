"""Tracing a transformers model prints none of transformers' notices that say nothing about the graph."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from inferpack.compile.trace import jit_trace


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_records() -> Iterator[_Records]:
    """What transformers logs (its loggers do not propagate to the root, so caplog would not see it)."""
    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    # `warning_once` remembers what it printed in this process: forget it, so the notice can show here.
    hf_logging.warning_once.cache_clear()
    try:
        yield records
    finally:
        logger.removeHandler(records)


def test_tracing_a_bare_encoder_logs_no_loss_type_notice(transformers_records: _Records) -> None:
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config.return_dict = False  # a traced graph returns tuples
    model = BertModel(config)  # jit_trace puts it in eval mode
    ids = torch.ones(1, 5, dtype=torch.long)

    jit_trace(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), freeze=False)
    assert not [m for m in transformers_records.messages if "loss_type" in m]

    # The notice is silenced only while tracing: reading the property directly still logs it (which also
    # shows this handler would have seen it above). `warning_once` remembers the filtered record too.
    hf_logging.warning_once.cache_clear()
    _ = model.loss_function
    assert [m for m in transformers_records.messages if "loss_type" in m]
