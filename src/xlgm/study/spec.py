"""The study spec: one YAML file that says which runs to train, what to evaluate and measure, and how to analyse.

    name: demo
    task: xnli                       # xnli | pawsx | a task file (relative to this file), see xlgm.data.tasks
    model: embedded                  # embedded, a Hub id or a local folder
    source_language: en
    target_languages: all            # or a list; the source language is always evaluated too (for the gap)
    data: bundled                    # bundled | hf | a folder in XTREME's layout (relative to this file)
    train:                           # any TrainConfig option except the ones set elsewhere in the spec
      epochs: 1
      lr: 5.0e-5
      batch_size: 32
      max_train_examples: 800
    grid:                            # one entry per objective; a list value is an axis of the grid
      - objective: adamw
      - {objective: sam, rho: [0.02, 0.05]}
      - {objective: fisher, lam: 0.1, lr: [2.0e-5, 5.0e-5]}
    seeds: [0, 1]
    checkpoints: {every: 10}         # steps between measured checkpoints (TrainConfig.save_every), or
                                     # {steps: [10, 20]}: those steps (saved every gcd) and always the last one
    evaluation: {split: test, max_examples: 100, batch_size: 64}
    measures:                        # a list, or a mapping with names/data/params/seed
      names: [margin, frobenius-distance, {sharpness-diff: {num_draws: 2}}]
      data: {language: en, split: dev, max_examples: 64, batch_size: 32}
      params: null                   # parameter filter (regex); default: the trained parameters
      seed: 0
    analysis: {unit: checkpoint, run_reduce: last, n_boot: 1000, axes: auto, top: 10}

`load_spec(path)` validates everything (names of objectives and their options, measures and their options,
languages, types) and returns a frozen `StudySpec`; an error names the file and the field, e.g.
``studies/x.yaml: grid[1].rho: expected a number, got 'abc'``. `StudySpec.run_configs()` expands the grid into
`TrainConfig`s (ids: `TrainConfig.run_id`, the config hash), and `StudySpec.study_id` hashes the validated spec
(its canonical JSON, so comments, key order and formatting do not change it).

A number may be written as YAML reads it (`5.0e-5`) or as a string that Python reads as a float (`5e-5`, which
PyYAML leaves a string).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from xlgm.analysis.predict import DEFAULT_ALPHAS, FEATURES
from xlgm.core import validation
from xlgm.core.devices import PRECISION_CHOICES
from xlgm.data.tasks import get_task, is_task_file
from xlgm.errors import XlgmError
from xlgm.measures.base import get_measure, resolve_config
from xlgm.objectives import OBJECTIVES, build_config, config_fields
from xlgm.recipes.measure import MeasureData
from xlgm.recipes.train import TrainConfig, default_freeze
from xlgm.results import config_hash

TOP_KEYS = (
    "name",
    "task",
    "model",
    "source_language",
    "target_languages",
    "data",
    "train",
    "grid",
    "seeds",
    "checkpoints",
    "evaluation",
    "measures",
    "analysis",
    "prediction",
)
# TrainConfig fields the spec sets elsewhere (top level, grid entry, seeds, checkpoints).
NOT_IN_TRAIN = {
    "model": "model",
    "task": "task",
    "source_language": "source_language",
    "data": "data",
    "data_dir": "data",
    "objective": "grid[].objective",
    "objective_options": "grid[]",
    "seed": "seeds",
    "save_every": "checkpoints.every",
}
UNITS = ("checkpoint", "run")
MEASURE_AT = ("all", "best")
RUN_REDUCE = ("last", "best", "mean")
SPLITS = ("dev", "test", "train")


class SpecError(XlgmError):
    """A study spec is invalid; the message names the file and the field."""


# ------------------------------------------------------------------------------------------------------------
# Frozen pieces
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    kind: str = "bundled"  # bundled | local | hf
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
    every: int = 0  # 0: only the last checkpoint
    steps: tuple[int, ...] = ()  # measure exactly these steps (and the last one)
    last: int = 0  # with `every`: measure each run's newest N checkpoints only (0: all); with early stopping
    # (train.patience) the best one and those after it

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
    split: str = "test"
    max_examples: int | None = None
    batch_size: int = 64
    max_length: int | None = None  # None: the training max_length
    # Autocast of the evaluation's forward passes (`core.devices`): `auto` is bf16 on a GPU and on a CPU with
    # native bf16. `no` (fp32) by default, so a study's accuracies do not depend on the machine it ran on.
    mixed_precision: str = "no"


@dataclass(frozen=True)
class MeasureItem:
    name: str
    options: tuple[tuple[str, Any], ...] = ()
    at: str = "all"  # which of the measured checkpoints: all, or only each run's best (for costly measures)

    def applies(self, is_best: bool) -> bool:
        return self.at == "all" or is_best

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class MeasuresSpec:
    items: tuple[MeasureItem, ...] = ()
    data: MeasureData = MeasureData(max_length=None)  # None: the training max_length
    params: str | None = None
    seed: int = 0

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.items]


@dataclass(frozen=True)
class AnalysisSpec:
    unit: str = "checkpoint"
    run_reduce: str = "last"
    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0
    axes: tuple[str, ...] | None = None  # None: the axes that vary in the grid
    top: int = 10
    max_conditioning: int = 2


@dataclass(frozen=True)
class PredictionSpec:
    """`xlgm predict`: keep each evaluation's outputs (logits, and sentence embeddings of the first
    `embedding_rows` rows at `embedding_layer`) to compute label-free measures from, then fit the predictor."""

    enabled: bool = True
    parallel: bool = True  # the evaluation files are translations of each other, row by row (XNLI, PAWS-X)
    embedding_layer: int = -1
    embedding_rows: int = 1000
    features: tuple[str, ...] | None = None  # None: every feature the study's outputs give
    alphas: tuple[float, ...] = DEFAULT_ALPHAS


@dataclass(frozen=True)
class StudySpec:
    name: str
    task: str
    model: str
    source_language: str
    target_languages: tuple[str, ...]
    data: DataSpec
    train: tuple[tuple[str, Any], ...]
    grid: tuple[GridEntry, ...]
    seeds: tuple[int, ...]
    checkpoints: CheckpointSpec
    evaluation: EvaluationSpec
    measures: MeasuresSpec
    analysis: AnalysisSpec
    prediction: PredictionSpec = PredictionSpec()
    source: str = field(default="<spec>", compare=False)
    # The task file `task` was read from (absolute), None for a built-in task. The study is identified by the
    # task's name, like the data folder it is not part of the study id.
    task_file: str | None = field(default=None, compare=False)

    @property
    def languages(self) -> tuple[str, ...]:
        """Every evaluated language: the source first, then the targets."""
        return (self.source_language, *[t for t in self.target_languages if t != self.source_language])

    @property
    def train_options(self) -> dict[str, Any]:
        return dict(self.train)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        out.pop("task_file")
        # options added later, left out at their neutral value: specs without them keep their study ids
        if not self.checkpoints.last:
            del out["checkpoints"]["last"]
        for item in out["measures"]["items"]:
            if item["at"] == "all":
                del item["at"]
        return out

    @property
    def study_id(self) -> str:
        return config_hash(self.to_dict())

    def run_configs(self):
        """The grid expanded: one TrainConfig per (entry point, seed), duplicates removed, in spec order."""

        configs, seen = [], set()
        for entry in self.grid:
            for objective_options, overrides in entry.points():
                for seed in self.seeds:
                    kwargs = {**self.train_options, **overrides}
                    config = TrainConfig(
                        model=self.model,
                        task=self.task,
                        source_language=self.source_language,
                        data=self.data.kind,
                        data_dir=self.data.dir,
                        seed=seed,
                        save_every=self.checkpoints.save_every,
                        objective=entry.objective,
                        objective_options=objective_options,
                        **kwargs,
                    )
                    if config.run_id not in seen:
                        seen.add(config.run_id)
                        configs.append(config)
        return configs

    def to_yaml(self) -> str:
        """The spec as YAML that `parse_text` reads back to an equal spec (same study id), with every default
        written out and the data folder absolute: what the study folder keeps as OUT/spec.yaml."""
        import yaml

        def scalar_or_list(values: tuple) -> Any:
            return values[0] if len(values) == 1 else list(values)

        grid = []
        for entry in self.grid:
            item: dict[str, Any] = {"objective": entry.objective}
            item.update({k: scalar_or_list(v) for k, v in entry.objective_axes + entry.train_axes})
            grid.append(item)
        a = self.analysis
        doc = {
            "name": self.name,
            "task": self.task_file or self.task,
            "model": self.model,
            "source_language": self.source_language,
            "target_languages": list(self.target_languages),
            "data": self.data.dir if self.data.kind == "local" else self.data.kind,
            "train": dict(self.train),
            "grid": grid,
            "seeds": list(self.seeds),
            "checkpoints": {"steps": list(self.checkpoints.steps)}
            if self.checkpoints.steps
            else {
                "every": self.checkpoints.every,
                **({"last": self.checkpoints.last} if self.checkpoints.last else {}),
            },
            "evaluation": dataclasses.asdict(self.evaluation),
            "measures": {
                "names": [
                    {m.name: {**m.options_dict, **({"at": m.at} if m.at != "all" else {})}}
                    if m.options or m.at != "all"
                    else m.name
                    for m in self.measures.items
                ],
                "data": dataclasses.asdict(self.measures.data),
                "params": self.measures.params,
                "seed": self.measures.seed,
            },
            "analysis": {**dataclasses.asdict(a), "axes": list(a.axes) if a.axes else "auto"},
            "prediction": {
                **dataclasses.asdict(self.prediction),
                "alphas": list(self.prediction.alphas),
                "features": list(self.prediction.features) if self.prediction.features else "auto",
            },
        }
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)

    def eval_max_length(self) -> int:
        return self.evaluation.max_length or self.train_options.get("max_length", 128)

    def measure_data(self):
        """The `MeasureData` the measures see."""

        d = self.measures.data
        return dataclasses.replace(d, max_length=d.max_length or self.train_options.get("max_length", 128))

    def measure_config(self, item: MeasureItem) -> dict[str, Any]:
        """What identifies a measurement besides its name and data (as `xlgm measure` records it)."""
        return {"options": item.options_dict, "param_filter": self.measures.params, "seed": self.measures.seed}


# ------------------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, source: str, base_dir: Path | None):
        self.source = source
        self.base_dir = base_dir

    def fail(self, where: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")

    def validated(self, where: str, rule, value: Any, *args: Any) -> Any:
        """`rule(label, value, *args)` of xlgm.core.validation, its error naming this file and `where`."""
        try:
            return rule(f"{self.source}: {where}", value, *args)
        except SpecError:
            raise
        except XlgmError as err:
            raise SpecError(str(err)) from None

    def check(self, where: str, name: str, value: Any) -> Any:
        """`value` of a field `name` that the CLI and configs take too, checked by the same rule."""
        return self.validated(where, lambda label, v: validation.check_field(label, name, v), value)

    def shared(self, section: str, name: str, value: Any, *, allow_none: bool = False) -> int | None:
        """An integer option `section.name` with a shared rule (null: the section's default when allowed)."""
        where = f"{section}.{name}"
        value = self.integer(where, value, allow_none=allow_none)
        return None if value is None else self.check(where, name, value)

    # -- scalar types -------------------------------------------------------------------------------------

    def number(self, where: str, value: Any, *, allow_none: bool = False, positive: bool = False) -> float | None:
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(where, f"expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self.fail(where, f"expected a number, got {value!r}") from None
        if not math.isfinite(value):
            raise self.fail(where, f"expected a finite number, got {value!r}")
        if positive:
            self.validated(where, validation.positive_float, value)
        return int(value) if isinstance(value, int) else float(value)

    def integer(self, where: str, value: Any, *, allow_none: bool = False, minimum: int | None = None) -> int | None:
        if value is None and allow_none:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {value!r}")
        if minimum is not None:
            self.validated(where, validation.at_least, value, minimum)
        return value

    def string(self, where: str, value: Any, *, allow_none: bool = False, choices: Sequence[str] | None = None):
        if value is None and allow_none:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(where, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, where: str, value: Any, *, allow_none: bool = False):
        if value is None and allow_none:
            return None
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def typed(self, where: str, value: Any, annotation: str) -> Any:
        """Check `value` against a dataclass field annotation (as a string: 'float', 'int | None', ...)."""
        parts = {p.strip() for p in str(annotation).split("|")}
        allow_none = "None" in parts
        parts.discard("None")
        if value is None:
            if allow_none:
                return None
            raise self.fail(where, "expected a value, got null")
        kind = parts.pop() if len(parts) == 1 else None
        if kind == "float":  # 1 and 1.0 must give the same config hash
            return float(self.number(where, value, allow_none=allow_none))
        if kind == "int":
            return self.integer(where, value, allow_none=allow_none)
        if kind == "str":
            return self.string(where, value, allow_none=allow_none)
        if kind == "bool":
            return self.boolean(where, value, allow_none=allow_none)
        if isinstance(value, (Mapping, list)):
            raise self.fail(where, f"expected a single value, got {value!r}")
        return value

    def mapping(self, where: str, value: Any, allowed: Sequence[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping, got {value!r}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(where, f"expected string keys, got {key!r}")
            if allowed is not None and key not in allowed:
                raise self.fail(
                    f"{where}.{key}" if where else key, f"unknown field; expected one of: {', '.join(allowed)}"
                )
        return dict(value)

    def values(self, where: str, value: Any) -> list:
        """A scalar or a non-empty list of scalars (the values of one grid axis)."""
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(where, "expected at least one value, got an empty list")
        return items

    # -- sections -----------------------------------------------------------------------------------------

    def parse(self, raw: Any) -> StudySpec:
        top = self.mapping("", raw, TOP_KEYS)
        if not top:
            raise self.fail("", "expected a YAML mapping with at least `name`, `grid`")
        for required in ("name", "grid"):
            if required not in top:
                raise self.fail(required, "required field missing")
        name = self.string("name", top["name"])
        task, task_file = self.task(top.get("task", "xnli"))
        model = self.string("model", top.get("model", "embedded"))
        source_language = self.string(
            "source_language", top.get("source_language", task.source_language), choices=task.languages
        )
        targets = self.languages("target_languages", top.get("target_languages", "all"), task, source_language)
        data = self.data(top.get("data", "bundled"))
        train = self.train(top.get("train"), model)
        seeds = self.seeds(top.get("seeds", [0]))
        checkpoints = self.checkpoints(top.get("checkpoints"))
        grid = self.grid(top["grid"])
        evaluation = self.evaluation(top.get("evaluation"))
        measures = self.measures(top.get("measures"), task, source_language)
        analysis = self.analysis(top.get("analysis"))
        prediction = self.prediction(top.get("prediction"))
        spec = StudySpec(
            name=name,
            task=task.name,
            model=model,
            source_language=source_language,
            target_languages=tuple(targets),
            data=data,
            train=tuple(sorted(train.items())),
            grid=tuple(grid),
            seeds=tuple(seeds),
            checkpoints=checkpoints,
            evaluation=evaluation,
            measures=measures,
            analysis=analysis,
            prediction=prediction,
            source=self.source,
            task_file=task_file,
        )
        self.check_runs(spec)
        return spec

    def languages(self, where: str, value: Any, task, source_language: str) -> list[str]:
        if value == "all":
            codes = list(task.languages)
        else:
            if isinstance(value, str):
                value = self.validated(where, validation.comma_list, value)
            if not isinstance(value, list):
                raise self.fail(where, f"expected `all` or a list of language codes, got {value!r}")
            codes = self.validated(where, validation.non_empty_list, value)
            codes = [self.string(f"{where}[{i}]", c).strip() for i, c in enumerate(codes)]
            for i, code in enumerate(codes):
                if code not in task.languages:
                    raise self.fail(
                        f"{where}[{i}]",
                        f"unknown language {code!r} for {task.name}; expected one of: {' '.join(task.languages)}",
                    )
        targets = [c for c in dict.fromkeys(codes) if c != source_language]
        if not targets:
            raise self.fail(where, f"no target language besides the source language {source_language!r}")
        return targets

    def task(self, value: Any):
        """A task name or a task file (relative to the spec) -> (the task, its file's absolute path or None)."""

        ref = self.string("task", value)
        path = None
        if is_task_file(ref):
            path = Path(ref).expanduser()
            if not path.is_absolute() and self.base_dir is not None:
                path = (self.base_dir / path).resolve()
            ref = str(path)
        try:
            task = get_task(ref)
        except XlgmError as err:
            raise self.fail("task", str(err)) from None
        return task, None if path is None else str(path)

    def data(self, value: Any) -> DataSpec:
        if isinstance(value, Mapping):
            m = self.mapping("data", value, ("dir",))
            value = self.string("data.dir", m.get("dir"))
        value = self.string("data", value)
        if value in ("bundled", "hf"):
            return DataSpec(value)
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = (self.base_dir / path).resolve()
        if not path.is_dir():
            raise self.fail(
                "data", f"expected bundled, hf or a folder in XTREME's layout; {str(path)!r} is not a folder"
            )
        return DataSpec("local", str(path))

    def _train_fields(self) -> dict[str, str]:

        return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}

    def train(self, value: Any, model: str) -> dict[str, Any]:
        fields = self._train_fields()
        m = self.mapping("train", value)
        out: dict[str, Any] = {}
        for key, v in m.items():
            if key in NOT_IN_TRAIN:
                raise self.fail(f"train.{key}", f"set by the spec's `{NOT_IN_TRAIN[key]}`, not in `train`")
            if key not in fields:
                allowed = [f for f in fields if f not in NOT_IN_TRAIN]
                raise self.fail(f"train.{key}", f"unknown training option; expected one of: {', '.join(allowed)}")
            out[key] = self.check(f"train.{key}", key, self.typed(f"train.{key}", v, fields[key]))
        if "freeze" not in out and default_freeze(model) != "none":  # as `xlgm train`
            out["freeze"] = default_freeze(model)
        return out

    def seeds(self, value: Any) -> list[int]:
        items = self.validated("seeds", validation.non_empty_list, value if isinstance(value, list) else [value])
        seeds = [self.check(f"seeds[{i}]", "seed", self.integer(f"seeds[{i}]", s)) for i, s in enumerate(items)]
        return list(dict.fromkeys(seeds))

    def checkpoints(self, value: Any) -> CheckpointSpec:
        m = self.mapping("checkpoints", value, ("every", "steps", "last"))
        if "every" in m and "steps" in m:
            raise self.fail("checkpoints", "give `every` or `steps`, not both")
        if "last" in m and "steps" in m:
            raise self.fail("checkpoints.last", "`last` goes with `every`; `steps` names the measured steps")
        if "steps" in m:
            raw = m["steps"]
            if not isinstance(raw, list) or not raw:
                raise self.fail("checkpoints.steps", f"expected a non-empty list of steps, got {raw!r}")
            steps = sorted({self.integer(f"checkpoints.steps[{i}]", s, minimum=1) for i, s in enumerate(raw)})
            return CheckpointSpec(steps=tuple(steps))
        return CheckpointSpec(
            every=self.integer("checkpoints.every", m.get("every", 0), minimum=0),
            last=self.integer("checkpoints.last", m.get("last", 0), minimum=0),
        )

    def grid(self, value: Any) -> list[GridEntry]:

        if not isinstance(value, list) or not value:
            raise self.fail("grid", "expected a non-empty list of entries like {objective: sam, rho: [0.02, 0.05]}")
        train_fields = self._train_fields()
        entries = []
        for i, raw in enumerate(value):
            where = f"grid[{i}]"
            if isinstance(raw, str):
                raw = {"objective": raw}
            m = self.mapping(where, raw)
            objective = self.string(f"{where}.objective", m.pop("objective", None), choices=tuple(OBJECTIVES))
            option_types = {f.name: str(f.type) for f in dataclasses.fields(OBJECTIVES[objective].config)}
            objective_axes, train_axes = [], []
            for key in sorted(m):
                values = self.values(f"{where}.{key}", m[key])
                if key in option_types:
                    checked = tuple(
                        self.typed(
                            f"{where}.{key}" + (f"[{j}]" if isinstance(m[key], list) else ""), v, option_types[key]
                        )
                        for j, v in enumerate(values)
                    )
                    objective_axes.append((key, checked))
                elif key in train_fields and key not in NOT_IN_TRAIN:
                    labels = [
                        f"{where}.{key}" + (f"[{j}]" if isinstance(m[key], list) else "") for j in range(len(values))
                    ]
                    checked = tuple(
                        self.check(label, key, self.typed(label, v, train_fields[key]))
                        for label, v in zip(labels, values)
                    )
                    train_axes.append((key, checked))
                elif key in NOT_IN_TRAIN:
                    raise self.fail(f"{where}.{key}", f"set by the spec's `{NOT_IN_TRAIN[key]}`, not in a grid entry")
                else:
                    options = ", ".join(config_fields(objective)) or "none"
                    raise self.fail(
                        f"{where}.{key}",
                        f"neither an option of objective {objective} ({options}) nor a training option",
                    )
            entries.append(GridEntry(objective, tuple(objective_axes), tuple(train_axes)))
        return entries

    def evaluation(self, value: Any) -> EvaluationSpec:
        m = self.mapping("evaluation", value, ("split", "max_examples", "batch_size", "max_length", "mixed_precision"))
        d = EvaluationSpec()
        return EvaluationSpec(
            split=self.string("evaluation.split", m.get("split", d.split), choices=SPLITS),
            max_examples=self.shared("evaluation", "max_examples", m.get("max_examples"), allow_none=True),
            batch_size=self.shared("evaluation", "batch_size", m.get("batch_size", d.batch_size)),
            max_length=self.shared("evaluation", "max_length", m.get("max_length"), allow_none=True),
            mixed_precision=self.string(
                "evaluation.mixed_precision", m.get("mixed_precision", d.mixed_precision), choices=PRECISION_CHOICES
            ),
        )

    def measures(self, value: Any, task, source_language: str) -> MeasuresSpec:

        if value is None:
            value = {"names": []}
        if isinstance(value, list):
            value = {"names": value}
        m = self.mapping("measures", value, ("names", "data", "params", "seed"))
        names = m.get("names", [])
        if isinstance(names, Mapping):
            names = [{k: v} for k, v in names.items()]
        if not isinstance(names, list):
            raise self.fail("measures.names", f"expected a list of measure names, got {names!r}")
        items, seen = [], set()
        for i, raw in enumerate(names):
            where = f"measures.names[{i}]"
            if isinstance(raw, Mapping):
                if len(raw) != 1:
                    raise self.fail(where, f"expected NAME or {{NAME: {{option: value}}}}, got {raw!r}")
                ((name, options),) = raw.items()
                options = dict(self.mapping(f"{where}.{name}", options))
            else:
                name, options = self.string(where, raw), {}
            at = self.string(f"{where}.{name}.at", options.pop("at", "all"), choices=MEASURE_AT)
            try:
                spec = get_measure(name)
            except XlgmError as err:
                raise self.fail(where, str(err)) from None
            if spec.kind != "model":
                raise self.fail(where, f"{name} is a measure of a group of runs, not of one checkpoint")
            try:
                resolve_config(spec, options)
            except (XlgmError, TypeError, ValueError) as err:
                raise self.fail(f"{where}.{name}", str(err)) from None
            if name in seen:
                raise self.fail(where, f"measure {name} is listed twice")
            seen.add(name)
            items.append(MeasureItem(name, tuple(sorted(options.items())), at))
        dm = self.mapping(
            "measures.data", m.get("data"), ("language", "split", "max_examples", "batch_size", "max_length")
        )
        d = MeasureData(language=source_language, max_length=None)
        data = MeasureData(
            language=self.string("measures.data.language", dm.get("language", d.language), choices=task.languages),
            split=self.string("measures.data.split", dm.get("split", d.split), choices=SPLITS),
            max_examples=self.shared("measures.data", "max_examples", dm.get("max_examples", d.max_examples)),
            batch_size=self.shared("measures.data", "batch_size", dm.get("batch_size", d.batch_size)),
            max_length=self.shared("measures.data", "max_length", dm.get("max_length"), allow_none=True),
        )
        params = self.string("measures.params", m.get("params"), allow_none=True)
        if params is not None:
            import re

            try:
                re.compile(params)
            except re.error as err:
                raise self.fail("measures.params", f"expected a regular expression ({err})") from None
        seed = self.shared("measures", "seed", m.get("seed", 0))
        return MeasuresSpec(tuple(items), data, params, seed)

    def analysis(self, value: Any) -> AnalysisSpec:
        m = self.mapping(
            "analysis", value, ("unit", "run_reduce", "n_boot", "confidence", "seed", "axes", "top", "max_conditioning")
        )
        d = AnalysisSpec()
        axes = m.get("axes", "auto")
        if axes in ("auto", None):
            axes = None
        else:
            if not isinstance(axes, list) or not axes:
                raise self.fail("analysis.axes", f"expected `auto` or a list of config names, got {axes!r}")
            axes = tuple(self.string(f"analysis.axes[{i}]", a) for i, a in enumerate(axes))
        confidence = self.number("analysis.confidence", m.get("confidence", d.confidence))
        if not 0 < confidence < 1:
            raise self.fail("analysis.confidence", f"expected a number in (0, 1), got {confidence!r}")
        return AnalysisSpec(
            unit=self.string("analysis.unit", m.get("unit", d.unit), choices=UNITS),
            run_reduce=self.string("analysis.run_reduce", m.get("run_reduce", d.run_reduce), choices=RUN_REDUCE),
            n_boot=self.integer("analysis.n_boot", m.get("n_boot", d.n_boot), minimum=0),
            confidence=float(confidence),
            seed=self.shared("analysis", "seed", m.get("seed", d.seed)),
            axes=axes,
            top=self.integer("analysis.top", m.get("top", d.top), minimum=1),
            max_conditioning=self.integer(
                "analysis.max_conditioning", m.get("max_conditioning", d.max_conditioning), minimum=0
            ),
        )

    def prediction(self, value: Any) -> PredictionSpec:

        m = self.mapping(
            "prediction", value, ("enabled", "parallel", "embedding_layer", "embedding_rows", "features", "alphas")
        )
        d = PredictionSpec()
        features = m.get("features", "auto")
        if features in ("auto", None):
            features = None
        else:
            if not isinstance(features, list) or not features:
                raise self.fail("prediction.features", f"expected `auto` or a list of feature names, got {features!r}")
            features = tuple(
                self.string(f"prediction.features[{i}]", f, choices=tuple(FEATURES)) for i, f in enumerate(features)
            )
        alphas = m.get("alphas", list(d.alphas))
        if not isinstance(alphas, list) or not alphas:
            raise self.fail("prediction.alphas", f"expected a list of positive numbers, got {alphas!r}")
        return PredictionSpec(
            enabled=self.boolean("prediction.enabled", m.get("enabled", d.enabled)),
            parallel=self.boolean("prediction.parallel", m.get("parallel", d.parallel)),
            embedding_layer=self.integer("prediction.embedding_layer", m.get("embedding_layer", d.embedding_layer)),
            embedding_rows=self.integer(
                "prediction.embedding_rows", m.get("embedding_rows", d.embedding_rows), minimum=0
            ),
            features=features,
            alphas=tuple(float(self.number(f"prediction.alphas[{i}]", a, positive=True)) for i, a in enumerate(alphas)),
        )

    def check_runs(self, spec: StudySpec) -> None:
        """Build every TrainConfig and objective config now, so a bad value fails before any training."""

        for i, entry in enumerate(spec.grid):
            for options, overrides in entry.points():
                try:
                    build_config(entry.objective, **options)
                except (XlgmError, TypeError, ValueError) as err:
                    raise self.fail(f"grid[{i}]", str(err)) from None
                try:
                    TrainConfig(
                        model=spec.model,
                        task=spec.task,
                        source_language=spec.source_language,
                        data=spec.data.kind,
                        data_dir=spec.data.dir,
                        **{**spec.train_options, **overrides},
                        save_every=spec.checkpoints.save_every,
                        objective=entry.objective,
                        objective_options=options,
                    )
                except XlgmError as err:
                    where = f"grid[{i}]" if set(overrides) else "train"
                    raise self.fail(where, str(err)) from None


def parse_spec(raw: Any, source: str = "<spec>", base_dir: str | Path | None = None) -> StudySpec:
    """Validate an already-loaded YAML document (a dict) into a `StudySpec`."""
    return _Parser(source, Path(base_dir) if base_dir is not None else None).parse(raw)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec file (YAML, `yaml.safe_load`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read the spec ({err})") from None
    return parse_text(text, str(path), path.parent)


def parse_text(text: str, source: str = "<spec>", base_dir: str | Path | None = None) -> StudySpec:
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{where}: expected valid YAML ({problem})") from None
    return parse_spec(raw, source, base_dir)
