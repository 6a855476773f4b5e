"""Tiny models and fixed data for the measure tests (imported by the test files and conftest.py).

- a random tiny BERT classifier (vocab 100, hidden 16, 2 layers, 2 heads, FFN 32) with dropout 0.2, so that a
  measure that forgets eval mode gives a different (and non-deterministic) value;
- `TwoParamLogistic`: binary logistic regression with 2 weights (brute-force searches on a grid);
- `LinearSoftmax`: multinomial logistic regression, whose Hessian and Fisher have closed forms;
- `TableModel`: returns fixed logits (times one scalar parameter), for hand-computed margins.

All return objects with `.logits`, as Hugging Face classifiers do.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

NUM_LABELS = 3


def make_tiny_bert(seed: int = 0, dropout: float = 0.2) -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=NUM_LABELS,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    torch.set_rng_state(gen_state)
    return model


def make_bert_batches(seed: int = 0, sizes=(6, 4), lengths=(10, 7)) -> list[dict[str, torch.Tensor]]:
    """Fixed random batches with padding, token types, labels and idx."""
    gen = torch.Generator().manual_seed(seed)
    batches, start = [], 0
    for size, length in zip(sizes, lengths):
        ids = torch.randint(5, 100, (size, length), generator=gen)
        ids[:, 0] = 2
        mask = torch.ones(size, length, dtype=torch.long)
        for row in range(1, size, 2):  # every other example is shorter, padded with 0
            cut = length - 1 - row % 3
            ids[row, cut:] = 0
            mask[row, cut:] = 0
        types = torch.zeros(size, length, dtype=torch.long)
        types[:, length // 2 :] = 1
        labels = torch.randint(0, NUM_LABELS, (size,), generator=gen)
        batches.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": types,
                "labels": labels,
                "idx": torch.arange(start, start + size),
            }
        )
        start += size
    return batches


class TwoParamLogistic(nn.Module):
    """logits = [0, x · w] with w in R²: CE(w) = softplus(s) - y s, s = x · w (convex in w)."""

    def __init__(self, w=(0.8, -0.5)):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, features):
        s = features @ self.w
        return SequenceClassifierOutput(logits=torch.stack([torch.zeros_like(s), s], dim=-1))


def two_param_loss(w: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean CE of TwoParamLogistic for many weight vectors at once: w (G, 2) -> (G,)."""
    s = w @ features.T  # (G, N)
    return (torch.nn.functional.softplus(s) - labels.to(s.dtype) * s).mean(dim=1)


def two_param_batches(seed: int = 1, n: int = 12) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    noise = 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    y = (x @ torch.tensor([1.0, -1.0], dtype=torch.float64) + noise > 0).long()
    half = n // 2
    return [{"features": x[:half], "labels": y[:half]}, {"features": x[half:], "labels": y[half:]}]


class LinearSoftmax(nn.Module):
    """logits = x Wᵀ + b (multinomial logistic regression)."""

    def __init__(self, dim: int = 4, classes: int = 3, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(dim, classes, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(classes, dim, generator=gen, dtype=torch.float64))
            self.linear.bias.copy_(0.3 * torch.randn(classes, generator=gen, dtype=torch.float64))

    def forward(self, features):
        return SequenceClassifierOutput(logits=self.linear(features))


def linear_batches(seed: int = 2, n: int = 10, dim: int = 4, classes: int = 3) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return [{"features": x[:6], "labels": y[:6]}, {"features": x[6:], "labels": y[6:]}]


class TableModel(nn.Module):
    """Fixed logits per example: logits = scale * table[row]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.scale = nn.Parameter(torch.ones((), dtype=table.dtype))

    def forward(self, row):
        return SequenceClassifierOutput(logits=self.scale * self.table[row])
