"""What a generalization measure returns, how measures are registered, and how one is computed.

A *measure* is a function `fn(ctx, config) -> MeasureResult` registered under a name:

    @register_measure("margin", reference="Bassi et al. 2024 ...", config_cls=MarginConfig,
                      expected_sign=1, direction_reference="Bassi et al. 2024: a larger margin, better transfer")
    def margin(ctx: MeasureContext, config: MarginConfig) -> MeasureResult:
        ...
        return ctx.result(value, spread=..., num_samples=..., some_detail=...)

`compute_measure(name, model, batches, ...)` resolves the config, opens the shared guard (`guard.preserved`:
eval mode, parameters/buffers/flags restored bitwise on exit, a private seeded generator), selects the
parameters the measure looks at (`params.select_parameters`) and calls the function with a `MeasureContext`,
which carries the model, the batches, the selected parameters, their values at entry (`w0`) and the loss
helpers of `loss.py`, counting the forward/backward passes they make.

A *group* measure (kind="group") looks at several trained models at once (e.g. the variance of parameters
across seeds); it takes state dicts, not a model and batches: `compute_group_measure(name, state_dicts)`.

An *outputs* measure (kind="outputs") needs no labels and no model: it reads what one forward pass over a
language's text gave (`TextOutputs`: logits and sentence embeddings), optionally beside the same model's
outputs on source-language text and other models' outputs on the same text:
`compute_output_measure(name, target, source=..., peers=...)` (see label_free.py).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from xlgm.core.errors import XlgmError, did_you_mean
from xlgm.core.options import choices_of, default_of, help_of, parse_options, type_hints
from xlgm.measures import loss as loss_lib
from xlgm.measures.guard import preserved
from xlgm.measures.params import ParamFilter, describe_filter, select_parameters

# ---------------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Tensors, numpy scalars/arrays, tuples and dataclasses -> plain Python (floats, ints, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 and value.dim() == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, bool) or value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    return repr(value)


HEALTH_KEYS = ("converged", "residual", "tolerance", "iteration_cap_reached", "saturated")


@dataclass(frozen=True)
class MeasureHealth:
    """Whether a measure's value can be trusted as computed, from the measure's own bookkeeping.

    converged: an iterative estimate (Lanczos, power iteration, bisection) met its stopping tolerance; None when
    the measure has no iteration to converge (a closed form, a fixed number of draws or steps). residual and
    tolerance: the quantity the stopping rule compared and its threshold (e.g. the relative Ritz residual and
    `tol`; |deviation - target| and `tolerance`). iteration_cap_reached: the iteration limit ended the run before
    convergence. saturated: a search ended against an end of its bracket (its value is then a bound, not an
    estimate: e.g. a bisection whose every step overshot stops at its depth limit next to the lower end).
    nonfinite: how many of the value and spread are NaN/inf.
    """

    converged: bool | None = None
    residual: float | None = None
    tolerance: float | None = None
    iteration_cap_reached: bool | None = None
    saturated: bool | None = None
    nonfinite: int = 0

    @classmethod
    def from_details(cls, value: float, spread: float | None, details: Mapping[str, Any]) -> MeasureHealth:
        """Read from the standard detail keys (`HEALTH_KEYS`) a measure reports; absent keys stay None."""
        known = {k: details.get(k) for k in HEALTH_KEYS}
        for key in ("converged", "iteration_cap_reached", "saturated"):
            known[key] = None if known[key] is None else bool(known[key])
        for key in ("residual", "tolerance"):
            number = known[key]
            known[key] = None if number is None else float(number)
        nonfinite = sum(v is not None and not math.isfinite(float(v)) for v in (value, spread))
        return cls(**known, nonfinite=int(nonfinite))

    @property
    def problems(self) -> list[str]:
        """Short reasons not to trust the value ([] when healthy)."""
        out = []
        if self.converged is False:
            detail = (
                f" (residual {self.residual:.3g} > tolerance {self.tolerance:.3g})"
                if self.residual is not None and self.tolerance is not None
                else ""
            )
            out.append("not converged" + detail)
        if self.iteration_cap_reached:
            out.append("iteration cap reached")
        if self.saturated:
            out.append("saturated at the search bound")
        if self.nonfinite:
            out.append(f"{self.nonfinite} NaN/inf")
        return out

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MeasureResult:
    """One measure's value on one model and data set.

    value: the measure (a float). spread: the standard deviation (ddof=1) of the per-sample values where the
    measure samples (Monte Carlo draws, Hutchinson probes), else None. num_samples: how many samples the value
    averages (None when it does not sample). details: everything else worth keeping (search traces, radii,
    losses before/after, per-layer values, operator applications, cost in forward-pass units...). health: how
    far the value can be trusted (`MeasureHealth`); by default read from the standard detail keys
    `HEALTH_KEYS` the measure reports and from whether value and spread are finite.
    """

    name: str
    value: float
    spread: float | None = None
    num_samples: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    health: MeasureHealth | None = None

    def __post_init__(self) -> None:
        if self.health is None:
            object.__setattr__(self, "health", MeasureHealth.from_details(self.value, self.spread, self.details))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "spread": self.spread,
            "num_samples": self.num_samples,
            "details": _jsonable(self.details),
            "health": _jsonable(self.health.to_dict()) if self.health is not None else None,
        }


def mean_and_spread(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (ddof=1; None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values")
    spread = float(arr.std(ddof=1)) if arr.size >= 2 else None
    return float(arr.mean()), spread


# ---------------------------------------------------------------------------------------------------------
# The context a measure works in
# ---------------------------------------------------------------------------------------------------------


@dataclass
class MeasureContext:
    """What a measure function may use. Created by `compute_measure` inside the guard.

    `params` are the selected parameters (requires_grad=True for them and only them while the measure runs),
    `w0` their values at entry (clones; never modified). The helpers count forward/backward passes in `meter`.

    `progress(steps, total)`, when given, hears how far a long measure is: `expect(n)` announces n more steps
    (an upper bound where a search or an iteration may stop early), `advance(n)` reports n steps done. A step
    is the measure's own unit of work: an operator application (HVP), a Monte Carlo draw, an ascent step.
    """

    name: str
    model: nn.Module
    batches: list[dict[str, torch.Tensor]]
    named_params: list[tuple[str, nn.Parameter]]
    generator: torch.Generator
    seed: int
    config: Any
    inputs: dict[str, Any] = field(default_factory=dict)
    param_filter: str = "requires_grad"
    meter: loss_lib.CostMeter = field(default_factory=loss_lib.CostMeter)
    progress: Callable[[int, int | None], None] | None = None
    criterion: loss_lib.Criterion | None = None  # the loss of the loss helpers; None: cross-entropy

    # -- progress --------------------------------------------------------------------------------------------

    def expect(self, steps: int) -> None:
        """Announce `steps` more steps of work (at most that many)."""
        if self.progress is not None:
            self.progress(0, int(steps))

    def advance(self, steps: int = 1) -> None:
        """Report `steps` steps of work done."""
        if self.progress is not None:
            self.progress(int(steps), None)

    # -- the selected parameters ---------------------------------------------------------------------------

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_params]

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.named_params]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    @cached_property
    def w0(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    @cached_property
    def abs_w0(self) -> list[torch.Tensor]:
        """|w0|, elementwise (the scale of magnitude-aware / adaptive perturbations)."""
        return [w.abs() for w in self.w0]

    @cached_property
    def num_examples(self) -> int:
        return loss_lib.total_examples(self.batches)

    @torch.no_grad()
    def set_params(self, values: Sequence[torch.Tensor]) -> None:
        """Write `values` into the selected parameters (in place, same storage)."""
        for p, v in zip(self.params, values):
            p.copy_(v)

    @torch.no_grad()
    def set_offset(self, delta: Sequence[torch.Tensor]) -> None:
        """Move the selected parameters to w0 + delta."""
        for p, w, d in zip(self.params, self.w0, delta):
            p.copy_(w).add_(d)  # in place: the same float additions as w + d, no temporary

    def reset(self) -> None:
        """Move the selected parameters back to w0."""
        self.set_params(self.w0)

    # -- randomness ------------------------------------------------------------------------------------------

    def draw_seeds(self, n: int) -> list[int]:
        """`n` seeds from the measure's generator, for noise that must be regenerated identically later
        (common random numbers across the steps of a search)."""
        return torch.randint(0, 2**62, (n,), generator=self.generator, device=self.generator.device).tolist()

    def sub_generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator(device=self.generator.device)
        gen.manual_seed(int(seed))
        return gen

    def gaussian_like_params(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """z ~ N(0, I), one tensor per selected parameter, drawn in parameter order."""
        gen = generator or self.generator
        return [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in self.params]

    def uniform_like_params(self, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """r ~ U(-1, 1), one tensor per selected parameter."""
        gen = generator or self.generator
        return [torch.rand(p.shape, generator=gen, device=p.device, dtype=p.dtype) * 2 - 1 for p in self.params]

    # -- the loss helpers, counted -----------------------------------------------------------------------------

    def loss(self, batches: Sequence[dict[str, torch.Tensor]] | None = None) -> float:
        return loss_lib.mean_loss(
            self.model, self.batches if batches is None else batches, meter=self.meter, criterion=self.criterion
        )

    def evaluate(self, batches: Sequence[dict[str, torch.Tensor]] | None = None) -> loss_lib.LossAndError:
        return loss_lib.evaluate(
            self.model, self.batches if batches is None else batches, meter=self.meter, criterion=self.criterion
        )

    def loss_and_grad(
        self, batches: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> tuple[loss_lib.LossAndError, list[torch.Tensor]]:
        return loss_lib.loss_and_gradient(
            self.model,
            self.batches if batches is None else batches,
            self.params,
            meter=self.meter,
            criterion=self.criterion,
        )

    # -- the result ---------------------------------------------------------------------------------------------

    def result(
        self, value: float, *, spread: float | None = None, num_samples: int | None = None, **details: Any
    ) -> MeasureResult:
        """A `MeasureResult` with the common details added: data size, parameters, seed, config, cost."""
        common = {
            "num_examples": self.num_examples,
            "num_parameters": self.num_parameters,
            "num_parameter_tensors": len(self.named_params),
            "param_filter": self.param_filter,
            "seed": self.seed,
            "config": dataclasses.asdict(self.config)
            if dataclasses.is_dataclass(self.config) and not isinstance(self.config, type)
            else {},
            "cost": self.meter.summary(self.num_examples),
        }
        return MeasureResult(
            name=self.name,
            value=float(value),
            spread=None if spread is None else float(spread),
            num_samples=num_samples,
            details=_jsonable({**common, **details}),
        )


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureSpec:
    """A registered measure: its name, function, reference (paper and equation), config class and kind, and the
    direction the literature expects: `expected_sign` +1 when a higher value should go with higher accuracy
    (better transfer), -1 when with lower, None when no direction is claimed; `direction_reference` cites it."""

    name: str
    fn: Callable[..., MeasureResult]
    reference: str
    config_cls: type
    kind: str = "model"  # "model": (model, batches); "group": (state_dicts); "outputs": (TextOutputs, ...)
    inputs: tuple[str, ...] = ()  # extra keyword inputs compute_measure accepts (e.g. init_state)
    expected_sign: int | None = None
    direction_reference: str = ""

    @property
    def direction(self) -> str:
        """The expected direction in words, e.g. "higher -> better (Bassi et al. 2024)"."""
        if self.expected_sign is None:
            return "no expected direction"
        words = "higher -> better" if self.expected_sign > 0 else "higher -> worse"
        return f"{words} ({self.direction_reference})" if self.direction_reference else words

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""


_REGISTRY: dict[str, MeasureSpec] = {}
KINDS = ("model", "group", "outputs")


def register_measure(
    name: str,
    *,
    reference: str,
    config_cls: type,
    kind: str = "model",
    inputs: Iterable[str] = (),
    expected_sign: int | None = None,
    direction_reference: str = "",
) -> Callable[[Callable[..., MeasureResult]], Callable[..., MeasureResult]]:
    """Register `fn(ctx, config)` (kind="model"), `fn(state_dicts, config, param_filter)` (kind="group") or
    `fn(target, config, source, peers)` (kind="outputs"), with the sign of its expected correlation with
    accuracy (+1, -1 or None) and the work that expects it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if expected_sign not in (1, -1, None):
        raise ValueError(f"expected_sign of {name!r} must be +1, -1 or None, got {expected_sign!r}")
    if not (dataclasses.is_dataclass(config_cls) and config_cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]  # typeshed omits it
        raise TypeError(f"config_cls of {name!r} must be a frozen dataclass")

    def decorate(fn: Callable[..., MeasureResult]) -> Callable[..., MeasureResult]:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"measure {name!r} is already registered")
        _REGISTRY[name] = MeasureSpec(
            name, fn, reference, config_cls, kind, tuple(inputs), expected_sign, direction_reference
        )
        return fn

    return decorate


