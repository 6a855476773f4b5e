"""Curvature measures: the top Hessian eigenvalue(s), the Hessian trace and the Fisher trace of the mean loss.

Each combines an operator (`operators.py`) with an algorithm (`algorithms.py`) on the selected parameters
(restrict them with a parameter filter, e.g. `classifier|encoder\\.layer\\.11\\.`, to make them cheaper).
Costs, in operator applications: an HVP ≈ a forward, a backward and a double backward (≈ 5 forward units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, option
from xlgm.measures.base import MeasureContext, MeasureResult, mean_and_spread, register_measure
from xlgm.measures.curvature.algorithms import hutchinson, hutchpp, lanczos, power_iteration
from xlgm.measures.curvature.operators import FisherOperator, HessianOperator
from xlgm.measures.loss import labelled, labels_of, logits_of, single_rows, sparse_embedding_gradients, upcast


def _check_hutchpp(method: str, num_matvecs: int) -> None:
    """Hutch++ splits its operator applications in three parts: it needs at least three."""
    if method == "hutchpp" and num_matvecs < 3:
        raise XlgmError(f"num_matvecs: expected an integer >= 3 for method hutchpp, got {num_matvecs}")


NUM_MATVECS_HELP = "operator applications (Hutchinson: one a probe; Hutch++: at least 3)"


# ---------------------------------------------------------------------------------------------------------
# hessian-top-eig
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianTopEigConfig:
    method: Literal["lanczos", "power"] = field(
        default="lanczos",
        metadata=option(help="lanczos: the k largest (algebraic); power: the dominant |λ|, deflated for k > 1"),
    )
    k: int = field(default=1, metadata=option(help="how many eigenvalues", rule=validation.positive_int))
    max_iters: int = field(
        default=60,
        metadata=option(
            help="Lanczos: operator applications at most; power: per eigenvalue", rule=validation.positive_int
        ),
    )
    tol: float = field(
        default=1e-3,
        metadata=option(
            help="Lanczos: the relative residual; power: the relative change of the Rayleigh quotient",
            rule=validation.positive_float,
        ),
    )
    min_iters: int = field(
        default=20,
        metadata=option(
            help="Lanczos: steps before the residual may stop it (the top of a tight cluster comes late)",
            rule=validation.positive_int,
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)


@register_measure(
    "hessian-top-eig",
    reference="Keskar et al. (2017), On Large-Batch Training ... Sharp Minima, ICLR (λ_max of the loss Hessian "
    "as sharpness); Lanczos (1950) / power iteration, as in pytorch-hessian-eigenthings and PyHessian "
    "(Yao et al. 2020)",
    config_cls=HessianTopEigConfig,
    expected_sign=-1,
    direction_reference="Keskar et al. 2017: sharp minima (large λ_max) generalize worse",
)
def hessian_top_eig(ctx: MeasureContext, config: HessianTopEigConfig) -> MeasureResult:
    """Top eigenvalue λ_max of the Hessian ∇²L(w) of the mean cross-entropy (k largest in details).

    Lanczos (default): the k largest algebraic eigenvalues, stopping when their Ritz residuals are below
    tol·|θ|. Power iteration: the k dominant (largest |λ|) eigenvalues by deflation. HVPs by double backward.
    details: eigenvalues, hvps (operator applications), iterations, converged, residuals, history (the top
    estimate after each HVP).
    """
    op = _reporting(HessianOperator(ctx.model, ctx.batches, ctx.params, meter=ctx.meter, criterion=ctx.criterion), ctx)
    if config.method == "lanczos":
        ctx.expect(min(config.max_iters, op.size))
        res = lanczos(
            op, ctx.generator, k=config.k, max_iters=config.max_iters, tol=config.tol, min_iters=config.min_iters
        )
    else:
        ctx.expect(min(config.k, op.size) * config.max_iters)
        res = power_iteration(op, ctx.generator, k=config.k, max_iters=config.max_iters, tol=config.tol)
    return ctx.result(
        res.eigenvalues[0],
        eigenvalues=res.eigenvalues,
        method=config.method,
        hvps=res.applications,
        iterations=res.iterations,
        residuals=res.residuals,
        history=res.history,
        reorthogonalized=res.reorthogonalized,
        **_eigen_health(res, config),
    )


def _eigen_health(res, config: HessianTopEigConfig) -> dict:
    """The standard health keys (`MeasureHealth`): the quantity each method's stopping rule compares with tol.

    Lanczos: the largest relative Ritz residual max_i r_i / |θ_i| over the k values. Power iteration: the
    relative change of the Rayleigh quotient at the last step (k = 1; with deflation only `converged` is kept).
    The iteration cap is reached when the method used all its steps without converging."""
    residual = None
    if config.method == "lanczos" and res.residuals:
        residual = max(r / max(abs(v), 1e-30) for r, v in zip(res.residuals, res.eigenvalues))
    elif config.method == "power" and config.k == 1 and len(res.history) >= 2:
        residual = abs(res.history[-1] - res.history[-2]) / max(abs(res.history[-1]), 1e-30)
    cap = config.max_iters * (config.k if config.method == "power" else 1)
    return {
        "converged": res.converged,
        "residual": residual,
        "tolerance": config.tol,
        "iteration_cap_reached": (not res.converged) and res.iterations >= cap,
    }


# ---------------------------------------------------------------------------------------------------------
# hessian-trace
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianTraceConfig:
    method: Literal["hutchinson", "hutchpp"] = field(default="hutchinson", metadata=option(help="the trace estimator"))
    num_matvecs: int = field(default=30, metadata=option(help=NUM_MATVECS_HELP, rule=validation.positive_int))

    def __post_init__(self) -> None:
        check_fields(self, label=str)
        _check_hutchpp(self.method, self.num_matvecs)


def _reporting(op, ctx: MeasureContext):
    """The operator, telling the measure's progress of every application."""
    op.on_apply = ctx.advance
    return op


