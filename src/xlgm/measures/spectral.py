"""Spectral norms of the weight matrices: their product (or log product) or sum.

The spectral norm ||W||_2 (largest singular value, `torch.linalg.matrix_norm(ord=2)`) of every selected
2-D weight matrix (linear layers; embedding tables only with `include_embeddings=True`, since an embedding
lookup is not a matrix product). Products of spectral norms bound the Lipschitz constant of a network and
appear in norm-based generalization bounds (Bartlett, Foster & Telgarsky 2017; Neyshabur et al. 2018); Jiang
et al. (2020) test log Π_l ||W_l||_2² (measure (32)) and log Σ_l ||W_l||_2² (35) as generalization measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, option
from xlgm.measures.base import MeasureContext, MeasureResult, register_measure
from xlgm.measures.params import layer_of


@dataclass(frozen=True)
class SpectralNormConfig:
    aggregate: Literal["log_product", "product", "sum"] = field(
        default="log_product", metadata=option(help="the value: Σ log ||W||_2, Π ||W||_2 or Σ ||W||_2")
    )
    include_embeddings: bool = field(
        default=False,
        metadata=option(
            help="count the embedding tables too (a lookup is not a matrix product)", rule=validation.boolean
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)


@register_measure(
    "spectral-norm",
    reference="Bartlett, Foster & Telgarsky (2017); Neyshabur, Bhojanapalli & Srebro (2018); Jiang et al. (2020), "
    "Fantastic Generalization Measures, log product of squared spectral norms (measure (32)) and log sum (35)",
    config_cls=SpectralNormConfig,
    expected_sign=-1,
    direction_reference="Bartlett et al. 2017; Jiang et al. 2020: larger norms, worse",
)
def spectral_norm(ctx: MeasureContext, config: SpectralNormConfig) -> MeasureResult:
    """Spectral norms ||W_l||_2 of the weight matrices: log product (default), product or sum.

    details: the per-layer norms, and all three aggregates (log_product = Σ_l log ||W_l||_2, i.e. half of
    Jiang et al.'s log Π ||W||_2²). Deterministic (exact SVD).
    """
    modules = dict(ctx.model.named_modules())
    per_layer: dict[str, float] = {}
    for name, p in ctx.named_params:
        if p.dim() != 2:
            continue
        if not config.include_embeddings and isinstance(modules.get(layer_of(name)), nn.Embedding):
            continue
        per_layer[name] = float(torch.linalg.matrix_norm(p.detach().double(), ord=2))
    if not per_layer:
        raise XlgmError("spectral-norm: the selected parameters hold no weight matrix")
    norms = list(per_layer.values())
    log_product = sum(math.log(n) if n > 0 else float("-inf") for n in norms)
    aggregates = {
        "log_product": log_product,
        "product": math.exp(log_product) if log_product < 709 else float("inf"),
        "sum": sum(norms),
    }
    return ctx.result(
        aggregates[config.aggregate],
        aggregate=config.aggregate,
        num_matrices=len(norms),
        per_layer=per_layer,
        log_product=aggregates["log_product"],
        product=aggregates["product"],
        sum=aggregates["sum"],
    )