def _ensure_loaded() -> None:
    # The measure modules register themselves on import; importing the package imports them all.
    import xlgm.measures  # noqa: F401


def list_measures(kind: str | None = "model") -> list[str]:
    """Registered names, sorted. kind="model" (default): measures of one model on data; "group": measures of a
    group of runs; "outputs": label-free measures of a model's outputs on text; None: all."""
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


_KIND_TITLES = {
    "model": "measures of a checkpoint",
    "group": "measures of a run group",
    "outputs": "label-free measures",
}


def get_measure(name: str, kind: str | None = None) -> MeasureSpec:
    """The measure called `name` (case aside). An unknown name is one line with the nearest names and the list of
    the measures of `kind` (those the caller accepts; all when None)."""
    _ensure_loaded()
    spec = _REGISTRY.get(str(name).strip().lower())
    if spec is not None:
        return spec
    known = list_measures(kind)
    title = _KIND_TITLES.get(kind or "", "known measures")
    raise XlgmError(f"unknown measure {name!r}{did_you_mean(name, known)}; {title}: {', '.join(known)}")


def option_help(spec: MeasureSpec) -> list[tuple[str, str]]:
    """(`name=default`, help) of each of the measure's options; the help ends with the choices of a Literal."""
    hints = type_hints(spec.config_cls)
    rows = []
    for f in dataclasses.fields(spec.config_cls):
        default = default_of(f)
        choices = choices_of(hints[f.name])
        text = help_of(f) + (f" (one of {', '.join(map(str, choices))})" if choices else "")
        rows.append((f"{f.name} (required)" if default is ... else f"{f.name}={default!r}", text))
    return rows


