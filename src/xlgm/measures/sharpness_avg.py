"""Average-case (adaptive) sharpness, after Andriushchenko et al. (2023).

    S_avg(w) = E_{δ ~ N(0, ρ² diag(c²))} L(w + δ) - L(w),     c = |w| (adaptive) or 1

(Andriushchenko, Croce, Müller, Hein & Flammarion 2023, "A modern look at the relationship between sharpness
and generalization", ICML, eq. (2) for average-case sharpness; adaptive after Kwon et al. 2021). Their code
(`eval_average_sharpness`) draws δ = ρ c ⊙ z, z ~ N(0, I), and averages over draws; so does this.

Differences: the paper averages per-batch sharpness over batches of m examples (its m is a hyper-parameter);
here every draw is evaluated on all the given data at once (m = N). ρ has no universal default: the paper
sweeps it; 0.02 (2% relative noise per weight) is ours. Reports Δloss (value, mean ± std over draws) and
Δerror (details). Cost: num_draws + 1 forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xlgm.core import validation
from xlgm.core.options import check_fields, option
from xlgm.measures.base import MeasureContext, MeasureResult, mean_and_spread, register_measure


@dataclass(frozen=True)
class SharpnessAvgConfig:
    rho: float = field(
        default=0.02,
        metadata=option(
            help="ρ, the noise's standard deviation; relative to |w| when adaptive", rule=validation.positive_float
        ),
    )
    adaptive: bool = field(
        default=True, metadata=option(help="scale the noise by c = |w| (else c = 1)", rule=validation.boolean)
    )
    num_draws: int = field(default=8, metadata=option(help="Monte Carlo draws", rule=validation.positive_int))

    def __post_init__(self) -> None:
        check_fields(self, label=str)


@register_measure(
    "sharpness-avg",
    reference="Andriushchenko, Croce, Müller, Hein & Flammarion (2023), A Modern Look at the Relationship "
    "between Sharpness and Generalization, ICML; average-case adaptive sharpness, eq. (2)",
    config_cls=SharpnessAvgConfig,
    expected_sign=-1,
    direction_reference="Keskar et al. 2017; tested by Andriushchenko et al. 2023",
)
def sharpness_avg(ctx: MeasureContext, config: SharpnessAvgConfig) -> MeasureResult:
    """Average-case sharpness E_δ L(w+δ) - L(w), δ ~ N(0, ρ² diag(c²)), c = |w| or 1 (Andriushchenko et al. 2023).

    value: mean Δloss over draws (spread: std); details: Δerror mean and std, per-draw values.
    """
    base = ctx.evaluate()
    scale = [config.rho * a for a in ctx.abs_w0] if config.adaptive else None  # ρ c
    delta_loss, delta_err = [], []
    ctx.expect(config.num_draws)
    for _ in range(config.num_draws):
        z = ctx.gaussian_like_params()
        delta = [t.mul_(s) for t, s in zip(z, scale)] if scale is not None else [t.mul_(config.rho) for t in z]
        ctx.set_offset(delta)
        le = ctx.evaluate()
        delta_loss.append(le.loss - base.loss)
        delta_err.append(le.error - base.error)
        ctx.advance()
    ctx.reset()
    value, spread = mean_and_spread(delta_loss)
    err_mean, err_spread = mean_and_spread(delta_err)
    return ctx.result(
        value,
        spread=spread,
        num_samples=config.num_draws,
        delta_error=err_mean,
        delta_error_spread=err_spread,
        delta_losses=delta_loss,
        delta_errors=delta_err,
        loss_before=base.loss,
        error_before=base.error,
    )
