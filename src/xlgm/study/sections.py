"""The frozen sections of a study spec (`StudySpec` holds them). Each field's type, default, help and rule say
what the spec file may write there: `xlgm.study.schema` builds the file's pydantic models from these classes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Literal

from xlgm.analysis.frame import RunReduce, Unit
from xlgm.analysis.predict import DEFAULT_ALPHAS
from xlgm.core import validation
from xlgm.core.devices import Precision
from xlgm.core.options import option
from xlgm.data.splits import Split
from xlgm.recipes.measure import MeasureData

MeasureAt = Literal["all", "best"]


def steps_rule(label: str, value: Any) -> tuple[int, ...]:
    """Checkpoint steps: integers >= 1, kept sorted and once each."""
    return tuple(sorted({validation.positive_int(label, step) for step in value}))


def open_unit_interval(label: str, value: Any) -> float:
    number = validation.finite_number(label, value)
    validation.require(0 < number < 1, f"{label}: expected a number in (0, 1), got {number:g}")
    return number


def positive_numbers(label: str, value: Any) -> tuple[float, ...]:
    return tuple(validation.positive_float(label, v) for v in value)


@dataclass(frozen=True)
class DataSpec:
    kind: Literal["bundled", "local", "hf"] = "bundled"
    dir: str | None = None


@dataclass(frozen=True)
class GridEntry:
    """One objective with its axes: (name, values) pairs; a name is an objective option or a TrainConfig field."""

    objective: str
    objective_axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    train_axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def points(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(objective options, train overrides) of every point of the entry's product, in a stable order."""
        names = [n for n, _ in self.objective_axes] + [n for n, _ in self.train_axes]
        values = [v for _, v in self.objective_axes] + [v for _, v in self.train_axes]
        n_obj = len(self.objective_axes)
        out = []
        for combo in itertools.product(*values):
            # an objective option set to null takes its default: leave it out (the same run id as not naming it)
            options = {k: v for k, v in zip(names[:n_obj], combo[:n_obj]) if v is not None}
            out.append((options, dict(zip(names[n_obj:], combo[n_obj:]))))
        return out


@dataclass(frozen=True)
class CheckpointSpec:
    every: int = field(
        default=0,
        metadata=option(help="steps between measured checkpoints (0: the last only)", rule=validation.non_negative_int),
    )
    steps: tuple[int, ...] = field(
        default=(), metadata=option(help="measure exactly these steps (saved every gcd) and the last", rule=steps_rule)
    )
    last: int = field(
        default=0,
        metadata=option(
            help="with `every`: measure each run's newest N checkpoints only (0: all); with early stopping "
            "(train.patience) the best one and those after it",
            rule=validation.non_negative_int,
        ),
    )

    @property
    def save_every(self) -> int:
        if self.steps:
            return reduce(math.gcd, self.steps)
        return self.every

    def selects(self, run_ids: Sequence[str], steps: Sequence[int]) -> list[bool]:
        """Which of these checkpoints (of one run or several) the study evaluates and measures: every one, the
        named steps and each run's last, or each run's newest `last`."""
        by_run: dict[str, list[int]] = {}
        for run_id, step in zip(run_ids, steps):
            by_run.setdefault(run_id, []).append(int(step))
        newest = {r: set(sorted(s)[-(self.last or 1) :]) for r, s in by_run.items()}
        if self.steps:
            return [int(s) in self.steps or int(s) in newest[r] for r, s in zip(run_ids, steps)]
        if self.last:
            return [int(s) in newest[r] for r, s in zip(run_ids, steps)]
        return [True] * len(steps)


@dataclass(frozen=True)
class EvaluationSpec:
    # the spec reader puts the task's evaluation split here when the file names none (test; PAN-X: dev)
    split: Split = field(
        default="test", metadata=option(help="the evaluated split of every language (default: the task's)")
    )
    max_examples: int | None = field(default=None, metadata=option(help="rows a language (null: all)"))
    batch_size: int = 64
    max_length: int | None = field(default=None, metadata=option(help="null: the training max_length"))
    # `no` (fp32) by default, so a study's accuracies do not depend on the machine it ran on.
    mixed_precision: Precision = field(
        default="no",
        metadata=option(help="autocast of the evaluation: auto is bf16 on a GPU and on a CPU with native bf16"),
    )