def _trace(op, ctx: MeasureContext, method: str, num_matvecs: int):
    ctx.expect(num_matvecs)  # Hutchinson: one application a probe; Hutch++: num_matvecs in all
    if method == "hutchinson":
        return hutchinson(op, ctx.generator, num_matvecs)
    return hutchpp(op, ctx.generator, num_matvecs)


@register_measure(
    "hessian-trace",
    reference="Hutchinson (1989) trace estimator / Hutch++ (Meyer, Musco, Musco & Woodruff 2021, SOSA); Hessian "
    "trace as flatness: PyHessian (Yao et al. 2020)",
    config_cls=HessianTraceConfig,
    expected_sign=-1,
    direction_reference="Hochreiter & Schmidhuber 1997 flat minima; Yao et al. 2020",
)
def hessian_trace(ctx: MeasureContext, config: HessianTraceConfig) -> MeasureResult:
    """Trace of the Hessian tr ∇²L(w), estimated with Rademacher probes (Hutchinson or Hutch++).

    spread: std of the probe values z'Hz (for Hutch++: of the residual probes); num_samples: the probes.
    The standard error of the estimate is spread / sqrt(num_samples).
    """
    op = _reporting(HessianOperator(ctx.model, ctx.batches, ctx.params, meter=ctx.meter, criterion=ctx.criterion), ctx)
    est = _trace(op, ctx, config.method, config.num_matvecs)
    return ctx.result(
        est.value,
        spread=est.spread,
        num_samples=est.num_samples,
        method=config.method,
        hvps=est.applications,
        samples=est.samples,
        deterministic_part=est.deterministic_part,
    )


