"""`fisher`: Fisher Penalty (Jastrzebski, Arpit, Åstrand, Kerg, Wang, Xiong, Socher, Cho & Geras,
"Catastrophic Fisher Explosion: Early Phase Fisher Matrix Impacts Generalization", ICML 2021).

The loss is

    CE(f(x), y) + λ · ‖∇θ CE(f(x'), ŷ)‖²,     ŷ ~ p_θ(· | x')  (sampled, not the true labels)

where x' is the micro-batch or its first `sub_batch` examples: the squared norm of the mini-batch
gradient with labels drawn from the model's own predictive distribution, the paper's cheap proxy for the
trace of the Fisher information. The penalty is differentiated by double back-propagation: the inner
gradient is taken with `create_graph=True` and the total is back-propagated once with `ctx.backward`.

Options (all only active with `--objective fisher`):

* `lam` (`--fisher-lambda`, default 0.1): λ above, the penalty weight (α in the paper), which the paper
  tunes per setting. The authors of the cross-lingual study add `w · ‖∇ CE(ŷ)‖² / B` to the loss, with B
  the per-device batch (`fisher_penalty_weight * gr_norm_sq / self.args.train_batch_size` in
  `BaseTrainer.compute_loss` of github.com/sakshambassi/hf-sharpness, `nlpsharpness/trainer.py`; their
  XNLI script sets w = 1e-3 at B = 16), where the gradient is that of the mean cross-entropy over the
  micro-batch, as here. So λ = w / B: the default λ 0.1 is w = 3.2 at B = 32, about 3,000 times their
  w = 1e-3, and their setting is λ = 1e-3 / 32 ≈ 3.1e-5 at B = 32. λ = 0 is plain cross-entropy.
* `weight` (`--fisher-weight`): the authors' w instead of λ (give one or the other); λ = w / B, B the
  micro-batch per device (`--batch-size`), which the objective gets as its `batch_size` argument
  (`build_objective("fisher", batch_size=...)`, from the training loop). With `sub_batch` the penalty is
  on m < B examples, and λ is still w / B.
* `sub_batch` (`--fisher-sub-batch`, default: the whole micro-batch): compute the penalty on the first m
  examples only, to save time. With m smaller than the micro-batch an extra forward pass on the m
  examples is run, so only that part is double-differentiated. Note that ‖mean gradient‖² shrinks with
  the batch it is averaged over (its noise part ∝ 1/m), so the effective strength of λ depends on m.
* `every` (`--fisher-every`, default 1): apply the penalty on optimizer steps where step % every == 0,
  to save time; other steps are plain cross-entropy, and the penalty is not rescaled by `every`.

Cost: double back-propagation is inherently about 3x an AdamW step (a linear layer's matmuls: 1 forward
+ 2 inner backward + 6 outer backward, against 1 + 2), whatever the implementation; `sub_batch` and
`every` are the ways to pay less.

With gradient accumulation each micro-batch computes its own penalty on its own (sub-)batch and its
share is scaled by `ctx.loss_scale`: the step's penalty is the mean of per-micro-batch penalties, not the
penalty of the whole batch's mean gradient. Under DDP the penalty is per rank and its gradient is
all-reduced with the rest (the inner `autograd.grad` never touches `.grad`, so DDP's hooks see one
backward); the extra sub-batch forward runs under `ctx.no_sync`.

Token tasks (logits [B, T, C]): ŷ is drawn at the labelled positions only, each word's first subword (where
the labels are not -100), and is -100 elsewhere, so CE(f(x'), ŷ) is the mean over the same words as the loss.

Attention kernels: the fused SDPA kernels (flash / memory-efficient, on CPU and CUDA) have no double
backward, so the forward whose graph is differentiated twice runs under the SDPA math backend.

Mixed precision: under fp16 the inner loss is multiplied by the GradScaler's scale before the inner
gradient and the penalty divided by scale² (in fp32); an overflow makes the total non-finite and the
GradScaler skips the step. bf16 needs nothing special.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, flag_label, option
from xlgm.data.tagging import IGNORE_INDEX
from xlgm.objectives.base import StepContext
from xlgm.objectives.common import (
    cross_entropy,
    grad_scale,
    logits_of,
    trainable_parameters,
    upcast,
)
from xlgm.objectives.registry import register_objective


def math_attention():
    """A context in which scaled_dot_product_attention uses the (twice differentiable) math backend."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    return sdpa_kernel([SDPBackend.MATH])


