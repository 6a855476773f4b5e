"""PAC-Bayesian flatness (Jiang et al. 2020): the largest Gaussian noise the loss tolerates on average, as 1/σ'².

    σ' = the largest σ such that  E_u[L(w + u)] - L(w) <= d,   u ~ N(0, σ² I)                 (pacbayes-flatness)
    σ' = the largest σ such that  E_u[L(w + u)] - L(w) <= d,   u_i ~ N(0, σ² w_i² + ε²)      (pacbayes-flatness-mag)

with target deviation d = 0.1 (Jiang et al. 2020, measures (53) and (61); Appendix D for the search). The
expectation is a Monte Carlo mean over `num_draws` draws; σ' is found by bisection (`search.bisect_scale`)
with common random numbers: the same standard-normal directions z_j at every σ (u_j = σ z_j, or
sqrt(σ² w² + ε²) ⊙ z_j), so the estimated deviation is a smooth deterministic function of σ. The directions
are regenerated from per-draw seeds rather than stored (memory stays one model, not num_draws models).
Draws come in antithetic pairs (z, -z) by default: the estimate stays unbiased, the first-order term
∇L·u cancels exactly (it is pure noise in E[L(w+u)] - L(w) = ½ σ² tr H + ...), and for a convex loss the
estimated deviation is then non-decreasing in σ, so the bisection is well posed. `antithetic=False` gives
independent draws, as in Jiang et al.
`deviation_of="error"` uses the error rate (Jiang et al. and Dziugaite et al. 2020 use a 0.1 accuracy
deviation); the default is the cross-entropy.

Reports 1/σ'², σ', the std of the per-draw deviations at σ' (spread), the number of draws (num_samples) and
the search trace. Cost: search_depth x num_draws forward passes (defaults: up to 150).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from xlgm.core import validation
from xlgm.core.options import option
from xlgm.measures import params as P
from xlgm.measures.base import (
    MeasureContext,
    MeasureResult,
    mean_and_spread,
    register_measure,
)
from xlgm.measures.search import SearchConfig, bisect_scale

REFERENCE = (
    "Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), Fantastic Generalization Measures and Where to Find "
    "Them, ICLR; {what}; search as in Appendix D"
)


@dataclass(frozen=True)
class PacBayesConfig(SearchConfig):
    """The search options (bracket for σ) of `SearchConfig`, plus the Monte Carlo draws."""

    num_draws: int = field(default=10, metadata=option(help="Monte Carlo draws per σ", rule=validation.positive_int))
    antithetic: bool = field(
        default=True,
        metadata=option(
            help="draw in pairs (z, -z), which cancels the first-order term (see the module docstring)",
            rule=validation.boolean,
        ),
    )


def _pacbayes(ctx: MeasureContext, config: PacBayesConfig, magnitude_aware: bool) -> MeasureResult:
    base = ctx.evaluate()
    reference = base.loss if config.deviation_of == "loss" else base.error
    sq_w0 = [w.pow(2) for w in ctx.w0]
    draw_seeds = ctx.draw_seeds((config.num_draws + 1) // 2 if config.antithetic else config.num_draws)

    def deviation(sigma: float) -> tuple[float, dict]:
        # The noise std, per weight: σ (plain) or sqrt(σ² w² + ε²) (magnitude-aware).
        if magnitude_aware:
            std = [torch.sqrt(sigma**2 * s + config.magnitude_eps**2) for s in sq_w0]
        else:
            std = [torch.full_like(s, sigma) for s in sq_w0]
        per_draw, delta_loss, delta_err = [], [], []
        for j in range(config.num_draws):
            if config.antithetic:  # draws come in pairs z, -z
                z = ctx.gaussian_like_params(ctx.sub_generator(draw_seeds[j // 2]))
                z = z if j % 2 == 0 else P.scale(z, -1.0)
            else:
                z = ctx.gaussian_like_params(ctx.sub_generator(draw_seeds[j]))
            ctx.set_offset(P.mul(std, z))
            le = ctx.evaluate()
            ctx.advance()
            per_draw.append((le.loss if config.deviation_of == "loss" else le.error) - reference)
            delta_loss.append(le.loss - base.loss)
            delta_err.append(le.error - base.error)
        ctx.reset()
        mean, spread = mean_and_spread(per_draw)
        return mean, {
            "spread": spread,
            "delta_loss": sum(delta_loss) / len(delta_loss),
            "delta_error": sum(delta_err) / len(delta_err),
            "per_draw": per_draw,
        }

    ctx.expect(config.search_depth * config.num_draws)  # the bisection may stop early
    search = bisect_scale(
        deviation, config.target_deviation, config.lower, config.upper, config.search_depth, config.tolerance
    )
    ctx.reset()
    final = search.steps[-1]
    sigma = search.scale
    return ctx.result(
        1.0 / sigma**2,
        spread=final.info["spread"],
        num_samples=config.num_draws,
        sigma=sigma,
        deviation=search.deviation,
        deviation_of=config.deviation_of,
        delta_loss=final.info["delta_loss"],
        delta_error=final.info["delta_error"],
        hit_upper=search.hit_upper,
        **search.health(),
        iterations=search.iterations,
        trace=search.trace(),
        loss_before=base.loss,
        error_before=base.error,
        magnitude_aware=magnitude_aware,
    )


@register_measure(
    "pacbayes-flatness",
    reference=REFERENCE.format(what="PAC-Bayes flatness 1/σ'², measure (53)"),
    config_cls=PacBayesConfig,
    expected_sign=-1,
    direction_reference="Jiang et al. 2020, (53): 1/σ'², larger = sharper, worse",
)
def pacbayes_flatness(ctx: MeasureContext, config: PacBayesConfig) -> MeasureResult:
    """PAC-Bayes flatness 1/σ'², σ' = max σ with E_{u~N(0,σ²I)} L(w+u) - L(w) <= 0.1 (Jiang et al. 2020, (53)).

    Monte Carlo over num_draws common-random-number draws, bisection on σ; spread = std of the per-draw
    deviations at σ'. See the module docstring.
    """
    return _pacbayes(ctx, config, magnitude_aware=False)


@register_measure(
    "pacbayes-flatness-mag",
    reference=REFERENCE.format(what="magnitude-aware PAC-Bayes flatness 1/σ'², measure (61)"),
    config_cls=PacBayesConfig,
    expected_sign=-1,
    direction_reference="Jiang et al. 2020, (61): 1/σ'², larger = sharper, worse",
)
def pacbayes_flatness_mag(ctx: MeasureContext, config: PacBayesConfig) -> MeasureResult:
    """Magnitude-aware PAC-Bayes flatness 1/σ'², u_i ~ N(0, σ² w_i² + ε²) (Jiang et al. 2020, (61); ε = 1e-3).

    As pacbayes-flatness with noise proportional to each weight's magnitude.
    """
    return _pacbayes(ctx, config, magnitude_aware=True)
