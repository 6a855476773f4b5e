"""Curvature *operators*: matrix-free products with the Hessian and the Fisher/GGN of the mean cross-entropy.

Each operator is a symmetric linear map on the flattened selected parameters (one vector, in the order of
the parameter list): `op.matvec(v) -> A v`, counting its applications. The algorithms that use them (power
iteration, Lanczos, Hutchinson, Hutch++) live in `algorithms.py` and see nothing but `matvec`, `size`,
`device` and `dtype` -- as in pytorch-hessian-eigenthings (operator vs algorithm).

Loss: L(w) = (1/N) Σ_i CE(f_w(x_i), y_i) over all the batches, so every product is Σ_b (n_b/N) A_b v.

- `HessianOperator`: H v = ∇(∇L · v), by double backward (Pearlmutter's trick), batch by batch.
- `FisherOperator`: F v = Jᵀ M J v / N with J the Jacobian of the logits w.r.t. the parameters and, per
  example, M_i = diag(p_i) - p_i p_iᵀ (kind="true": the true Fisher, which for softmax cross-entropy equals
  the generalized Gauss-Newton matrix) or M_i = e_i e_iᵀ with e_i = p_i - onehot(y_i) = ∂CE_i/∂logits
  (kind="empirical": (1/N) Σ_i g_i g_iᵀ, g_i the per-example gradient). J v is computed with the
  double-vjp trick (the vjp of a vjp is a jvp), Jᵀ(.) with an ordinary vjp.
- `MatrixOperator`: an explicit symmetric matrix, for testing the algorithms.

Both model operators run attention in PyTorch's math kernel (`loss.double_backward_safe`): the fused SDPA
kernels have no double backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xlgm.core.errors import XlgmError
from xlgm.measures.loss import (
    Batch,
    CostMeter,
    Criterion,
    double_backward_safe,
    labelled,
    labels_of,
    logits_of,
    summed_loss,
    total_examples,
    upcast,
)
from xlgm.measures.params import flatten, unflatten


class LinearOperator:
    """A symmetric linear operator on vectors of length `size`; `matvec` counts its applications (and calls
    `on_apply()`, when set, after each: the measures' progress)."""

    size: int
    device: torch.device
    dtype: torch.dtype

    def __init__(self) -> None:
        self.applications = 0
        self.on_apply: Callable[[], None] | None = None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.size,):
            raise ValueError(f"expected a vector of length {self.size}, got shape {tuple(v.shape)}")
        self.applications += 1
        result = self._matvec(v)
        if self.on_apply is not None:
            self.on_apply()
        return result

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)


class MatrixOperator(LinearOperator):
    """An explicit symmetric matrix (for tests and small problems)."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError("need a square matrix")
        self.matrix = matrix
        self.size = matrix.shape[0]
        self.device = matrix.device
        self.dtype = matrix.dtype

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v


class _ModelOperator(LinearOperator):
    """Shared plumbing: the model, the batches, the parameters, the vector <-> tensor-list conversions."""

    def __init__(
        self, model: nn.Module, batches: Sequence[Batch], params: Sequence[torch.Tensor], meter: CostMeter | None = None
    ):
        super().__init__()
        if not params:
            raise XlgmError("a curvature operator needs at least one parameter")
        self.model = model
        self.batches = list(batches)
        self.params = list(params)
        self.meter = meter
        self.num_examples = total_examples(self.batches)
        self.size = sum(p.numel() for p in self.params)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        vs = unflatten(v.to(self.dtype), self.params)
        out = [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad(), double_backward_safe():
            for batch in self.batches:
                parts = self._batch_product(batch, vs)
                for o, part in zip(out, parts):
                    if part is not None:
                        o.add_(part)
        return flatten(out)

    def _batch_product(self, batch: Batch, vs: list[torch.Tensor]) -> Sequence[torch.Tensor | None]:
        raise NotImplementedError  # pragma: no cover


def _dot(tensors: Sequence[torch.Tensor | None], vs: Sequence[torch.Tensor]) -> torch.Tensor | None:
    terms = [(t * v).sum() for t, v in zip(tensors, vs) if t is not None]
    return sum(terms[1:], terms[0]) if terms else None  # the additions of sum(terms), typed as a tensor


class HessianOperator(_ModelOperator):
    """H v for the mean loss over the batches (cross-entropy, or `criterion`), by double backward."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        params: Sequence[torch.Tensor],
        meter: CostMeter | None = None,
        criterion: Criterion | None = None,
    ):
        super().__init__(model, batches, params, meter)
        self.criterion = criterion

    def _batch_product(self, batch: Batch, vs: list[torch.Tensor]) -> Sequence[torch.Tensor | None]:
        logits, labels = labelled(upcast(logits_of(self.model, batch)), labels_of(batch))  # a token task's words
        loss = summed_loss(logits, labels, self.criterion) / self.num_examples
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        if self.meter is not None:
            self.meter.forward(labels.shape[0])
            self.meter.backward(labels.shape[0])
            self.meter.second_order(labels.shape[0])
        gv = _dot(grads, vs)
        if gv is None or not gv.requires_grad:  # the gradient does not depend on the parameters: H = 0
            return [None] * len(self.params)
        return torch.autograd.grad(gv, self.params, allow_unused=True)


FISHER_KINDS = ("true", "empirical")


class FisherOperator(_ModelOperator):
    """F v = (1/N) Σ_i J_iᵀ M_i J_i v: the true Fisher (= GGN for softmax CE) or the empirical Fisher."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        params: Sequence[torch.Tensor],
        kind: str = "true",
        meter: CostMeter | None = None,
    ):
        if kind not in FISHER_KINDS:
            raise XlgmError(f"Fisher kind must be one of {', '.join(FISHER_KINDS)}, got {kind!r}")
        super().__init__(model, batches, params, meter)
        self.kind = kind

    def _batch_product(self, batch: Batch, vs: list[torch.Tensor]) -> Sequence[torch.Tensor | None]:
        logits, labels = labelled(upcast(logits_of(self.model, batch)), labels_of(batch))  # a token task's words
        # J v by the double-vjp trick: u -> Jᵀu is linear in u, and d/du [(Jᵀu)·v] = J v.
        u = torch.zeros_like(logits, requires_grad=True)
        jt_u = torch.autograd.grad(logits, self.params, grad_outputs=u, create_graph=True, allow_unused=True)
        jt_u_v = _dot(jt_u, vs)
        if jt_u_v is None:
            return [None] * len(self.params)
        (jv,) = torch.autograd.grad(jt_u_v, u, retain_graph=True)
        probs = torch.softmax(logits.detach(), dim=-1)
        if self.kind == "true":  # (diag p - p pᵀ) J v
            m = probs * jv - probs * (probs * jv).sum(dim=-1, keepdim=True)
        else:  # e eᵀ J v, e = p - onehot(y)
            e = probs - F.one_hot(labels, probs.shape[-1]).to(probs.dtype)
            m = e * (e * jv).sum(dim=-1, keepdim=True)
        if self.meter is not None:
            self.meter.forward(labels.shape[0])
            self.meter.backward(2 * labels.shape[0])
            self.meter.second_order(labels.shape[0])
        return torch.autograd.grad(logits, self.params, grad_outputs=m / self.num_examples, allow_unused=True)
