"""`sam` and `asam`: sharpness-aware minimization on top of the loop's AdamW.

SAM (Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021) minimizes max_{‖ε‖≤ρ} L(w + ε) with the first-order solution
ε̂ = ρ · g / ‖g‖, g = ∇L(w), and descends with the gradient taken at w + ε̂.

ASAM (Kwon, Kim, Park & Choi, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning
of Deep Neural Networks", ICML 2021) makes the neighbourhood scale-invariant with T_w = |w| + η
(element-wise): ε̂ = ρ · T_w² g / ‖T_w g‖. As in the official code (github.com/SamsungLabs/ASAM, asam.py,
defaults rho=0.5, eta=0.01) T_w applies to parameters whose name contains "weight"; biases use T_w = 1.

How a micro-batch is handled (default, `shared_perturbation=False`):

1. ascent: forward + `torch.autograd.grad` of the micro-batch loss at w, inside `ctx.no_sync(model)`, so
   the gradient never touches `.grad` and is never all-reduced under DDP;
2. w is copied, ε̂ is added in place, the loss at w + ε̂ is back-propagated with `ctx.backward` (scaled by
   `ctx.loss_scale`) so its gradient is *accumulated* into `.grad` (GradScaler and DDP as usual);
3. w is restored from the copy (bitwise; never by subtracting ε̂).

The base optimizer (the loop's AdamW), its scheduler and clipping act on the accumulated gradient, as in
the official SAM/ASAM code where SAM wraps the base optimizer.

Gradient accumulation: with per-micro-batch perturbations (the default) each micro-batch gets its own
ε̂_i from its own gradient, which is SAM with m-sharpness, m = micro-batch size (Foret et al. §4; this is
also what happens per device under data parallelism). Two micro-batches of 4 then differ from one batch of
8, whose single ε̂ comes from the mean gradient of all 8. `shared_perturbation=True`
(`--sam-shared-perturbation`) makes them equal: every micro-batch's ascent gradient is summed first (the
batches are kept), ε̂ is computed once from the sum on the last micro-batch, and only then are the descent
passes run; the cost is the same, the memory one gradient buffer more. Under DDP the shared ε̂ is per rank
(the ascent gradient is not all-reduced), i.e. m = per-device batch, like the original implementation.

Mixed precision: under fp16 the ascent loss is multiplied by the GradScaler's scale before
`autograd.grad` (so small activation gradients do not underflow) and the gradient divided by it in fp32;
ε̂ does not depend on the scale. If the ascent gradient is not finite (an fp16 overflow), the micro-batch
is not perturbed (the descent gradient is the plain one) and `sam_skipped` is logged; the GradScaler
handles the step as usual. bf16 needs nothing special.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from xlgm.core import validation
from xlgm.core.options import check_fields, flag_label, option
from xlgm.objectives.base import StepContext
from xlgm.objectives.common import (
    cross_entropy,
    grad_scale,
    logits_of,
    trainable_parameters,
    upcast,
)
from xlgm.objectives.registry import register_objective

NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------------------------------
# Pure functions: the perturbations


def _global_norm(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    present = [t for t in tensors if t is not None]
    if not present:
        return torch.zeros(())
    device = present[0].device
    norms = [torch.linalg.vector_norm(upcast(t)).to(device) for t in present]
    return torch.linalg.vector_norm(torch.stack(norms))


def _working_copies(grads: Sequence[torch.Tensor | None], inplace: bool) -> list[torch.Tensor | None]:
    """fp32 (or fp64) tensors we may overwrite: the gradients themselves where `inplace`, else copies."""
    out: list[torch.Tensor | None] = []
    for g in grads:
        if g is None:
            out.append(None)
            continue
        w = upcast(g)
        out.append(w if (inplace or w is not g) else w.clone())
    return out


def _finite(tensors: Sequence[torch.Tensor | None]) -> bool:
    """All entries finite? (Their global norm is finite; one read pass, no boolean copies.)"""
    return bool(torch.isfinite(_global_norm(tensors)))


def sam_perturbation(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor], rho: float, *, inplace: bool = False
) -> list[torch.Tensor | None]:
    """SAM's ε̂ = ρ · g / ‖g‖ (global L2 norm over all parameters); None where a gradient is None.
    With `inplace` the gradients are overwritten with ε̂ (no extra parameter-sized memory)."""
    if len(grads) != len(params):
        raise ValueError(f"{len(grads)} gradients for {len(params)} parameters")
    work = _working_copies(grads, inplace)
    scale = rho / (_global_norm(work) + NORM_EPS)
    for w in work:
        if w is not None:
            w.mul_(scale.to(w.device))
    return [None if w is None else w.to(p.dtype) for w, p in zip(work, params)]


def asam_perturbation(
    grads: Sequence[torch.Tensor | None],
    params: Sequence[torch.Tensor],
    rho: float,
    eta: float,
    adaptive: Sequence[bool] | None = None,
    *,
    inplace: bool = False,
) -> list[torch.Tensor | None]:
    """ASAM's ε̂ = ρ · T_w² g / ‖T_w g‖ with T_w = |w| + η where `adaptive` (default: everywhere), else 1.
    With `inplace` the gradients are overwritten with ε̂; T_w is recomputed rather than stored."""
    if len(grads) != len(params):
        raise ValueError(f"{len(grads)} gradients for {len(params)} parameters")
    if adaptive is None:
        adaptive = [True] * len(params)
    work = _working_copies(grads, inplace)

    def t_w(p: torch.Tensor) -> torch.Tensor:
        return upcast(p.detach()).abs().add_(eta)

    for w, p, a in zip(work, params, adaptive):
        if w is not None and a:
            w.mul_(t_w(p))  # T_w g
    scale = rho / (_global_norm(work) + NORM_EPS)
    for w, p, a in zip(work, params, adaptive):
        if w is None:
            continue
        if a:
            w.mul_(t_w(p))  # T_w² g
        w.mul_(scale.to(w.device))
    return [None if w is None else w.to(p.dtype) for w, p in zip(work, params)]


def is_adaptive_parameter(name: str) -> bool:
    """ASAM's T_w applies to weights (the official code's `'weight' in name`), not to biases."""
    return "weight" in name


# ----------------------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class SAMConfig:
    rho: float = field(
        default=0.05,  # Foret et al.'s default neighbourhood size
        metadata=option("--rho", "sam/asam neighbourhood size", rule=validation.non_negative_number),
    )
    shared_perturbation: bool = field(
        default=False,
        metadata=option(
            "--sam-shared-perturbation",
            "sam/asam: one perturbation per optimizer step from the gradient of all "
            "micro-batches (default: one per micro-batch)",
            rule=validation.boolean,
        ),
    )

    def __post_init__(self):
        check_fields(self, label=flag_label(type(self)), store=True)


@dataclass(frozen=True)
class ASAMConfig:
    # the ASAM paper's and official code's default (its ρ is on the rescaled scale)
    rho: float = field(
        default=0.5, metadata=option("--rho", "asam: ρ on the rescaled scale", rule=validation.non_negative_number)
    )
    eta: float = field(
        default=0.01,
        metadata=option("--asam-eta", "asam: eta in T_w = |w| + eta", rule=validation.non_negative_number),
    )
    shared_perturbation: bool = field(
        default=False,
        metadata=option(
            "--sam-shared-perturbation", "asam: one perturbation per optimizer step", rule=validation.boolean
        ),
    )

    def __post_init__(self):
        check_fields(self, label=flag_label(type(self)), store=True)


# ----------------------------------------------------------------------------------------------------------
# The objectives


@register_objective
class SAMObjective:
    """SAM; `ASAMObjective` only changes the perturbation."""

    name = "sam"
    config_class: type = SAMConfig
    reference = "Foret et al., Sharpness-Aware Minimization for Efficiently Improving Generalization, ICLR 2021"
    summary = "gradient at w + rho*g/|g|"
    loop_facts: tuple[str, ...] = ()
    config: SAMConfig | ASAMConfig  # ASAMObjective narrows it to ASAMConfig

    def __init__(self, config: SAMConfig | None = None):
        self.config = config or SAMConfig()
        self._shared_grads: list[torch.Tensor | None] | None = None
        self._shared_batches: list[dict[str, torch.Tensor]] = []

    # The perturbation, computed in place in `grads` (which the objective owns); ASAM overrides.
    def perturbation(
        self, grads: list[torch.Tensor | None], named_params: list[tuple[str, torch.nn.Parameter]]
    ) -> list[torch.Tensor | None]:
        return sam_perturbation(grads, [p for _, p in named_params], self.config.rho, inplace=True)

    def setup(self, model: torch.nn.Module, tokenizer: Any, train_rows: Any) -> None:
        self._reset_shared()

    def _reset_shared(self) -> None:
        self._shared_grads = None
        self._shared_batches = []

    def _ascent_gradient(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext, params: list
    ) -> tuple[list[torch.Tensor | None], float]:
        """∇L(w) of this micro-batch, unscaled, without touching `.grad` and without DDP all-reduce."""
        scale = grad_scale(ctx)
        with ctx.no_sync(model):
            loss = cross_entropy(logits_of(model, batch), batch["labels"])
            target = loss * scale if scale != 1.0 else loss
            grads = torch.autograd.grad(target, params, allow_unused=True)
        if scale != 1.0:
            grads = tuple(None if g is None else upcast(g) / scale for g in grads)
        return list(grads), loss.item()

    def _descent(
        self,
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        ctx: StepContext,
        params: list,
        eps: list[torch.Tensor | None] | None,
        sync: bool = True,
        release: bool = False,
    ) -> float:
        """Accumulate ∇L(w + ε̂) · loss_scale into `.grad`, then restore w bitwise. With `release`, ε̂ is
        freed (the list emptied) once added, before the descent pass needs its activation memory."""
        backups: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        try:
            if eps is not None:
                with torch.no_grad():
                    for p, e in zip(params, eps):
                        if e is None:
                            continue
                        backups.append((p, p.detach().clone()))
                        p.add_(e)
                if release:
                    eps.clear()
            with contextlib.nullcontext() if sync else ctx.no_sync(model):
                loss = cross_entropy(logits_of(model, batch), batch["labels"])
                ctx.backward(loss * ctx.loss_scale)
        finally:
            with torch.no_grad():
                for p, saved in backups:
                    p.copy_(saved)
        return loss.item()

    def micro_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        named = trainable_parameters(model)
        params = [p for _, p in named]
        if self.config.shared_perturbation and ctx.num_micro > 1:
            return self._shared_micro_step(model, batch, ctx, named, params)

        grads, loss = self._ascent_gradient(model, batch, ctx, params)
        logs = {"loss": loss}
        eps = None
        if _finite(grads):
            eps = self.perturbation(grads, named)
            logs["sam_skipped"] = 0.0
        else:
            logs["sam_skipped"] = 1.0
        del grads
        logs["objective"] = self._descent(model, batch, ctx, params, eps, release=True)
        return logs

    def _shared_micro_step(self, model, batch, ctx, named, params) -> dict[str, float]:
        if ctx.micro_index == 0:
            self._reset_shared()
        grads, loss = self._ascent_gradient(model, batch, ctx, params)
        weight = ctx.loss_scale
        if self._shared_grads is None:
            self._shared_grads = [None if g is None else g * weight for g in grads]
        else:
            for i, g in enumerate(grads):
                if g is None:
                    continue
                held = self._shared_grads[i]
                if held is None:
                    self._shared_grads[i] = g * weight
                else:
                    held.add_(g, alpha=weight)
        del grads
        self._shared_batches.append(batch)
        if not ctx.is_last_micro:
            return {"loss": loss}

        shared = self._shared_grads
        logs = {"loss": loss}
        eps = None
        if _finite(shared):
            eps = self.perturbation(shared, named)
            logs["sam_skipped"] = 0.0
        else:
            logs["sam_skipped"] = 1.0
        batches = self._shared_batches
        self._reset_shared()
        descent_losses = []
        for j, stashed in enumerate(batches):
            last = j == len(batches) - 1
            descent_losses.append(self._descent(model, stashed, ctx, params, eps, sync=last))
        logs["objective"] = sum(descent_losses) / len(descent_losses)
        return logs


@register_objective
class ASAMObjective(SAMObjective):
    name = "asam"
    config_class = ASAMConfig
    reference = (
        "Kwon et al., ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep "
        "Neural Networks, ICML 2021"
    )
    summary = "gradient at w + rho*T^2 g/|T g|, T = |w| + eta"
    config: ASAMConfig

    def __init__(self, config: ASAMConfig | None = None):
        super().__init__()
        self.config = config or ASAMConfig()

    def perturbation(self, grads, named_params):
        names = [n for n, _ in named_params]
        params = [p for _, p in named_params]
        return asam_perturbation(
            grads, params, self.config.rho, self.config.eta, [is_adaptive_parameter(n) for n in names], inplace=True
        )