# ---------------------------------------------------------------------------------------------------------
# fisher-trace
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FisherTraceConfig:
    fisher: Literal["empirical", "true"] = field(
        default="empirical",
        metadata=option(help="empirical: (1/N) Σ g_i g_iᵀ with the data's labels; true: its mean over y ~ p (the GGN)"),
    )
    method: Literal["exact", "hutchinson", "hutchpp"] = field(
        default="exact",
        metadata=option(help="exact: per-example gradients; hutchinson or hutchpp: Fisher-vector products"),
    )
    num_matvecs: int = field(
        default=30, metadata=option(help=NUM_MATVECS_HELP + "; the estimators only", rule=validation.positive_int)
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)
        _check_hutchpp(self.method, self.num_matvecs)


def _per_example_sq_norm(ctx: MeasureContext, loss: torch.Tensor) -> float:
    grads = torch.autograd.grad(loss, ctx.params, retain_graph=True, allow_unused=True)
    total = 0.0
    for g in grads:
        if g is not None:
            values = g.coalesce().values() if g.is_sparse else g  # sparse: the touched embedding rows
            total += float(values.double().pow(2).sum())
    return total


def _exact_fisher_trace(ctx: MeasureContext, kind: str) -> list[float]:
    """Per-example contributions: ||∇CE_i||² (empirical) or Σ_c p_ic ||∇ log p_ic||² (true). A token task's
    examples are its labelled words: one forward pass per sentence, one gradient per word."""
    values = []
    ctx.expect(ctx.num_examples)
    for row in single_rows(ctx.batches):
        with torch.enable_grad(), sparse_embedding_gradients(ctx.model, ctx.params):
            logits, labels = labelled(upcast(logits_of(ctx.model, row)), labels_of(row))
            log_probs = F.log_softmax(logits, dim=-1)
            ctx.meter.forward(labels.shape[0])
            for i, label in enumerate(labels.tolist()):
                if kind == "empirical":
                    values.append(_per_example_sq_norm(ctx, -log_probs[i, label]))
                    ctx.meter.backward(1)
                else:
                    probs = log_probs[i].detach().exp()
                    values.append(
                        sum(float(probs[c]) * _per_example_sq_norm(ctx, log_probs[i, c]) for c in range(probs.shape[0]))
                    )
                    ctx.meter.backward(probs.shape[0])
                ctx.advance()
    return values


@register_measure(
    "fisher-trace",
    reference="Fisher information trace as a flatness/generalization measure: Jastrzębski et al. (2021), "
    "Catastrophic Fisher explosion, ICML (Tr F); Kunstner et al. (2019) on empirical vs true Fisher",
    config_cls=FisherTraceConfig,
    expected_sign=-1,
    direction_reference="Jastrzębski et al. 2021: a large Fisher trace, worse generalization",
)
def fisher_trace(ctx: MeasureContext, config: FisherTraceConfig) -> MeasureResult:
    """Trace of the Fisher information of the mean cross-entropy: exact (default) or estimated.

    Empirical: tr F = (1/N) Σ_i ||∇_w CE(f_w(x_i), y_i)||². True: tr F = (1/N) Σ_i Σ_c p(c|x_i) ||∇_w log p(c|x_i)||²
    (= tr of the GGN). method="exact" computes it from per-example gradients (N backward passes, C N for the
    true Fisher; deterministic, no spread; the std over examples of the per-example terms is in details);
    "hutchinson"/"hutchpp" estimate it from Fisher-vector products (spread = std of the probes, num_samples =
    the probes). `details.estimated` says which.
    """
    if config.method == "exact":
        per_example = _exact_fisher_trace(ctx, config.fisher)
        value, per_example_std = mean_and_spread(per_example)
        return ctx.result(value, fisher=config.fisher, method="exact", estimated=False, per_example_std=per_example_std)
    op = _reporting(FisherOperator(ctx.model, ctx.batches, ctx.params, kind=config.fisher, meter=ctx.meter), ctx)
    est = _trace(op, ctx, config.method, config.num_matvecs)
    return ctx.result(
        est.value,
        spread=est.spread,
        num_samples=est.num_samples,
        fisher=config.fisher,
        method=config.method,
        estimated=True,
        fvps=est.applications,
        samples=est.samples,
    )
