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
