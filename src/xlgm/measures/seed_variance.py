"""Variance of the parameters across runs that differ only in their seed: a measure of a *group* of models.

For R runs with weights w^(1..R) (same architecture, same data, same recipe, different seeds):

    Var = (1/D) Σ_i  (1/(R-1)) Σ_r (w_i^(r) - mean_r w_i^(r))²

the per-coordinate sample variance averaged over all D coordinates. A small value means fine-tuning lands
at nearly the same point whatever the seed (the data, not the randomness, determines the solution); it is a
property of the training recipe rather than of one model, so it is computed from state dicts, not from a
model and data: `compute_group_measure("parameter-variance-across-seeds", state_dicts)` or
`parameter_variance_across_seeds(state_dicts)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from xlgm.core.errors import XlgmError
from xlgm.measures.base import MeasureResult, register_measure
from xlgm.measures.params import ParamFilter, describe_filter

NAME = "parameter-variance-across-seeds"


@dataclass(frozen=True)
class SeedVarianceConfig:
    """No options: the sample variance (ddof=1) per coordinate, averaged over coordinates."""


def _selected_keys(state_dicts: Sequence[Mapping[str, torch.Tensor]], param_filter: ParamFilter) -> list[str]:
    keys = [k for k, v in state_dicts[0].items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    for i, sd in enumerate(state_dicts[1:], start=2):
        missing = [k for k in keys if k not in sd]
        if missing:
            raise XlgmError(f"state dict {i} lacks {len(missing)} tensor(s) of the first, e.g. {missing[0]}")
    if isinstance(param_filter, str):
        try:
            pattern = re.compile(param_filter)
        except re.error as err:
            raise XlgmError(f"invalid parameter filter regex {param_filter!r}: {err}") from None
        keys = [k for k in keys if pattern.search(k)]
    elif callable(param_filter):
        keys = [k for k in keys if param_filter(k)]
    elif param_filter is not None:
        raise XlgmError(f"a parameter filter is None, a regex string or a callable, got {type(param_filter).__name__}")
    if not keys:
        raise XlgmError(f"parameter filter {describe_filter(param_filter)} selects no floating-point tensor")
    return keys


@register_measure(
    NAME,
    reference="Variance across seeds of fine-tuned weights (a group measure); cf. Mosbach, Andriushchenko & "
    "Klakow (2021), On the Stability of Fine-tuning BERT, ICLR, and the seed studies of Dodge et al. (2020)",
    config_cls=SeedVarianceConfig,
    kind="group",
    expected_sign=None,
)
def _parameter_variance(
    state_dicts: list[Mapping[str, torch.Tensor]], config: SeedVarianceConfig, param_filter: ParamFilter
) -> MeasureResult:
    """Mean per-coordinate variance (ddof=1) of the parameters across runs differing only in seed.

    value: the mean over coordinates; details: the total (sum over coordinates), the per-tensor mean
    variance, the number of runs, coordinates and tensors.
    """
    if len(state_dicts) < 2:
        raise XlgmError(f"{NAME} needs the state dicts of at least 2 runs, got {len(state_dicts)}")
    keys = _selected_keys(state_dicts, param_filter)
    runs = len(state_dicts)
    per_tensor: dict[str, float] = {}
    total, count = 0.0, 0
    for key in keys:
        tensors = [sd[key].detach().to("cpu", torch.float64) for sd in state_dicts]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise XlgmError(f"tensor {key} has different shapes across runs: {sorted(shapes)}")
        mean = sum(tensors[1:], tensors[0]) / runs  # the same additions as sum(tensors), typed as a tensor
        sum_sq = sum((t - mean).pow(2).sum() for t in tensors)
        var_sum = float(sum_sq) / (runs - 1)
        per_tensor[key] = var_sum / max(mean.numel(), 1)
        total += var_sum
        count += mean.numel()
    return MeasureResult(
        name=NAME,
        value=total / count,
        num_samples=runs,
        details={
            "total": total,
            "num_runs": runs,
            "num_elements": count,
            "num_tensors": len(keys),
            "param_filter": describe_filter(param_filter),
            "per_tensor": per_tensor,
        },
    )


def parameter_variance_across_seeds(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], param_filter: ParamFilter = None
) -> MeasureResult:
    """The variance of parameters across runs differing only in seed (see the module docstring)."""
    return _parameter_variance(list(state_dicts), SeedVarianceConfig(), param_filter)