def resolve_config(spec: MeasureSpec, config: Any) -> Any:
    """None -> defaults; a mapping -> the config its options give (`options.parse_options`: unknown options, and
    values of the wrong type or range, are one-line errors; a number written as text becomes the number its
    field expects); an instance -> itself."""
    if config is None:
        return spec.config_cls()
    if isinstance(config, spec.config_cls):
        return config
    if isinstance(config, Mapping):
        return parse_options(spec.config_cls, config, f"measure {spec.name}")
    raise XlgmError(
        f"config for measure {spec.name} must be a {spec.config_cls.__name__} or a dict, got {type(config).__name__}"
    )


# ---------------------------------------------------------------------------------------------------------
# Computing a measure
# ---------------------------------------------------------------------------------------------------------


def compute_measure(
    name: str,
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    config: Any = None,
    param_filter: ParamFilter = None,
    seed: int = 0,
    progress: Callable[[int, int | None], None] | None = None,
    criterion: loss_lib.Criterion | None = None,
    **inputs: Any,
) -> MeasureResult:
    """Compute measure `name` of `model` on `batches` (dicts of tensors on the model's device, with labels
    under `labels` or, as `datasets` names them, `label`).

    model: a Hugging Face sequence classifier, or any nn.Module called as `model(**inputs)` (the batch less
    its labels) that returns logits (batch, num_labels), a tuple starting with them, or an object with `.logits`.
    criterion: `criterion(logits, labels) -> the batch's mean loss` (a scalar tensor) used by the measures that
    look at the loss (sharpness, PAC-Bayes, Hessian); None: cross-entropy. Margins and the Fisher measures
    (the model's softmax likelihood) do not depend on it.

    config: None (defaults), a dict of options, or the measure's config instance. param_filter: None (every
    parameter with requires_grad=True), a regex searched in parameter names, or a callable name -> bool.
    seed: seeds the measure's private generator; the same seed gives the same value. Extra keyword inputs
    (e.g. `init_state=` for frobenius-distance) are passed to measures that declare them. progress: hears the
    steps of long measures (see `MeasureContext`).

    The model comes back exactly as it was (parameters, buffers, train/eval flags, requires_grad, .grad),
    also when the measure raises; the global RNG state is untouched.
    """
    spec = get_measure(name)
    if spec.kind != "model":
        raise XlgmError(f"{name} is a measure of a group of runs: use compute_group_measure({name!r}, state_dicts)")
    unknown = sorted(set(inputs) - set(spec.inputs))
    if unknown:
        raise XlgmError(
            f"measure {name} takes no input(s) {', '.join(unknown)}"
            + (f"; it takes: {', '.join(spec.inputs)}" if spec.inputs else "")
        )
    cfg = resolve_config(spec, config)
    batches = [_with_labels(batch) for batch in batches]
    if not batches:
        raise XlgmError(f"measure {name} needs at least one batch of data")
    with preserved(model, seed) as generator:
        named = select_parameters(model, param_filter)
        selected = {id(p) for _, p in named}
        for p in model.parameters():
            p.requires_grad_(id(p) in selected)
        ctx = MeasureContext(
            name=name,
            model=model,
            batches=batches,
            named_params=named,
            generator=generator,
            seed=seed,
            config=cfg,
            inputs=dict(inputs),
            param_filter=describe_filter(param_filter),
            progress=progress,
            criterion=criterion,
        )
        return spec.fn(ctx, cfg)


