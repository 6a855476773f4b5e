"""Binary search for the largest perturbation scale whose loss deviation stays at a target.

Jiang et al. (2020, "Fantastic generalization measures", Appendix D) estimate the flatness measures 1/α'² and
1/σ'² by bisection on the scale s of a perturbation: `deviation(s)` (the increase of the loss, or error,
that a perturbation of scale s causes) is assumed to grow with s, and the search looks for the s where it
equals `target`:

    lo, hi = lower, upper
    repeat at most `max_iters` times:
        s = (lo + hi) / 2;  d = deviation(s)
        if |d - target| <= tolerance: stop (converged)
        if d > target: hi = s  else: lo = s

The bracket [lo, hi] only shrinks (lo never decreases, hi never increases), which the trace records. A search
that stops without converging has its answer somewhere in the final bracket; when that bracket still reaches an
end of the original one (every step overshot: the scale may be anywhere in (lower, hi]; or every step fell
short: it may lie beyond `upper`), the reported scale is only a bound and the search is *saturated*: widen or
move the bracket, or allow more steps (`SearchResult.health`). The
measures call `deviation` with *common random numbers* (the same noise directions at every s), so that
d(s) is a deterministic function of s and the bisection is well posed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, option


@dataclass(frozen=True)
class SearchConfig:
    """The options every bisection-based flatness measure shares (sharpness-alpha, pacbayes-flatness)."""

    target_deviation: float = field(
        default=0.1,
        metadata=option(help="d, the rise of the loss (or error) the search looks for", rule=validation.positive_float),
    )
    deviation_of: Literal["loss", "error"] = field(
        default="loss", metadata=option(help="what rises: the loss (cross-entropy) or the error rate")
    )
    lower: float = field(
        default=0.0, metadata=option(help="the search bracket's lower end (α or σ)", rule=validation.non_negative_float)
    )
    upper: float = field(
        default=2.0, metadata=option(help="the search bracket's upper end (α or σ)", rule=validation.positive_float)
    )
    search_depth: int = field(default=15, metadata=option(help="bisection steps at most", rule=validation.positive_int))
    tolerance: float = field(
        default=0.01, metadata=option(help="stop when |deviation - d| <= tolerance", rule=validation.positive_float)
    )
    magnitude_eps: float = field(
        default=1e-3,
        metadata=option(
            help="ε of the magnitude-aware variants (the -mag measures only)", rule=validation.non_negative_float
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)
        if not self.upper > self.lower:
            raise XlgmError(f"need 0 <= lower < upper, got [{self.lower}, {self.upper}]")


@dataclass(frozen=True)
class SearchStep:
    scale: float
    deviation: float
    lower: float  # the bracket the step was taken in
    upper: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    scale: float  # the last scale tried (within tolerance of the target when converged)
    deviation: float  # the deviation at that scale
    converged: bool
    steps: list[SearchStep]
    hit_upper: bool  # every step stayed below the target: the true scale may lie above `upper`
    target: float = float("nan")
    tolerance: float = float("nan")
    max_iters: int = 0
    bracket: tuple[float, float] = (float("nan"), float("nan"))  # the search's original [lower, upper]
    final_bracket: tuple[float, float] = (float("nan"), float("nan"))  # [lo, hi] after the last step

    @property
    def iterations(self) -> int:
        return len(self.steps)

    @property
    def saturated(self) -> bool:
        """Not converged, and the final bracket still reaches an end of the original one (module docstring)."""
        lo, hi = self.final_bracket
        return not self.converged and (lo <= self.bracket[0] or hi >= self.bracket[1])

    def health(self) -> dict[str, Any]:
        """The standard health keys of `xlgm.measures.base.MeasureHealth` for a measure's details."""
        return {
            "converged": self.converged,
            "residual": abs(self.deviation - self.target),
            "tolerance": self.tolerance,
            "iteration_cap_reached": not self.converged and self.iterations >= self.max_iters,
            "saturated": self.saturated,
        }

    def trace(self) -> list[dict[str, Any]]:
        return [
            {"scale": s.scale, "deviation": s.deviation, "lower": s.lower, "upper": s.upper, **s.info}
            for s in self.steps
        ]


def bisect_scale(
    deviation: Callable[[float], tuple[float, dict[str, Any]]],
    target: float,
    lower: float,
    upper: float,
    max_iters: int,
    tolerance: float,
) -> SearchResult:
    """Bisection for the scale where `deviation(scale)[0]` reaches `target` (see the module docstring).

    `deviation` returns (the deviation, a dict of extra information kept in the trace).
    """
    if not upper > lower >= 0:
        raise ValueError(f"need 0 <= lower < upper, got [{lower}, {upper}]")
    lo, hi = lower, upper
    steps: list[SearchStep] = []
    converged = False
    scale, dev = (lo + hi) / 2, float("nan")
    for _ in range(max_iters):
        scale = (lo + hi) / 2
        dev, info = deviation(scale)
        steps.append(SearchStep(scale, dev, lo, hi, info))
        if abs(dev - target) <= tolerance:
            converged = True
            break
        if dev > target:
            hi = scale
        else:
            lo = scale
    hit_upper = bool(steps) and all(s.deviation < target - tolerance for s in steps)
    return SearchResult(scale, dev, converged, steps, hit_upper, target, tolerance, max_iters, (lower, upper), (lo, hi))