@dataclass(frozen=True)
class MeasureItem:
    """One setting of a measure of the spec (an entry that lists values, a sweep, gives one item a value): its
    options as the file wrote them (what the study id and the measure units' ids hash, so they are kept as
    written: `75` for a float option stays 75), the config they give, which is what the measure computes with,
    and the data it sees when that is not the spec's `measures.data` (a data-size sweep, or the entry's own
    `max_examples`)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    at: MeasureAt = "all"  # which of the measured checkpoints: all, or only each run's best (for costly measures)
    config: Any = None  # the measure's config (None: its defaults); not part of the study id
    data: MeasureData | None = None  # None: the spec's `measures.data`

    def applies(self, is_best: bool) -> bool:
        return self.at == "all" or is_best

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)


# How the analysis names a setting's data size (`margin[rows=64]`).
ROWS = "rows"


@dataclass(frozen=True)
class MeasuresSpec:
    items: tuple[MeasureItem, ...] = ()
    data: MeasureData = MeasureData(max_length=None)  # None: the training max_length; a size sweep: its first size
    params: str | None = None
    seed: int = 0
    sizes: tuple[int | None, ...] = ()  # `data.max_examples` given as a list of two or more: every measure's sizes

    @property
    def names(self) -> list[str]:
        """The measures, once each (a swept measure has several items)."""
        return list(dict.fromkeys(m.name for m in self.items))

    def data_of(self, item: MeasureItem) -> MeasureData:
        return item.data or self.data

    def swept(self, name: str) -> tuple[str, ...]:
        """What varies over a measure's items: `max_examples` first, then its options (sorted)."""
        items = [m for m in self.items if m.name == name]
        keys = sorted({k for m in items for k, _ in m.options})
        varying = [k for k in keys if len({repr(m.options_dict.get(k)) for m in items}) > 1]
        sizes = {self.data_of(m).max_examples for m in items}
        return (("max_examples",) if len(sizes) > 1 else ()) + tuple(varying)

    def setting(self, item: MeasureItem) -> dict[str, Any]:
        """The values that tell a swept measure's item from its others (empty when the measure is not swept):
        `max_examples`, and each swept option as its config holds it (a number written as text is the number)."""
        return {
            key: self.data_of(item).max_examples if key == "max_examples" else getattr(item.config, key)
            for key in self.swept(item.name)
        }

    def label(self, item: MeasureItem) -> str:
        """The item's name in the analysis: the measure's name, and its setting when the measure is swept
        (`sharpness-diff[rows=64,sigma=0.001]`)."""
        setting = self.setting(item)
        if not setting:
            return item.name
        parts = [
            f"{ROWS}={'all' if v is None else v}" if k == "max_examples" else f"{k}={_short(v)}"
            for k, v in setting.items()
        ]
        return f"{item.name}[{','.join(parts)}]"

    @property
    def labels(self) -> list[str]:
        return [self.label(m) for m in self.items]

    @property
    def primary_labels(self) -> list[str]:
        """Each measure once, at the setting the verdict judges it by: its first entry in the spec, at that
        entry's largest data size (all rows counting as the largest). A sweep's other settings go to the
        sensitivity table, a multiple-testing family of its own, so sweeping a measure does not weaken the
        correction of the verdict's tests."""
        out = []
        for name in self.names:
            items = [m for m in self.items if m.name == name]
            first = [m for m in items if m.options == items[0].options]
            out.append(self.label(max(first, key=lambda m: _size(self.data_of(m).max_examples))))
        return out


def _size(rows: int | None) -> float:
    return math.inf if rows is None else rows


def _short(value: Any) -> str:
    if value is None:  # the measure's own default (e.g. sharpness-diff's σ by mode)
        return "default"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class AnalysisSpec:
    unit: Unit = field(
        default="checkpoint",
        metadata=option(help="what one point is; intervals and p-values resample and permute whole runs"),
    )
    run_reduce: RunReduce = field(default="last", metadata=option(help="unit run: which checkpoint stands for it"))
    n_boot: int = field(default=1000, metadata=option(help="bootstrap resamples", rule=validation.non_negative_int))
    confidence: float = field(default=0.95, metadata=option(help="of the intervals", rule=open_unit_interval))
    seed: int = 0
    axes: tuple[str, ...] | None = field(
        default=None, metadata=option(help="config names to condition on (auto: the axes that vary in the grid)")
    )
    top: int = field(default=10, metadata=option(help="rows of the report's tables", rule=validation.positive_int))
    max_conditioning: int = field(
        default=2, metadata=option(help="axes conditioned on at once", rule=validation.non_negative_int)
    )


@dataclass(frozen=True)
class PredictionSpec:
    """`xlgm predict`: keep each evaluation's outputs (logits, and sentence embeddings of the first
    `embedding_rows` rows at `embedding_layer`) to compute label-free measures from, then fit the predictor."""

    enabled: bool = field(default=True, metadata=option(help="keep the outputs and fit the predictor"))
    parallel: bool = field(
        default=True,
        metadata=option(help="the evaluation files are translations of each other, row by row (XNLI, PAWS-X)"),
    )
    embedding_layer: int = -1
    embedding_rows: int = field(
        default=1000,
        metadata=option(help="rows a language whose embeddings are kept", rule=validation.non_negative_int),
    )
    features: tuple[str, ...] | None = field(
        default=None, metadata=option(help="the predictor's features (auto: every one the study's outputs give)")
    )
    alphas: tuple[float, ...] = field(
        default=DEFAULT_ALPHAS, metadata=option(help="ridge penalties tried", rule=positive_numbers)
    )