def _with_labels(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A batch with its labels under `labels` (the `datasets` column is `label`)."""
    batch = dict(batch)
    if "label" in batch:
        label = batch.pop("label")
        if "labels" not in batch:
            batch["labels"] = label
        elif not torch.equal(torch.as_tensor(label), torch.as_tensor(batch["labels"])):
            raise XlgmError("a batch holds both `label` and `labels`, and they differ")
    return batch


def compute_group_measure(
    name: str, state_dicts: Sequence[Mapping[str, torch.Tensor]], config: Any = None, param_filter: ParamFilter = None
) -> MeasureResult:
    """Compute a group measure (e.g. `parameter-variance-across-seeds`) of several runs' state dicts."""
    spec = get_measure(name)
    if spec.kind != "group":
        raise XlgmError(f"{name} is a measure of one model: use compute_measure({name!r}, model, batches)")
    return spec.fn(list(state_dicts), resolve_config(spec, config), param_filter)


def compute_output_measure(
    name: str, target: Any, config: Any = None, source: Any = None, peers: Sequence[Any] = ()
) -> MeasureResult:
    """Compute a label-free measure of `target` (a `TextOutputs`: a model's outputs on one language's text).

    source: the same model's outputs on source-language text (labelled where the measure needs labels, and
    row-aligned with `target` where it needs parallel text); peers: other models' outputs on the same text.
    """
    spec = get_measure(name)
    if spec.kind != "outputs":
        raise XlgmError(f"{name} is not a measure of model outputs (its kind is {spec.kind})")
    return spec.fn(target, resolve_config(spec, config), source, list(peers))
