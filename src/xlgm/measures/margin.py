"""Output-space measures: the probability margin of Bassi et al. and the logit margin of Jiang et al.

Both only need the model's outputs on a labelled set, so they can be computed on any language's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, option
from xlgm.measures.base import MeasureContext, MeasureResult, register_measure
from xlgm.measures.loss import logits_and_labels


def _margins(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """values[i, y_i] - max_{j != y_i} values[i, j], per example (float64)."""
    values = values.double()
    if values.shape[1] < 2:
        raise XlgmError("a margin needs at least two classes")
    rows = torch.arange(values.shape[0], device=values.device)
    true = values[rows, labels]
    others = values.clone()
    others[rows, labels] = float("-inf")
    return true - others.max(dim=1).values


@dataclass(frozen=True)
class MarginConfig:
    """The average probability margin has no options."""


@register_measure(
    "margin",
    reference="Bassi, Ataman & Cho (2024), Generalization Measures for Zero-Shot Cross-Lingual Transfer, "
    "arXiv:2404.15928, §3 (margin); published code: github.com/sakshambassi/sharpness-measure "
    "(strikegen/margin/margin.py)",
    config_cls=MarginConfig,
    expected_sign=1,
    direction_reference="Bassi et al. 2024; Jiang et al. 2020: a larger margin, better generalization",
)
def margin(ctx: MeasureContext, config: MarginConfig) -> MeasureResult:
    """Average probability margin: mean_i [ p(y_i | x_i) - max_{j != y_i} p(j | x_i) ].

    p = softmax of the logits (eval mode). The value lies in [-1, 1]; larger means more confident correct
    predictions. Bassi et al. report this mean (their `margin_type='mean'`); the min over examples (their
    `'min'`) and the standard deviation over examples are in the details. Deterministic: no spread.
    """
    logits, labels = logits_and_labels(ctx.model, ctx.batches, ctx.meter)
    m = _margins(torch.softmax(logits.double(), dim=-1), labels)
    return ctx.result(
        float(m.mean()),
        min=float(m.min()),
        std=float(m.std(unbiased=True)) if m.numel() > 1 else 0.0,
        fraction_negative=float((m < 0).double().mean()),
    )


def percentile(label: str, value: Any) -> float:
    number = validation.finite_number(label, value)
    validation.require(0 <= number <= 100, f"{label}: expected a number in [0, 100], got {number:g}")
    return number


@dataclass(frozen=True)
class LogitMarginConfig:
    percentile: float = field(
        default=10.0,
        metadata=option(
            help="γ is this percentile of the margins over examples (Jiang et al. use the 10th)", rule=percentile
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)


@register_measure(
    "logit-margin",
    reference="Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), Fantastic Generalization Measures and Where "
    "to Find Them, ICLR; output-space measure 'inverse margin' 1/γ² (measure (22))",
    config_cls=LogitMarginConfig,
    expected_sign=-1,
    direction_reference="Jiang et al. 2020, measure (22): 1/γ², larger = smaller margin, worse",
)
def logit_margin(ctx: MeasureContext, config: LogitMarginConfig) -> MeasureResult:
    """Inverse squared logit margin 1/γ², γ = the 10th percentile over examples of f(x)_y - max_{j != y} f(x)_j.

    Jiang et al. (2020) take the 10th percentile rather than the minimum, for robustness to outliers. The
    percentile uses linear interpolation (`torch.quantile`, numpy's default). value = 1/γ² (the complexity
    measure, larger = less margin); γ itself is `details.gamma`. When γ <= 0 (more than 10% of the examples
    are misclassified) 1/γ² is meaningless: the value is +inf and `details.gamma` tells why.
    """
    logits, labels = logits_and_labels(ctx.model, ctx.batches, ctx.meter)
    m = _margins(logits, labels)
    gamma = float(torch.quantile(m, config.percentile / 100.0))
    value = 1.0 / gamma**2 if gamma > 0 else float("inf")
    return ctx.result(
        value,
        gamma=gamma,
        percentile=config.percentile,
        mean_logit_margin=float(m.mean()),
        min_logit_margin=float(m.min()),
    )
