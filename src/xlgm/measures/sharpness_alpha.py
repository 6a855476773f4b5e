"""Worst-case sharpness by search (Jiang et al. 2020): the largest box α' that the loss tolerates, as 1/α'².

    α' = the largest α such that  max_{|u_i| <= α} L(w + u) - L(w) <= d          (sharpness-alpha)
    α' = the largest α such that  max_{|u_i| <= α|w_i| + ε} L(w + u) - L(w) <= d  (sharpness-alpha-mag)

with target deviation d = 0.1 (Jiang et al., Appendix C.2/D: the flatness terms 1/α'² of the sharpness
and magnitude-aware sharpness bounds). The inner max is approximated by projected gradient ascent inside
the box: `ascent_steps` sign-gradient steps of `step_fraction` times the box half-width (the steepest-ascent
step for an l∞ box, as in PGD), each followed by clipping to the box, from a random start uniform in the box
(or from u = 0); the deviation is the largest loss seen along the path (and over `num_restarts` starts),
minus L(w). α' is found by bisection (`search.bisect_scale`) with common random numbers (the same start
directions for every α). `deviation_of="error"` measures the deviation on the error rate instead (the ascent
still climbs the cross-entropy), as Jiang et al.'s accuracy-deviation variant.

Cost: one deviation costs num_restarts x (3 ascent_steps + 1) forward-pass units; the defaults (15 search
steps, 10 ascent steps) cost up to 15 x 31 = 465 units, ~50x a sharpness-diff.
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
    "Them, ICLR; Appendix C (sharpness-based measures, the 1/α'² flatness term{mag}) and Appendix D (search)"
)


@dataclass(frozen=True)
class SharpnessAlphaConfig(SearchConfig):
    """The search options (bracket for α) of `SearchConfig`, plus the projected ascent inside the box."""

    ascent_steps: int = field(
        default=10, metadata=option(help="projected sign-ascent steps in the box", rule=validation.positive_int)
    )
    step_fraction: float = field(
        default=0.25,
        metadata=option(
            help="the sign-ascent step, as a share of the box's half-width", rule=validation.positive_float
        ),
    )
    random_start: bool = field(
        default=True, metadata=option(help="start the ascent at a random point of the box", rule=validation.boolean)
    )
    num_restarts: int = field(
        default=1, metadata=option(help="ascents per α, the worst one kept", rule=validation.positive_int)
    )


def _box_ascent(
    ctx: MeasureContext, half: list[torch.Tensor], start: list[torch.Tensor], steps: int, step_fraction: float
) -> tuple[float, float]:
    """Projected sign-gradient ascent in the box |u| <= half from u = start; the max loss and max error seen."""
    u = start
    max_loss, max_err = float("-inf"), float("-inf")
    for _ in range(steps):
        ctx.set_offset(u)
        le, grads = ctx.loss_and_grad()
        max_loss, max_err = max(max_loss, le.loss), max(max_err, le.error)
        u = [torch.clamp(ut + step_fraction * h * g.sign(), -h, h) for ut, h, g in zip(u, half, grads)]
        ctx.advance()
    ctx.set_offset(u)
    le = ctx.evaluate()
    return max(max_loss, le.loss), max(max_err, le.error)


def _sharpness_alpha(ctx: MeasureContext, config: SharpnessAlphaConfig, magnitude_aware: bool) -> MeasureResult:
    base = ctx.evaluate()
    reference = base.loss if config.deviation_of == "loss" else base.error
    abs_w0 = ctx.abs_w0
    restart_seeds = ctx.draw_seeds(config.num_restarts)

    def deviation(alpha: float) -> tuple[float, dict]:
        if magnitude_aware:
            half = [alpha * a + config.magnitude_eps for a in abs_w0]
        else:
            half = [torch.full_like(a, alpha) for a in abs_w0]
        per_restart = []
        for seed in restart_seeds:
            if config.random_start:
                r = ctx.uniform_like_params(ctx.sub_generator(seed))  # the same directions at every α
                start = P.mul(half, r)
            else:
                start = [torch.zeros_like(h) for h in half]
            max_loss, max_err = _box_ascent(ctx, half, start, config.ascent_steps, config.step_fraction)
            per_restart.append({"loss": max_loss, "error": max_err})
        ctx.reset()
        worst = max(per_restart, key=lambda d: d[config.deviation_of])
        dev = worst[config.deviation_of] - reference
        return dev, {
            "delta_loss": worst["loss"] - base.loss,
            "delta_error": worst["error"] - base.error,
            "per_restart": [d[config.deviation_of] - reference for d in per_restart],
        }

    ctx.expect(config.search_depth * config.num_restarts * config.ascent_steps)  # the bisection may stop early
    search = bisect_scale(
        deviation, config.target_deviation, config.lower, config.upper, config.search_depth, config.tolerance
    )
    ctx.reset()
    alpha = search.scale
    final = search.steps[-1].info
    return ctx.result(
        1.0 / alpha**2,
        spread=mean_and_spread(final["per_restart"])[1],  # over random restarts, at α' (None for one)
        num_samples=config.num_restarts,
        delta_loss=final["delta_loss"],
        delta_error=final["delta_error"],
        alpha=alpha,
        deviation=search.deviation,
        deviation_of=config.deviation_of,
        hit_upper=search.hit_upper,
        **search.health(),
        iterations=search.iterations,
        trace=search.trace(),
        loss_before=base.loss,
        error_before=base.error,
        magnitude_aware=magnitude_aware,
    )


@register_measure(
    "sharpness-alpha",
    reference=REFERENCE.format(mag=""),
    config_cls=SharpnessAlphaConfig,
    expected_sign=-1,
    direction_reference="Jiang et al. 2020, App. C: 1/α'², larger = sharper, worse",
)
def sharpness_alpha(ctx: MeasureContext, config: SharpnessAlphaConfig) -> MeasureResult:
    """Worst-case sharpness 1/α'², α' = max α with max_{|u_i| <= α} L(w+u) - L(w) <= 0.1 (Jiang et al. 2020).

    Bisection on α (trace in details: α tried, Δloss reached, bracket), projected sign-gradient ascent in the
    box for the inner max. See the module docstring.
    """
    return _sharpness_alpha(ctx, config, magnitude_aware=False)


@register_measure(
    "sharpness-alpha-mag",
    reference=REFERENCE.format(mag=", magnitude-aware"),
    config_cls=SharpnessAlphaConfig,
    expected_sign=-1,
    direction_reference="Jiang et al. 2020, App. C: 1/α'², larger = sharper, worse",
)
def sharpness_alpha_mag(ctx: MeasureContext, config: SharpnessAlphaConfig) -> MeasureResult:
    """Magnitude-aware worst-case sharpness 1/α'², box |u_i| <= α|w_i| + ε (Jiang et al. 2020, ε = 1e-3).

    As sharpness-alpha with a box proportional to each weight's magnitude, plus ε so zero weights can move.
    """
    return _sharpness_alpha(ctx, config, magnitude_aware=True)
