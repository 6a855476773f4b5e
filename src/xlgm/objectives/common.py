"""Helpers shared by the objectives: the loss and mixed precision. Their options are checked by
`xlgm.core.validation` (finite_number, non_negative_number, rate, count, boolean), the validators of every
other option too, so a bad `--rho` and a bad `--batch-size` fail the same way: one line naming the option, the
value and what was expected."""

from __future__ import annotations

from typing import Any

import torch

# Re-exported: every objective computes its loss with these.
from xlgm.core.tensors import cross_entropy as cross_entropy
from xlgm.core.tensors import logits_of as logits_of
from xlgm.core.tensors import upcast as upcast

# ----------------------------------------------------------------------------------------------------------
# Loss and model plumbing


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def grad_scale(ctx: Any) -> float:
    """The fp16 GradScaler's current scale (1.0 without fp16), for gradients taken with autograd.grad.

    `accelerator.backward` multiplies the loss by this scale; gradients we take ourselves (SAM's ascent,
    Fisher's inner gradient) use it too, so fp16 activations' gradients do not underflow.
    """
    accelerator = getattr(ctx, "accelerator", None)
    scaler = getattr(accelerator, "scaler", None) if accelerator is not None else None
    if scaler is None:
        return 1.0
    try:
        if not scaler.is_enabled():
            return 1.0
        return float(scaler.get_scale())
    except Exception:  # noqa: BLE001  # pragma: no cover - a scaler without the usual API
        return 1.0
