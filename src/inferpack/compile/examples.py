"""The inputs a compile run traces with and checks against: one representative example, held-out checks.

The trace example and the check batches differ on purpose. `torch.jit.trace` records one run; anything the
model decided in Python from that run's shapes or values (a mask skipped because nothing was padded, a
length baked in as a constant) is frozen into the graph. Checking on *other* lengths and batch sizes, with
and without padding, is what catches such a trace before it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inferpack.runtime.tasks import Encoded, TextInput, TextTokenizer

# The trace example: two items of clearly different lengths, so the batch is padded and the attention mask
# takes part in the recorded graph (a batch without padding lets a model skip the mask entirely).
_TRACE_TEXTS = (
    (
        "Which river flows through the city?",
        "The city grew up on both banks of a wide river that flows north to the sea; its old port handled "
        "grain, timber and wool for three centuries before the railway arrived.",
    ),
    ("Who wrote it?", "An unknown monk wrote the chronicle."),
)

# Held-out checks: lengths and batch sizes the trace never saw, including a single short item (no padding),
# a text cut at the maximum sequence length, and a batch of five mixed lengths.
_CHECK_BATCHES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("Is it open?", "Yes."),),
    (
        (
            "What does the report conclude about costs?",
            " ".join(
                f"Section {i} says that the cost of serving each tenant falls when models share machines."
                for i in range(40)
            ),
        ),
    ),
    (
        ("Where is the station?", "The station is two streets east of the market square."),
        ("When?", "Tomorrow at noon, weather permitting, the ferry leaves from pier four."),
        ("How many?", "Seven."),
    ),
    (
        ("Name the author.", "The novel was written by a retired engineer living by the coast."),
        ("What colour is the sky?", "On a clear day the sky looks blue because air scatters short waves."),
        ("Price?", "It costs twelve euros, or ten with a student card, at the main desk."),
        (
            "Why did the bridge close?",
            "Engineers closed the bridge after inspectors found cracks in two of its steel supports, and "
            "traffic was sent over the old stone bridge upstream until repairs were finished in spring.",
        ),
        ("Which year?", "In 1998."),
    ),
)


@dataclass(frozen=True)
class ExampleSet:
    """The encoded trace example, the encoded held-out check batches, and the check batches' items (to
    decode answers from outputs)."""

    trace: Encoded
    checks: tuple[Encoded, ...]
    check_items: tuple[list[TextInput], ...]


def _items(pairs: tuple[tuple[str, str], ...], pair_input: bool) -> list[TextInput]:
    # Single-text tasks see the longer text of each pair, so their lengths vary as much as QA's.
    return [TextInput(q, c) if pair_input else TextInput(c) for q, c in pairs]


def build_examples(tokenizer: TextTokenizer, pair_input: bool) -> ExampleSet:
    """Encode the trace example and the check batches with the model's own tokenizer."""
    trace = tokenizer.encode(_items(_TRACE_TEXTS, pair_input))
    items = tuple(_items(batch, pair_input) for batch in _CHECK_BATCHES)
    return ExampleSet(trace=trace, checks=tuple(tokenizer.encode(i) for i in items), check_items=items)


def pad_to(batch: Encoded, width: int) -> Encoded:
    """Pad (never cut) a batch to a fixed width: static-shape targets (Neuron) take one shape only."""
    extra = width - int(batch.input_ids.shape[1])
    if extra < 0:
        raise ValueError(f"batch is {batch.input_ids.shape[1]} tokens wide, over the fixed width {width}")

    def grow(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, extra), value=0)

    return Encoded(
        grow(batch.input_ids), grow(batch.attention_mask), grow(batch.token_type_ids), batch.encodings
    )


def model_args(batch: Encoded, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positional arguments every inferpack model takes, on a device."""
    return (
        batch.input_ids.to(device),
        batch.attention_mask.to(device),
        batch.token_type_ids.to(device),
    )


def one_by_one(batches: tuple[Encoded, ...], width: int) -> tuple[Encoded, ...]:
    """Split batches into single items padded to `width`: the check set for a static-shape (batch 1) trace."""
    out: list[Encoded] = []
    for batch in batches:
        for row in range(int(batch.input_ids.shape[0])):
            single = Encoded(
                batch.input_ids[row : row + 1],
                batch.attention_mask[row : row + 1],
                batch.token_type_ids[row : row + 1],
                batch.encodings[row : row + 1],
            )
            out.append(pad_to(single, width))
    return tuple(out)
