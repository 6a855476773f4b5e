"""Tokenize once, then serve length-bucketed, dynamically padded batches.

Padding every batch to a fixed 128 tokens wastes most of the compute on XNLI, whose pairs average well
under 64 pieces. Sorting by length before batching (evaluation), or within large shuffled pools
(training, so batches stay random), makes each batch as short as its longest member.
`transformers.DataCollatorWithPadding` does the padding.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from xlgm.data.tasks import Example

# Tokens a row is truncated to unless a command or spec says otherwise (training, evaluation and measures).
MAX_LENGTH = 128


@dataclass
class TokenizedSet:
    """Examples tokenized once: unpadded features per example, labels, and lengths."""

    features: list[dict[str, list[int]]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int = MAX_LENGTH
) -> TokenizedSet:
    """Tokenize sentence pairs in one batched call of the fast tokenizer."""
    enc = tokenizer([e.text_a for e in examples], [e.text_b for e in examples], truncation=True, max_length=max_length)
    keys = list(enc.keys())
    features = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
    return TokenizedSet(features, [e.label for e in examples])


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation order: indices sorted by length, longest first (a too-big batch fails at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def bucketed_shuffled_batches(
    lengths: Sequence[int], batch_size: int, seed: int, pool_batches: int = 50
) -> list[list[int]]:
    """Training order: shuffle, sort within pools of `pool_batches` batches by length, shuffle batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


class BatchCollator:
    """Index lists -> padded tensor batches with `labels` and `idx` (the row in the tokenized set)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, data: TokenizedSet, pad_to_multiple_of: int | None = None):
        self.data = data
        # Padding pre-tokenized features is what we want here; silence the "use __call__" hint.
        getattr(tokenizer, "deprecation_warnings", {})["Asking-to-pad-a-fast-tokenizer"] = True
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = self.pad([self.data.features[i] for i in indices])
        batch["labels"] = torch.tensor([self.data.labels[i] for i in indices], dtype=torch.long)
        batch["idx"] = torch.tensor(list(indices), dtype=torch.long)
        return dict(batch)


def iterate_batches(
    collator: BatchCollator, batches: Sequence[Sequence[int]], device: torch.device | str | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    for indices in batches:
        batch = collator(indices)
        yield {k: v.to(device) for k, v in batch.items()} if device is not None else batch
