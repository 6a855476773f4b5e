"""`adamw`: the baseline objective, plain cross-entropy.

Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019). The AdamW update
itself is the loop's; this objective only adds d(CE/n)/dθ for each micro-batch, which is exactly what
every other objective reduces to when its regularizer is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from xlgm.objectives.base import StepContext
from xlgm.objectives.common import cross_entropy, logits_of
from xlgm.objectives.registry import register_objective


@dataclass(frozen=True)
class AdamWConfig:
    """No options: the baseline has no regularizer."""


@register_objective
class AdamWObjective:
    name = "adamw"
    config_class = AdamWConfig
    reference = "Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019"
    summary = "plain cross-entropy (the loop's AdamW)"
    loop_facts: tuple[str, ...] = ()

    def __init__(self, config: AdamWConfig | None = None):
        self.config = config or AdamWConfig()

    def setup(self, model: torch.nn.Module, tokenizer: Any, train_rows: Any) -> None:
        return None

    def micro_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        loss = cross_entropy(logits_of(model, batch), batch["labels"])
        ctx.backward(loss * ctx.loss_scale)
        value = loss.item()
        return {"loss": value, "objective": value}
