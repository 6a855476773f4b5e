"""compute_measure on a plain nn.Module: labels under `label` or `labels`, and a criterion other than CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xlgm.core.errors import XlgmError
from xlgm.measures.base import compute_measure

N, D, C = 24, 5, 3


class PlainLinear(nn.Module):
    """Not a Hugging Face model: takes `x`, returns the logits tensor itself."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(C, D, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def _data(key: str = "labels") -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64).float()
    y = torch.randint(0, C, (N,), generator=gen)
    return [{"x": x[:16], key: y[:16]}, {"x": x[16:], key: y[16:]}]


def mse_on_one_hot(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(logits, F.one_hot(labels, C).to(logits.dtype))


def test_label_and_labels_give_the_same_value():
    model = PlainLinear()
    for name in ("sharpness-avg", "hessian-trace", "margin"):
        a = compute_measure(name, model, _data("labels"), seed=3).value
        b = compute_measure(name, model, _data("label"), seed=3).value
        assert a == b, name


def test_cross_entropy_criterion_equals_the_default():
    model = PlainLinear()
    default = compute_measure("sharpness-avg", model, _data(), seed=3)
    explicit = compute_measure("sharpness-avg", model, _data(), seed=3, criterion=F.cross_entropy)
    assert explicit.value == pytest.approx(default.value, rel=1e-5)


def test_hessian_of_a_mean_squared_error_criterion_is_the_closed_form():
    # L(W) = 1/(N C) sum_i ||W x_i - onehot(y_i)||^2: every class row has Hessian 2/(N C) X^T X.
    model = PlainLinear()
    batches = _data()
    x = torch.cat([b["x"] for b in batches]).double()
    expected_top = float(torch.linalg.eigvalsh(2 / (N * C) * x.T @ x).max())
    expected_trace = C * float(torch.trace(2 / (N * C) * x.T @ x))
    top = compute_measure("hessian-top-eig", model, batches, criterion=mse_on_one_hot)
    assert top.value == pytest.approx(expected_top, rel=1e-4)
    # Hutch++ whose sketch spans all C*D = 15 directions is exact
    trace = compute_measure(
        "hessian-trace",
        model,
        batches,
        criterion=mse_on_one_hot,
        config={"method": "hutchpp", "num_matvecs": 3 * C * D},
    )
    assert trace.value == pytest.approx(expected_trace, rel=1e-4)
    # cross-entropy's Hessian is another matrix: the criterion was used
    assert compute_measure("hessian-top-eig", model, batches).value != pytest.approx(expected_top, rel=1e-2)


def test_a_criterion_returning_a_vector_is_refused():
    with pytest.raises(XlgmError, match="scalar"):
        compute_measure(
            "sharpness-avg",
            PlainLinear(),
            _data(),
            criterion=lambda logits, labels: F.cross_entropy(logits, labels, reduction="none"),
        )


def test_differing_label_and_labels_are_refused():
    batches = [{**b, "label": (b["labels"] + 1) % C} for b in _data()]
    with pytest.raises(XlgmError, match="differ"):
        compute_measure("margin", PlainLinear(), batches)
