"""Which parameters a measure looks at, and the vector arithmetic on lists of parameter tensors.

A parameter filter is one of
- None: every parameter with `requires_grad=True` (the trained ones);
- a regular expression, searched (`re.search`) in each parameter name of `model.named_parameters()`, e.g.
  `classifier` (the head only) or `encoder\\.layer\\.3\\.` (one layer); it may select frozen parameters too;
- a callable `name -> bool` on the same names.

Measures work on lists of tensors, one per selected parameter; `flatten`/`unflatten` convert to and from one
vector where an algorithm wants one (Lanczos, Hutch++).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from xlgm.core.errors import XlgmError

ParamFilter = None | str | Callable[[str], bool]


def select_parameters(model: nn.Module, param_filter: ParamFilter = None) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs the filter selects, in `named_parameters()` order (tied weights once)."""
    named = list(model.named_parameters())
    if param_filter is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    elif isinstance(param_filter, str):
        try:
            pattern = re.compile(param_filter)
        except re.error as err:
            raise XlgmError(f"invalid parameter filter regex {param_filter!r}: {err}") from None
        chosen = [(n, p) for n, p in named if pattern.search(n)]
    elif callable(param_filter):
        chosen = [(n, p) for n, p in named if param_filter(n)]
    else:
        raise XlgmError(f"a parameter filter is None, a regex string or a callable, got {type(param_filter).__name__}")
    if not chosen:
        raise XlgmError(f"parameter filter {describe_filter(param_filter)} selects no parameter of the model")
    for name, p in chosen:
        if not p.is_floating_point():
            raise XlgmError(f"parameter {name} is not floating point; measures need real-valued parameters")
    return chosen


def describe_filter(param_filter: ParamFilter) -> str:
    if param_filter is None:
        return "requires_grad"
    if isinstance(param_filter, str):
        return f"regex:{param_filter}"
    return f"callable:{getattr(param_filter, '__name__', type(param_filter).__name__)}"


def layer_of(name: str) -> str:
    """The module a parameter belongs to: `bert.encoder.layer.0.attention.self.query.weight` -> `...query`."""
    return name.rsplit(".", 1)[0] if "." in name else name


# ---------------------------------------------------------------------------------------------------------
# Lists of tensors as vectors
# ---------------------------------------------------------------------------------------------------------


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One 1-D vector (a copy) from a list of tensors."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a 1-D vector into views shaped like `like`."""
    out, start = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[start : start + n].view_as(t))
        start += n
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the tensors {start}")
    return out


_CHUNK = 1 << 22  # float64 accumulation chunk by chunk: no float64 copy of a 100M-entry embedding table


def dot64(x: torch.Tensor, y: torch.Tensor) -> float:
    """<x, y> of two same-shaped tensors, accumulated in float64 without a full float64 copy."""
    x, y = x.reshape(-1), y.reshape(-1)
    if x.dtype == torch.float64 and y.dtype == torch.float64:
        return float(torch.dot(x, y))
    total = 0.0
    for start in range(0, x.numel(), _CHUNK):
        total += float(torch.dot(x[start : start + _CHUNK].double(), y[start : start + _CHUNK].double()))
    return total


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Sum of elementwise products over lists of tensors, accumulated in float64."""
    return sum(dot64(x, y) for x, y in zip(a, b))


def norm(tensors: Sequence[torch.Tensor]) -> float:
    """The global l2 norm of a list of tensors, accumulated in float64."""
    return math.sqrt(sum(dot64(t, t) for t in tensors))


def tensor_norms(tensors: Sequence[torch.Tensor]) -> list[float]:
    return [math.sqrt(dot64(t, t)) for t in tensors]


def scale(tensors: Sequence[torch.Tensor], factor: float) -> list[torch.Tensor]:
    return [t * factor for t in tensors]


def add(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], alpha: float = 1.0) -> list[torch.Tensor]:
    """a + alpha * b."""
    return [x + alpha * y for x, y in zip(a, b)]


def sub(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x - y for x, y in zip(a, b)]


def mul(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x * y for x, y in zip(a, b)]


def absolute(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.abs() for t in tensors]