def sample_labels(
    logits: torch.Tensor, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """ŷ_i ~ softmax(logits_i), drawn with `generator` (on the generator's device), no gradient. Token logits
    [B, T, C] need the true `labels` [B, T]: ŷ is drawn where they are not IGNORE_INDEX and is IGNORE_INDEX
    elsewhere."""
    if logits.dim() == 3:
        if labels is None:
            raise ValueError("sampling token labels needs the true labels, to find the labelled positions")
        mask = labels != IGNORE_INDEX
        sampled = torch.full_like(labels, IGNORE_INDEX)
        sampled[mask] = sample_labels(logits[mask], generator)
        return sampled
    probs = torch.softmax(logits.detach().float(), dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def gradient_norm_penalty(loss: torch.Tensor, params: Sequence[torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """‖∇_params loss‖², differentiable (create_graph=True); `scale` is the fp16 loss scale to undo."""
    target = loss * scale if scale != 1.0 else loss
    grads = torch.autograd.grad(target, params, create_graph=True, allow_unused=True)
    squares = [upcast(g).pow(2).sum() for g in grads if g is not None]
    if not squares:
        return loss.new_zeros((), dtype=torch.float32)
    penalty = torch.stack([s.to(squares[0].device) for s in squares]).sum()
    if scale != 1.0:
        penalty = penalty / (scale * scale)
    return penalty


DEFAULT_LAMBDA = 0.1


@dataclass(frozen=True)
class FisherConfig:
    # None: DEFAULT_LAMBDA, unless `weight` is given
    lam: float | None = field(
        default=None,
        metadata=option(
            "--fisher-lambda",
            "fisher: λ in CE + λ·‖∇CE(ŷ)‖², the gradient of the mean loss over the micro-batch "
            f"(default {DEFAULT_LAMBDA}). The cross-lingual study's authors write the penalty as w·‖∇CE(ŷ)‖²/B "
            "with B the micro-batch per device (--batch-size), so λ = w/B: 0.1 is w = 3.2 at --batch-size 32; "
            "their w = 1e-3 is λ ≈ 3.1e-5 at 32",
            exclusive="fisher-weight",
            rule=validation.non_negative_number,
        ),
    )
    # None: the whole micro-batch
    sub_batch: int | None = field(
        default=None,
        metadata=option(
            "--fisher-sub-batch", "fisher: penalty on the first m examples (all)", rule=validation.optional_count
        ),
    )
    every: int = field(
        default=1, metadata=option("--fisher-every", "fisher: penalty every k optimizer steps", rule=validation.count)
    )
    # the authors' w; λ = w / B, B the micro-batch per device
    weight: float | None = field(
        default=None,
        metadata=option(
            "--fisher-weight",
            "fisher: the penalty weight in the authors' convention, w (their XNLI script's is "
            "1e-3); λ = w / --batch-size. Not with --fisher-lambda",
            exclusive="fisher-weight",
            rule=validation.non_negative_number,
        ),
    )

    def __post_init__(self):
        if self.lam is not None and self.weight is not None:
            raise XlgmError(
                "give the Fisher penalty weight once: lam (--fisher-lambda) or weight "
                "(--fisher-weight, the authors' w = lam x batch size), not both"
            )
        if self.weight is None and self.lam is None:
            object.__setattr__(self, "lam", DEFAULT_LAMBDA)
        check_fields(self, label=flag_label(type(self)), store=True)

    def penalty_weight(self, batch_size: int | None) -> float:
        """λ, the weight on ‖∇CE(ŷ)‖² of the mean loss: `lam`, or the authors' w over the micro-batch size."""
        if self.weight is None:
            return self.lam  # type: ignore[return-value]
        if batch_size is None:
            raise XlgmError(
                "weight (--fisher-weight) is the authors' w = lam x batch size: the objective needs "
                "the micro-batch size per device to use it"
            )
        return self.weight / validation.count("batch size (--batch-size)", batch_size)


@register_objective
class FisherObjective:
    name = "fisher"
    config_class = FisherConfig
    reference = (
        "Jastrzebski et al., Catastrophic Fisher Explosion: Early Phase Fisher Matrix Impacts Generalization, ICML 2021"
    )
    summary = "CE + lambda * |grad CE(f(x), y_sampled)|^2"
    loop_facts = ("batch_size",)

    def __init__(self, config: FisherConfig | None = None, batch_size: int | None = None):
        self.config = config or FisherConfig()
        self.lam = self.config.penalty_weight(batch_size)  # λ in use

    def setup(self, model: torch.nn.Module, tokenizer: Any, train_rows: Any) -> None:
        return None

    def is_active(self, step: int) -> bool:
        return self.lam > 0 and step % self.config.every == 0

    def micro_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        labels = batch["labels"]
        if not self.is_active(ctx.step):
            loss = cross_entropy(logits_of(model, batch), labels)
            ctx.backward(loss * ctx.loss_scale)
            value = loss.item()
            return {"loss": value, "objective": value, "fisher_active": 0.0}

        size = labels.shape[0]
        m = size if self.config.sub_batch is None else min(self.config.sub_batch, size)
        params = [p for _, p in trainable_parameters(model)]
        if m == size:
            with math_attention():
                logits = logits_of(model, batch)
            sub_logits = logits
        else:
            logits = logits_of(model, batch)
            sub = {k: v[:m] for k, v in batch.items()}
            with ctx.no_sync(model), math_attention():
                sub_logits = logits_of(model, sub)
        loss = cross_entropy(logits, labels)
        y_hat = sample_labels(sub_logits, ctx.generator, labels[:m])
        penalty = gradient_norm_penalty(cross_entropy(sub_logits, y_hat), params, grad_scale(ctx))
        total = loss + self.lam * penalty
        ctx.backward(total * ctx.loss_scale)
        loss_value, penalty_value = torch.stack([loss.detach(), penalty.detach().to(loss.device)]).tolist()
        return {
            "loss": loss_value,
            "objective": loss_value + self.lam * penalty_value,
            "fisher_penalty": penalty_value,
            "fisher_active": 1.0,
        }
