"""Reference computations for token tasks that several test folders check against (tests/ is on sys.path: its
conftest.py puts it there)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xlgm.core.types import TaggedSentence
from xlgm.data.tagging import tokenize_tagged, word_outputs
from xlgm.recipes.tokens import predict_row_logits


def word_margins(model, tokenizer, sentences: Sequence[TaggedSentence], max_length: int = 128) -> np.ndarray:
    """Each word's probability margin p(tag) - max_{other} p(other), from its first subword's logits (float64),
    in sentence then word order: what the margin measure averages on a token task."""
    data = tokenize_tagged(tokenizer, sentences, max_length)
    logits = np.concatenate(word_outputs(data, predict_row_logits(model, tokenizer, data))).astype(np.float64)
    tags = np.concatenate([s.tags for s in sentences])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    true = probs[np.arange(len(tags)), tags]
    probs[np.arange(len(tags)), tags] = -np.inf
    return true - probs.max(1)


def tiny_bert_tagger(vocab_size: int, num_labels: int, seed: int = 0, dropout: float = 0.0, positions: int = 80):
    """A random 2-layer BERT token classifier (hidden 16), in train mode: the objectives must keep it there and
    the measures must give it back so. `dropout` > 0 makes a forgotten eval mode show."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=positions,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    model = BertForTokenClassification(config)
    model.train()
    return model
