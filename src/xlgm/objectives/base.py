"""The interface between the training loop and an optimization objective.

The loop owns the optimizer, the scheduler, clipping, accumulation and logging. An objective owns what
happens to one micro-batch: it computes a loss and *accumulates* a gradient into each parameter's `.grad`
(it must never zero or overwrite gradients accumulated by earlier micro-batches of the same step). This
is what lets SAM, Fisher Penalty and MVR slot in without touching the loop.

One optimizer step of the loop, with `n` micro-batches:

    for i, batch in enumerate(micro_batches):
        ctx = StepContext(accelerator, step, micro_index=i, num_micro=n, ...)
        logs = objective.micro_step(model, batch, ctx)   # adds d(loss_i / n)/dθ into .grad
    accelerator.clip_grad_norm_(...); optimizer.step(); scheduler.step(); optimizer.zero_grad(set_to_none=True)

Batches are dicts of tensors already on the model's device: `input_ids`, `attention_mask`, optionally
`token_type_ids`, `labels` (long), and `idx` (long, the example's row in the training set, for objectives
that need the raw text, e.g. MVR re-segments it). `model_inputs(batch)` strips what the model must not see.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from xlgm.core.options import OPTION_KEY as OPTION_KEY
from xlgm.core.options import option as option

# Re-exported: the objectives and their tests know them as xlgm.objectives.base names.
from xlgm.core.tensors import NON_MODEL_KEYS as NON_MODEL_KEYS
from xlgm.core.tensors import model_inputs as model_inputs


@dataclass
class StepContext:
    """What an objective may use for one micro-batch.

    `accelerator` is an `accelerate.Accelerator`; use `accelerator.backward(loss)` so mixed precision
    (GradScaler) and DDP work, and `no_sync()` for passes whose gradients must not be all-reduced (SAM's
    ascent pass). `loss_scale` is 1/num_micro: the factor for this micro-batch's share of the step's loss.
    """

    accelerator: Any
    step: int  # optimizer step index, from 0
    micro_index: int
    num_micro: int
    generator: torch.Generator | None = None  # for objectives that sample (Fisher's ŷ, MVR's segmentation)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def loss_scale(self) -> float:
        return 1.0 / self.num_micro

    @property
    def is_last_micro(self) -> bool:
        return self.micro_index == self.num_micro - 1

    def no_sync(self, model: torch.nn.Module):
        """A context in which backward does not all-reduce gradients (DDP); a no-op elsewhere."""
        if self.accelerator is None:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)


# The key of a config field's metadata that makes the field a command-line option (see `option`).
class Objective(Protocol):
    """An optimization objective. `name` is its registry key; `config_class` its frozen options dataclass;
    `reference` (the paper) and `summary` (the update in one line) are shown to users; `loop_facts` names
    what the constructor takes from the training loop besides the config (of `LOOP_FACTS`)."""

    name: str
    config_class: type
    reference: str
    summary: str
    loop_facts: tuple[str, ...]

    def setup(self, model: torch.nn.Module, tokenizer: Any, train_rows: Any) -> None:
        """Called once before training; `train_rows` are the raw training examples (for MVR)."""

    def micro_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """Accumulate this micro-batch's gradient into `.grad`; return scalars to log (at least `loss`)."""
        ...
