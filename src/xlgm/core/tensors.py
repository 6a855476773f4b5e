"""Tensor helpers the objectives, the measures and the stages share: a batch's model inputs, a forward pass to
logits, and the loss in at least float32.

Logits are [batch, num_labels] for a sequence classifier and [batch, length, num_labels] for a token
classifier (token tasks), whose labels are [batch, length] with -100 on every position that is not a word's
first subword (`xlgm.data.tagging`); torch's cross-entropy ignores -100, so the token loss is the mean over
the labelled words of the batch, as Hugging Face's own token-classification loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlgm.core.errors import XlgmError
from xlgm.core.types import Batch

# Keys of a batch that are not model inputs.
NON_MODEL_KEYS = ("labels", "idx")


def model_inputs(batch: Batch) -> Batch:
    """The batch without labels and bookkeeping, ready for `model(**...)`."""
    return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


def logits_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    """`model(**inputs).logits`, for Hugging Face sequence and token classifiers and anything returning `.logits`,
    a tuple whose first item is the logits, or the logits tensor itself."""
    out = model(**model_inputs(batch))
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if logits is None and isinstance(out, torch.Tensor):
        logits = out
    if logits is None or logits.dim() not in (2, 3):
        raise XlgmError(
            "the model must return classification logits of shape (batch, num_labels), or (batch, length, "
            "num_labels) for a token task"
        )
    return logits


def upcast(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch, in at least fp32 (logits may be fp16/bf16). Token logits [B, T, C] with
    labels [B, T]: the mean over the labelled positions (labels -100 are ignored)."""
    if logits.dim() == 3:
        return F.cross_entropy(upcast(logits).flatten(0, 1), labels.flatten())
    return F.cross_entropy(upcast(logits), labels)
