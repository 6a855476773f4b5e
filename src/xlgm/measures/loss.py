"""The loss helpers every measure shares: mean loss, error rate and full-data gradients over batches.

An *example* is what carries a label: a sentence pair, or in a token task (labels [batch, length], logits
[batch, length, C]) a word, i.e. a position whose label is not `IGNORE_INDEX` (a word's first subword,
`xlgm.data.tagging`). Every helper reads a batch's logits and labels through `labelled`, which keeps the
labelled positions of a token batch as rows, so a token measure is the sentence-pair measure over words.
All losses are the mean over *all examples* of all batches (batches of different sizes weigh by their size):

    L(w) = (1/N) sum_b sum_{i in b} CE(f_w(x_i), y_i),      err(w) = (1/N) #{i : argmax f_w(x_i) != y_i}

The loss is cross-entropy unless a `criterion(logits, labels) -> the batch's mean loss` is given; a batch
then weighs `n_b * criterion(...)`, so L is again the mean over all examples.

and the full-data gradient is the gradient of that L, i.e. sum_b (n_b / N) grad L_b. Passes that need no
gradient run under `torch.inference_mode()`. Every helper can count its passes in a `CostMeter`, in units of
one forward pass over the whole data set (a backward counts as two forwards), which is how the measures
report their cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xlgm.core.errors import XlgmError

# Re-exported: every measure runs its forward passes with these.
from xlgm.core.tensors import logits_of as logits_of
from xlgm.core.tensors import upcast as upcast
from xlgm.core.types import Batch as Batch
from xlgm.data.tagging import IGNORE_INDEX

# criterion(logits, labels) -> the batch's mean loss (a scalar tensor); None: cross-entropy.
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CostMeter:
    """Examples passed forward, backward, and through second-order backward passes (HVP, R-op)."""

    forward_examples: int = 0
    backward_examples: int = 0
    second_order_examples: int = 0  # a double backward / R-op pass, counted as 2 forward units like a backward

    def forward(self, n: int) -> None:
        self.forward_examples += n

    def backward(self, n: int) -> None:
        self.backward_examples += n

    def second_order(self, n: int) -> None:
        self.second_order_examples += n

    def summary(self, num_examples: int) -> dict[str, float]:
        n = max(num_examples, 1)
        return {
            "forward_passes": self.forward_examples / n,
            "backward_passes": self.backward_examples / n,
            "second_order_passes": self.second_order_examples / n,
            "forward_units": (self.forward_examples + 2 * self.backward_examples + 2 * self.second_order_examples) / n,
        }


@dataclass(frozen=True)
class LossAndError:
    loss: float  # mean loss (cross-entropy unless a criterion was given)
    error: float  # error rate in [0, 1]
    num_examples: int


# ---------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------


def labels_of(batch: Batch) -> torch.Tensor:
    """The batch's labels: class ids [batch], or a token batch's tags [batch, length] (`IGNORE_INDEX` where a
    position is not labelled)."""
    labels = batch.get("labels")
    if labels is None:
        raise XlgmError("this measure needs labelled data: a batch has no `labels`")
    if labels.dtype not in (torch.long, torch.int, torch.int32, torch.int64) or labels.dim() not in (1, 2):
        raise XlgmError(
            "labels must be integer class ids [batch], or a token task's tags [batch, length], got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    known = labels != IGNORE_INDEX if labels.dim() == 2 else torch.ones_like(labels, dtype=torch.bool)
    if bool((labels[known] < 0).any()):
        raise XlgmError("this measure needs labelled data: a batch has negative (missing) labels")
    if labels.dim() == 2 and not bool(known.any()):
        raise XlgmError("this measure needs labelled data: a token batch has no labelled word")
    return labels.long()


def labelled(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and labels of the batch's examples: unchanged for sentence pairs ([N, C], [N]); a token batch's
    labelled positions as rows, in row-major order ([B, T, C], [B, T] -> [words, C], [words])."""
    if labels.dim() == 1:
        return logits, labels
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise XlgmError(
            f"token labels {tuple(labels.shape)} need logits [batch, length, num_labels], got {tuple(logits.shape)}"
        )
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def batch_size(batch: Batch) -> int:
    """The batch's rows (sentence pairs, or a token task's sentences): its first dimension."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise XlgmError("a batch holds no tensor")


def num_examples(batch: Batch) -> int:
    """The batch's labelled examples: its rows, or a token batch's labelled words."""
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        return int((labels != IGNORE_INDEX).sum())
    return batch_size(batch)


def total_examples(batches: Sequence[Batch]) -> int:
    """The labelled examples of all batches (`num_examples`): the N every mean divides by."""
    return sum(num_examples(b) for b in batches)


def take_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The examples `rows` of a batch (every tensor indexed along its first dimension)."""
    return {
        k: v.index_select(0, rows.to(v.device)) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
        for k, v in batch.items()
    }


def subsample(batches: Sequence[Batch], fraction: float, generator: torch.Generator) -> list[Batch]:
    """A random `fraction` of the rows of every batch (at least one each; a token task's sentences), drawn with
    `generator`."""
    if fraction >= 1.0:
        return list(batches)
    out = []
    for batch in batches:
        n = batch_size(batch)
        k = max(1, round(fraction * n))
        perm = torch.randperm(n, generator=generator, device=generator.device)[:k].sort().values
        out.append(take_rows(batch, perm))
    return out


