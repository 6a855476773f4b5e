"""Helpers shared by the objectives: argument validation (written once), the loss, and mixed precision.

Every objective's options are checked here, so a bad `--rho` and a bad `--fisher-every` fail the same way:
an `XlgmError` naming the option, the value and what was expected.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Re-exported: every objective computes its loss with these.
from xlgm.core.tensors import cross_entropy as cross_entropy
from xlgm.core.tensors import logits_of as logits_of
from xlgm.core.tensors import upcast as upcast
from xlgm.errors import XlgmError

# ----------------------------------------------------------------------------------------------------------
# Validation


def _as_number(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise XlgmError(f"{option} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise XlgmError(f"{option} must be a finite number, got {value}")
    return value


def check_nonnegative(option: str, value: Any) -> float:
    """ρ, λ, η: a finite number >= 0."""
    value = _as_number(option, value)
    if value < 0:
        raise XlgmError(f"{option} must be >= 0, got {value:g}")
    return value


def check_rate(option: str, value: Any) -> float:
    """A probability-like rate in [0, 1)."""
    value = _as_number(option, value)
    if not 0.0 <= value < 1.0:
        raise XlgmError(f"{option} must be in [0, 1), got {value:g}")
    return value


def check_positive_int(option: str, value: Any, *, allow_none: bool = False) -> int | None:
    """A count >= 1 (sub-batch size, every-k-steps); None where `allow_none` (meaning 'all' / unset)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise XlgmError(f"{option} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise XlgmError(f"{option} must be an integer >= 1, got {value}")
    return value


def check_bool(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise XlgmError(f"{option} must be true or false, got {value!r}")
    return value


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
