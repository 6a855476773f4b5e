"""Worst-case (adaptive) sharpness, after Andriushchenko et al. (2023).

    S_max(w) = max_{||δ ⊙ c^{-1}||_p <= ρ} L(w + δ) - L(w),     c = |w| (adaptive) or 1,  p in {2, ∞}

(Andriushchenko, Croce, Müller, Hein & Flammarion 2023, ICML, eq. (1); adaptive after Kwon et al. 2021).

The maximization is projected gradient ascent in the normalized coordinates v = δ / c (so the constraint is a
plain ball ||v||_p <= ρ; weights with c = 0 do not move), with step-size halving:

    v = 0 (or a random start);  L_cur, g = L(w + c⊙v), ∇L(w + c⊙v);  η = initial_step · ρ
    repeat `steps` times:
        g_v = c ⊙ g                                   (the gradient in v)
        l∞: v' = clip(v + η sign(g_v), -ρ, ρ)         l2: v' = proj_ρ(v + η g_v / ||g_v||)
        if L(w + c⊙v') > L_cur: accept v' (and its gradient)  else: η = η / 2   (the loss did not increase)
    S_max = the best loss found - L(w)

The paper's code uses Auto-PGD with momentum and a step-size schedule, and projects onto the ellipsoid
||δ/c||_2 <= ρ in δ-space for adaptive l2; the halving rule and the projection in v-space are simpler and
monotone (the loss never decreases). As for sharpness-avg, all the given data form one batch (m = N), and ρ
has no universal default (0.002 for adaptive l∞ is ours). Reports Δloss (value) and Δerror (details, at
the worst point found). Cost: 3 (steps + 1) forward-pass units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from xlgm.core import validation
from xlgm.core.options import check_fields, option
from xlgm.measures import params as P
from xlgm.measures.base import MeasureContext, MeasureResult, register_measure


@dataclass(frozen=True)
class SharpnessWorstConfig:
    rho: float = field(
        default=0.002,
        metadata=option(
            help="ρ, the radius of the ball, in units of |w| when adaptive", rule=validation.positive_float
        ),
    )
    norm: Literal["linf", "l2"] = field(default="linf", metadata=option(help="the ball's norm"))
    adaptive: bool = field(
        default=True, metadata=option(help="measure the ball in units of c = |w| (else c = 1)", rule=validation.boolean)
    )
    steps: int = field(default=20, metadata=option(help="ascent steps (accepted or not)", rule=validation.positive_int))
    initial_step: float = field(
        default=2.0,
        metadata=option(
            help="the first step size, in units of ρ (the paper's code starts at 2ρ)", rule=validation.positive_float
        ),
    )
    random_start: bool = field(
        default=False,
        metadata=option(
            help="start uniformly in the l∞ ball or on the l2 sphere instead of at v = 0", rule=validation.boolean
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)


def _project(v: list[torch.Tensor], rho: float, norm: str) -> list[torch.Tensor]:
    if norm == "linf":
        return [t.clamp(-rho, rho) for t in v]
    n = P.norm(v)
    return v if n <= rho else P.scale(v, rho / n)


def _random_start(ctx: MeasureContext, rho: float, norm: str) -> list[torch.Tensor]:
    if norm == "linf":
        return P.scale(ctx.uniform_like_params(), rho)
    z = ctx.gaussian_like_params()
    return P.scale(z, rho / max(P.norm(z), 1e-30))


@register_measure(
    "sharpness-worst",
    reference="Andriushchenko, Croce, Müller, Hein & Flammarion (2023), A Modern Look at the Relationship "
    "between Sharpness and Generalization, ICML; worst-case adaptive sharpness, eq. (1)",
    config_cls=SharpnessWorstConfig,
    expected_sign=-1,
    direction_reference="Keskar et al. 2017; tested by Andriushchenko et al. 2023",
)
def sharpness_worst(ctx: MeasureContext, config: SharpnessWorstConfig) -> MeasureResult:
    """Worst-case sharpness max_{||δ/c||_p <= ρ} L(w+δ) - L(w), c = |w| or 1 (Andriushchenko et al. 2023).

    Projected gradient ascent with step-size halving when the loss does not increase, l2 or l∞ ball,
    adaptive or not. value: Δloss at the worst point found; details: Δerror there, the step trace.
    """
    rho, norm = config.rho, config.norm
    c = ctx.abs_w0 if config.adaptive else [torch.ones_like(w) for w in ctx.w0]
    if config.random_start:
        base = ctx.evaluate()
        v = _random_start(ctx, rho, norm)
        ctx.set_offset(P.mul(c, v))
        current, grads = ctx.loss_and_grad()
    else:
        v = [torch.zeros_like(w) for w in ctx.w0]
        current, grads = ctx.loss_and_grad()  # at w itself: L(w) and the first gradient in one pass
        base = current
    step = config.initial_step * rho
    trace = []
    ctx.expect(config.steps)  # at most: a zero gradient ends the ascent
    for _ in range(config.steps):
        g_v = P.mul(c, grads)
        if norm == "linf":
            candidate = [vt + step * gt.sign() for vt, gt in zip(v, g_v)]
        else:
            g_norm = P.norm(g_v)
            if g_norm == 0.0:
                break
            candidate = P.add(v, g_v, alpha=step / g_norm)
        candidate = _project(candidate, rho, norm)
        ctx.set_offset(P.mul(c, candidate))
        trial, trial_grads = ctx.loss_and_grad()
        accepted = trial.loss > current.loss
        trace.append({"step_size": step, "loss": trial.loss, "accepted": accepted})
        if accepted:
            v, current, grads = candidate, trial, trial_grads
        else:
            step /= 2
        ctx.advance()
    ctx.reset()
    return ctx.result(
        current.loss - base.loss,
        delta_error=current.error - base.error,
        loss_before=base.loss,
        loss_after=current.loss,
        error_before=base.error,
        error_after=current.error,
        perturbation_norm=P.norm(v) if norm == "l2" else max(float(t.abs().max()) for t in v),
        norm=norm,
        adaptive=config.adaptive,
        accepted_steps=sum(t["accepted"] for t in trace),
        trace=trace,
    )