def single_rows(batches: Sequence[Batch]) -> Iterator[Batch]:
    """Every row (a sentence pair, or a token task's sentence) as a batch of one (padding kept, so the model
    sees the same input)."""
    for batch in batches:
        for i in range(batch_size(batch)):
            yield {k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------------------------------------


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, criterion: Criterion | None = None) -> torch.Tensor:
    """The batch's loss summed over its examples: cross-entropy, or `criterion`'s mean times the number of
    examples. Token logits and labels are reduced to their labelled words first (`labelled`)."""
    logits, labels = labelled(logits, labels)
    if criterion is None:
        return F.cross_entropy(logits, labels, reduction="sum")
    loss = criterion(logits, labels)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise XlgmError("criterion(logits, labels) must return a scalar tensor: the batch's mean loss")
    return loss.reshape(()) * labels.shape[0]


def logits_and_labels(
    model: nn.Module, batches: Sequence[Batch], meter: CostMeter | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All examples' logits (N x C, at least float32) and labels (N), concatenated over batches, without
    gradients."""
    all_logits, all_labels = [], []
    with torch.inference_mode():
        for batch in batches:
            logits, labels = labelled(upcast(logits_of(model, batch)), labels_of(batch))
            all_logits.append(logits)
            all_labels.append(labels)
            if meter is not None:
                meter.forward(labels.shape[0])
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(
    model: nn.Module, batches: Sequence[Batch], meter: CostMeter | None = None, criterion: Criterion | None = None
) -> LossAndError:
    """Mean loss (cross-entropy, or `criterion`) and error rate over all examples (inference mode, float64
    accumulation)."""
    total_loss = torch.zeros((), dtype=torch.float64)
    total_wrong = 0
    n = 0
    with torch.inference_mode():
        for batch in batches:
            logits, labels = labelled(upcast(logits_of(model, batch)), labels_of(batch))
            total_loss += summed_loss(logits, labels, criterion).double().cpu()
            total_wrong += int((logits.argmax(dim=-1) != labels).sum())
            n += labels.shape[0]
            if meter is not None:
                meter.forward(labels.shape[0])
    return LossAndError(float(total_loss) / n, total_wrong / n, n)


def mean_loss(
    model: nn.Module, batches: Sequence[Batch], meter: CostMeter | None = None, criterion: Criterion | None = None
) -> float:
    return evaluate(model, batches, meter, criterion).loss


def error_rate(model: nn.Module, batches: Sequence[Batch], meter: CostMeter | None = None) -> float:
    return evaluate(model, batches, meter).error


def loss_and_gradient(
    model: nn.Module,
    batches: Sequence[Batch],
    params: Sequence[torch.Tensor],
    meter: CostMeter | None = None,
    criterion: Criterion | None = None,
) -> tuple[LossAndError, list[torch.Tensor]]:
    """L(w), err(w) and the full-data gradient dL/dparams = sum_b (n_b/N) grad L_b (zeros where unused)."""
    n_total = total_examples(batches)
    grads = [torch.zeros_like(p) for p in params]
    total_loss = torch.zeros((), dtype=torch.float64)
    total_wrong = 0
    with torch.enable_grad(), sparse_embedding_gradients(model, params):
        for batch in batches:
            logits, labels = labelled(upcast(logits_of(model, batch)), labels_of(batch))
            loss_sum = summed_loss(logits, labels, criterion)
            parts = torch.autograd.grad(loss_sum / n_total, list(params), allow_unused=True)
            for g, part in zip(grads, parts):
                if part is not None:
                    g.add_(part)  # a sparse embedding gradient adds only its rows
            total_loss += loss_sum.detach().double().cpu()
            total_wrong += int((logits.detach().argmax(dim=-1) != labels).sum())
            if meter is not None:
                meter.forward(labels.shape[0])
                meter.backward(labels.shape[0])
    return LossAndError(float(total_loss) / n_total, total_wrong / n_total, n_total), grads


@contextlib.contextmanager
def sparse_embedding_gradients(model: nn.Module, params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Embedding tables among `params` return sparse (row) gradients while inside.

    A multilingual vocabulary makes the word-embedding table most of the parameters (96M of e5-small's 118M),
    yet a batch touches a few thousand rows: the dense gradient (zero-filled, then index-added) costs more
    than the rest of the backward pass. `nn.Embedding.sparse` switches the lookup's backward to a sparse COO
    gradient of the touched rows; the values are the same. Only for first-order gradients (the sparse
    backward is not twice differentiable); the flag is put back on exit.
    """
    wanted = {id(p) for p in params}
    switched = [m for m in model.modules() if isinstance(m, nn.Embedding) and not m.sparse and id(m.weight) in wanted]
    for m in switched:
        m.sparse = True
    try:
        yield
    finally:
        for m in switched:
            m.sparse = False


@contextlib.contextmanager
def double_backward_safe() -> Iterator[None]:
    """Force PyTorch's math attention kernel, the only `scaled_dot_product_attention` backend whose backward
    is itself differentiable (the flash/efficient kernels, on CPU too, raise on a double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield
