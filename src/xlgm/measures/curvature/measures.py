"""Curvature measures: the top Hessian eigenvalue(s), the Hessian trace and the Fisher trace of the mean loss.

Each combines an operator (`operators.py`) with an algorithm (`algorithms.py`) on the selected parameters
(restrict them with a parameter filter, e.g. `classifier|encoder\\.layer\\.11\\.`, to make them cheaper).
Costs, in operator applications: an HVP ≈ a forward, a backward and a double backward (≈ 5 forward units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.measures.base import MeasureContext, MeasureResult, mean_and_spread, register_measure
from xlgm.measures.curvature.algorithms import hutchinson, hutchpp, lanczos, power_iteration
from xlgm.measures.curvature.operators import FisherOperator, HessianOperator
from xlgm.measures.loss import labels_of, logits_of, single_examples, sparse_embedding_gradients, upcast


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise XlgmError(f"{name} must be >= {minimum}, got {value}")


# ---------------------------------------------------------------------------------------------------------
# hessian-top-eig
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianTopEigConfig:
    method: str = "lanczos"  # "lanczos" (k largest algebraic) or "power" (dominant |λ|, deflation for k > 1)
    k: int = 1  # how many eigenvalues
    max_iters: int = 60  # Lanczos: operator applications at most; power: per eigenvalue
    tol: float = 1e-3  # Lanczos: relative residual; power: relative change of the Rayleigh quotient
    min_iters: int = 20  # Lanczos: steps before the residual may stop it (the top of a tight cluster comes late)

    def __post_init__(self) -> None:
        validation.one_of("method", self.method, ("lanczos", "power"))
        _check_count("k", self.k)
        _check_count("max_iters", self.max_iters)
        _check_count("min_iters", self.min_iters)
        if not self.tol > 0:
            raise XlgmError(f"tol must be > 0, got {self.tol}")


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
    method: str = "hutchinson"  # "hutchinson" or "hutchpp"
    num_matvecs: int = 30  # operator applications (Hutchinson: = probes)

    def __post_init__(self) -> None:
        validation.one_of("method", self.method, ("hutchinson", "hutchpp"))
        _check_count("num_matvecs", self.num_matvecs, 3 if self.method == "hutchpp" else 1)


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
    fisher: str = "empirical"  # "empirical" ((1/N) Σ g_i g_iᵀ) or "true" (E_{y~p} of the same, = GGN)
    method: str = "exact"  # "exact" (per-example gradients) or "hutchinson"/"hutchpp" (Fisher-vector products)
    num_matvecs: int = 30  # for the estimators

    def __post_init__(self) -> None:
        validation.one_of("fisher", self.fisher, ("empirical", "true"))
        validation.one_of("method", self.method, ("exact", "hutchinson", "hutchpp"))
        _check_count("num_matvecs", self.num_matvecs, 3 if self.method == "hutchpp" else 1)


def _per_example_sq_norm(ctx: MeasureContext, loss: torch.Tensor) -> float:
    grads = torch.autograd.grad(loss, ctx.params, retain_graph=True, allow_unused=True)
    total = 0.0
    for g in grads:
        if g is not None:
            values = g.coalesce().values() if g.is_sparse else g  # sparse: the touched embedding rows
            total += float(values.double().pow(2).sum())
    return total


def _exact_fisher_trace(ctx: MeasureContext, kind: str) -> list[float]:
    """Per-example contributions: ||∇CE_i||² (empirical) or Σ_c p_ic ||∇ log p_ic||² (true)."""
    values = []
    ctx.expect(ctx.num_examples)
    for example in single_examples(ctx.batches):
        label = labels_of(example)
        with torch.enable_grad(), sparse_embedding_gradients(ctx.model, ctx.params):
            log_probs = F.log_softmax(upcast(logits_of(ctx.model, example)), dim=-1)[0]
            ctx.meter.forward(1)
            if kind == "empirical":
                values.append(_per_example_sq_norm(ctx, -log_probs[label[0]]))
                ctx.meter.backward(1)
            else:
                probs = log_probs.detach().exp()
                values.append(
                    sum(float(probs[c]) * _per_example_sq_norm(ctx, log_probs[c]) for c in range(log_probs.shape[0]))
                )
                ctx.meter.backward(log_probs.shape[0])
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
