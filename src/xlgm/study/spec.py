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

`load_spec(path)` validates everything and returns a frozen `StudySpec`: first the document's types and ranges
(pydantic models built from the configs, `xlgm.study.schema`; `xlgm study schema` prints them as JSON Schema),
then what needs the task, the registries or a whole config (languages, measure options, every TrainConfig of
the grid). Every error of both is reported at once, one a line, naming the file, the line and the field:
``studies/x.yaml:7: grid[1].rho: expected a number, got 'abc'``. `StudySpec.run_configs()` expands the grid
into `TrainConfig`s (ids: `TrainConfig.run_id`, the config hash), and `StudySpec.study_id` hashes the validated
spec (its canonical JSON, so comments, key order and formatting do not change it).

A number may be written as YAML reads it (`5.0e-5`) or as a string that Python reads as a float (`5e-5`, which
PyYAML leaves a string); a float option given an integer is that float (the same study id).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import error_message, got
from xlgm.data.batching import MAX_LENGTH
from xlgm.data.tasks import Task, get_task, is_task_file
from xlgm.objectives import build_config, config_fields
from xlgm.recipes.measure import MeasureData
from xlgm.recipes.train import TrainConfig, build_objective, default_freeze
from xlgm.results import config_hash
from xlgm.study.schema import (
    NOT_IN_TRAIN,
    DataDir,
    allowed_keys,
    as_list,
    document_model,
    entry_list,
    measure_options_model,
    measures_mapping,
)
from xlgm.study.sections import (
    AnalysisSpec,
    CheckpointSpec,
    DataSpec,
    EvaluationSpec,
    GridEntry,
    MeasureItem,
    MeasuresSpec,
    PredictionSpec,
)

__all__ = [
    "AnalysisSpec",
    "CheckpointSpec",
    "DataSpec",
    "EvaluationSpec",
    "GridEntry",
    "MeasureItem",
    "MeasuresSpec",
    "PredictionSpec",
    "SpecError",
    "StudySpec",
    "load_spec",
    "parse_spec",
    "parse_text",
]


class SpecError(XlgmError):
    """A study spec is invalid; the message names the file and the field."""


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
            del item["config"]  # the options as written identify it
            if item["at"] == "all":
                del item["at"]
            if item["data"] is None:
                del item["data"]
        if not self.measures.sizes:
            del out["measures"]["sizes"]
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
                    config = self.train_config(entry.objective, objective_options, overrides, seed)
                    if config.run_id not in seen:
                        seen.add(config.run_id)
                        configs.append(config)
        return configs

    def train_config(
        self, objective: str, objective_options: dict[str, Any], overrides: dict[str, Any], seed: int | None = None
    ) -> TrainConfig:
        """The TrainConfig of one grid point: the spec's settings, its `train:` section, the point's training axes
        (`overrides`) and objective options, and `seed` (None: TrainConfig's default)."""
        seeded: dict[str, Any] = {} if seed is None else {"seed": seed}
        return TrainConfig(
            model=self.model,
            task=self.task,
            source_language=self.source_language,
            data=self.data.kind,
            data_dir=self.data.dir,
            save_every=self.checkpoints.save_every,
            objective=objective,
            objective_options=objective_options,
            **seeded,
            **{**self.train_options, **overrides},
        )

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
                "names": measure_entries(self.measures),
                "data": {
                    **dataclasses.asdict(self.measures.data),
                    **({"max_examples": list(self.measures.sizes)} if self.measures.sizes else {}),
                },
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

    @property
    def train_max_length(self) -> int:
        """The runs' max_length: the `train:` section's, else the default."""
        return self.train_options.get("max_length", MAX_LENGTH)

    def eval_max_length(self) -> int:
        return self.evaluation.max_length or self.train_max_length

    def measure_data(self, item: MeasureItem | None = None) -> MeasureData:
        """The `MeasureData` a measure item sees (None: the spec's `measures.data`), its max_length resolved."""

        d = self.measures.data if item is None else self.measures.data_of(item)
        return dataclasses.replace(d, max_length=d.max_length or self.train_max_length)

    def measure_config(self, item: MeasureItem) -> dict[str, Any]:
        """What identifies a measurement besides its name and data (as `xlgm measure` records it)."""
        return {"options": item.options_dict, "param_filter": self.measures.params, "seed": self.measures.seed}


def measure_entries(measures: MeasuresSpec) -> list[Any]:
    """`measures.names` as a file writes it: a measure's items gathered back into one entry when they are the
    product of some options' values (an option that takes several values a list, in the items' order, which is
    the order the file listed them in) over its data sizes (its own `max_examples` where they are not the
    spec's); items that no one entry gives are split into the longest runs that one does (a single item always
    does), so the entries give these items again, in order."""
    spec_sizes = list(measures.sizes) or [measures.data.max_examples]

    def entry(name: str, items: list[MeasureItem]) -> Any:
        written: dict[str, Any] = {}
        for key in dict.fromkeys(k for m in items for k, _ in m.options):
            values = list({repr(v): v for v in (m.options_dict.get(key) for m in items)}.values())
            written[key] = values[0] if len(values) == 1 else values
        if items[0].at != "all":
            written["at"] = items[0].at
        sizes = list(dict.fromkeys(measures.data_of(m).max_examples for m in items))
        if sizes != spec_sizes:
            written["max_examples"] = sizes[0] if len(sizes) == 1 else sizes
        return {name: written} if written else name

    def expands_to(name: str, written: Any, items: list[MeasureItem]) -> bool:
        """Whether the entry's product (sizes outermost, then the options by name) is exactly `items`."""
        options = {} if isinstance(written, str) else dict(written[name])
        at = options.pop("at", "all")
        sizes = as_list(options.pop("max_examples")) if "max_examples" in options else spec_sizes
        keys = sorted(options)
        points = [
            (size, tuple(zip(keys, combo)))
            for size in sizes
            for combo in itertools.product(*(as_list(options[k]) for k in keys))
        ]
        got = [(measures.data_of(m).max_examples, m.options) for m in items]
        return points == got and all(m.at == at for m in items)

    entries: list[Any] = []
    for name in measures.names:
        items = [m for m in measures.items if m.name == name]
        start = 0
        while start < len(items):  # the longest run of items from `start` that one entry gives
            end = next(
                e for e in range(len(items), start, -1) if expands_to(name, entry(name, items[start:e]), items[start:e])
            )
            entries.append(entry(name, items[start:end]))
            start = end
    return entries


# ------------------------------------------------------------------------------------------------------------
# Reading a spec: the document's types and ranges (pydantic, `xlgm.study.schema`), then what needs the task,
# the registries or a whole config; every error of both passes is reported at once.
# ------------------------------------------------------------------------------------------------------------

Location = tuple[str | int, ...]


def where(loc: Location) -> str:
    """('grid', 1, 'rho') -> 'grid[1].rho'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _walk(raw: Any, loc: tuple[Any, ...]) -> tuple[Location, Location | None]:
    """The part of a pydantic error location that names places in the file (union members, discriminator tags
    and the index pydantic gives a scalar it read as a one-value list are left out), and where the first part
    left out was (the union's place), or None."""
    out: list[str | int] = []
    union: Location | None = None
    node = raw
    for i, part in enumerate(loc):
        if isinstance(part, str) and out and part == out[-1]:
            continue  # a measure entry's tag, then its one field: the measure's name once in the file
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            node = node[part]
            out.append(part)
        elif isinstance(part, str) and isinstance(node, Mapping) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(part, str) and i == len(loc) - 1 and isinstance(node, Mapping):
            out.append(part)  # a missing field
        elif union is None:
            union = tuple(out)
    return tuple(out), union


def _unknown_key(loc: Location, raw: Any) -> str:
    key = loc[-1]
    section = where(tuple(p for p in loc[:-1] if isinstance(p, str)))
    if section == "train":
        if key in NOT_IN_TRAIN:
            return f"set by the spec's `{NOT_IN_TRAIN[key]}`, not in `train`"
        return f"unknown training option; expected one of: {', '.join(allowed_keys('train'))}"
    if section == "grid":
        if key in NOT_IN_TRAIN:
            return f"set by the spec's `{NOT_IN_TRAIN[key]}`, not in a grid entry"
        objective = raw["grid"][loc[1]]["objective"]
        options = ", ".join(config_fields(objective)) or "none"
        return f"neither an option of objective {objective} ({options}) nor a training option"
    return f"unknown field; expected one of: {', '.join(allowed_keys(section))}"


def _message(error: Any, loc: Location, raw: Any) -> tuple[Location, str]:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden" and loc[:2] == ("measures", "names") and len(loc) > 3:
        name = next(part for part in loc[2:-1] if isinstance(part, str))
        known = ", ".join(sorted(measure_options_model(name).model_fields))
        return loc[:-1], f"unknown option(s) {loc[-1]} for measure {name}; known: {known}"
    if kind == "extra_forbidden":
        return loc, _unknown_key(loc, raw)
    if kind == "union_tag_invalid":  # the grid entry's objective
        return (*loc, "objective"), f"expected one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return (*loc, "objective"), "required field missing"
    return loc, error_message(error)


# pydantic's error types for a value of the wrong kind, and what the file should have held instead
KINDS = {
    "list_type": "a list",
    "tuple_type": "a list",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
}


def document_errors(err: ValidationError, raw: Any) -> list[tuple[Location, str]]:
    """pydantic's errors as (location in the file, message). A value that no member of a union takes gives an
    error per member: those of the members that took its kind are kept, or, when every member refused it for
    its kind, one message listing the kinds expected."""
    out: list[tuple[Location, str]] = []
    unions: dict[Location, list[tuple[Location, str, Any]]] = {}
    for error in err.errors(include_url=False):
        walked, union = _walk(raw, error["loc"])
        loc, message = _message(error, walked, raw)
        if union is None or error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            out.append((loc, message))
        else:
            unions.setdefault(union, []).append((loc, message, error))
    for union, group in unions.items():
        kind_errors = [g for g in group if g[0] == union and (g[2]["type"] in KINDS or g[2]["type"] == "literal_error")]
        specific = [g for g in group if g not in kind_errors]
        if specific:
            out.extend(dict.fromkeys((loc, message) for loc, message, _ in specific))
        else:
            kinds = [KINDS.get(e["type"]) or f"one of {(e.get('ctx') or {}).get('expected')}" for _, _, e in group]
            value = group[0][2].get("input")
            out.append((union, f"expected {' or '.join(dict.fromkeys(kinds))}{got(value)}"))
    return out


def line_numbers(text: str) -> dict[Location, int]:
    """The line (1-based) of every key and list item of a YAML document, by its location."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[Location, int] = {}

    def visit(node: Any, loc: Location) -> None:
        lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines[loc + (key.value,)] = key.start_mark.line + 1
                    visit(value, loc + (key.value,))
                    lines[loc + (key.value,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, loc + (i,))

    if root is not None:
        visit(root, ())
    return lines


class _Reader:
    """One spec's second pass: from the validated document to a `StudySpec`, collecting errors."""

    def __init__(self, source: str, base_dir: Path | None):
        self.source = source
        self.base_dir = base_dir
        self.errors: list[tuple[Location, str]] = []

    def fail(self, loc: Location, message: str) -> None:
        self.errors.append((loc, message))

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = (self.base_dir / path).resolve()
        return path

    def task(self, ref: str) -> tuple[Task | None, str | None]:
        """A task name or a task file (relative to the spec) -> (the task, its file's absolute path or None)."""
        path = self.path(ref) if is_task_file(ref) else None
        try:
            task = get_task(str(path) if path is not None else ref)
            return task, None if path is None else str(path)
        except XlgmError as err:
            self.fail(("task",), str(err))
            return None, None

    def languages(self, value: Any, task: Task, source_language: str) -> tuple[str, ...]:
        before = len(self.errors)
        if value == "all":
            codes = list(task.languages)
        else:
            if isinstance(value, str):
                try:
                    value = validation.comma_list("", value)
                except XlgmError as err:
                    self.fail(("target_languages",), str(err).removeprefix(": "))
                    return ()
            codes = [c.strip() for c in value]
            for i, code in enumerate(codes):
                if code not in task.languages:
                    self.fail(
                        ("target_languages", i),
                        f"unknown language {code!r} for {task.name}; expected one of: {' '.join(task.languages)}",
                    )
        targets = tuple(c for c in dict.fromkeys(codes) if c != source_language)
        if not targets and len(self.errors) == before:
            self.fail(("target_languages",), f"no target language besides the source language {source_language!r}")
        return targets

    def data(self, value: Any) -> DataSpec:
        if isinstance(value, DataDir):
            value = value.dir
        if value in ("bundled", "hf"):
            return DataSpec(value)
        path = self.path(value)
        if not path.is_dir():
            self.fail(("data",), f"expected bundled, hf or a folder in XTREME's layout; {str(path)!r} is not a folder")
        return DataSpec("local", str(path))

    def checkpoints(self, section: Any) -> CheckpointSpec:  # a schema.Checkpoints
        given = section.model_fields_set
        if {"every", "steps"} <= given:
            self.fail(("checkpoints",), "give `every` or `steps`, not both")
        if {"last", "steps"} <= given:
            self.fail(("checkpoints", "last"), "`last` goes with `every`; `steps` names the measured steps")
        if "steps" in given and not section.steps:
            self.fail(("checkpoints", "steps"), "expected a non-empty list of steps")
        return CheckpointSpec(**section.model_dump())

    def evaluation(self, section: Any, task: Task) -> EvaluationSpec:  # a schema.Evaluation
        """`evaluation:`, its split the task's evaluation split unless the file names one (PAN-X: dev)."""
        fields = section.model_dump()
        if "split" not in section.model_fields_set:
            fields["split"] = task.evaluation_split
        return EvaluationSpec(**fields)

    def grid(self, entries: list[Any]) -> tuple[GridEntry, ...]:  # schema.grid_entry_models()
        out = []
        for entry in entries:
            objective = entry.objective
            options = set(config_fields(objective))
            objective_axes: list[tuple[str, tuple[Any, ...]]] = []
            train_axes: list[tuple[str, tuple[Any, ...]]] = []
            for key in sorted(entry.model_fields_set - {"objective"}):
                values = tuple(getattr(entry, key))
                (objective_axes if key in options else train_axes).append((key, values))
            out.append(GridEntry(objective, tuple(objective_axes), tuple(train_axes)))
        return tuple(out)

    def measures(self, section: Any, task: Task | None, source_language: str) -> MeasuresSpec:
        """`measures:` (a `schema.measures_model()`), whose entries pydantic has made into the measures' configs."""
        d: dict[str, Any] = dict(section.data)  # a schema.MeasureDataSection
        d["language"] = d["language"] or source_language
        sizes = tuple(as_list(d.pop("max_examples")))  # its default is the one size
        if len(set(sizes)) < len(sizes):
            self.fail(("measures", "data", "max_examples"), f"a size is listed twice in {list(sizes)}")
            sizes = tuple(dict.fromkeys(sizes))  # reported once, not again for every measure
        if task is not None and d["language"] not in task.languages:
            self.fail(("measures", "data", "language"), f"expected one of {', '.join(task.languages)}")
        try:
            data = MeasureData(**d, max_examples=sizes[0])
        except XlgmError as err:
            self.fail(("measures", "data"), str(err))
            data = MeasureData(max_length=None)
        items: list[MeasureItem] = []
        seen: set[str] = set()  # what each item computes: a measure may be listed again at other settings
        for i, entry in enumerate(section.names):  # schema.measure_entry_models(): {NAME: its options}
            ((field_name, info),) = type(entry).model_fields.items()
            name, options = str(info.alias), getattr(entry, field_name)  # a schema.MeasureOptions
            # a sweep: one item a (size, setting), the sizes outermost
            entry_sizes = options.sizes or sizes
            for size in entry_sizes:
                own = dataclasses.replace(data, max_examples=size)
                for written, config in options.settings:
                    computes = repr((name, config, own))
                    if computes in seen:
                        plain = not written and len(entry_sizes) == 1
                        at = "" if plain else f" with {written or 'its defaults'} on {size or 'all'} rows"
                        self.fail(("measures", "names", i), f"measure {name} is listed twice{at}")
                        return MeasuresSpec((), data)
                    seen.add(computes)
                    item_data = None if own == data else own
                    items.append(MeasureItem(name, tuple(sorted(written.items())), options.at, config, item_data))
        return MeasuresSpec(tuple(items), data, section.params, section.seed, sizes if len(sizes) > 1 else ())

    def check_runs(self, spec: StudySpec) -> None:
        """Build every TrainConfig and objective config now, so a bad value fails before any training."""
        for i, entry in enumerate(spec.grid):
            for options, overrides in entry.points():
                try:
                    build_config(entry.objective, **options)
                except (XlgmError, TypeError, ValueError) as err:
                    self.fail(("grid", i), str(err))
                    return
                try:
                    config = spec.train_config(entry.objective, options, overrides)
                except XlgmError as err:
                    self.fail(("grid", i) if set(overrides) else ("train",), str(err))
                    return
                try:  # an objective that cannot train the task (MVR on a token task) refuses when built
                    build_objective(config)
                except XlgmError as err:
                    self.fail(("grid", i, "objective"), str(err))
                    return

    def spec(self, doc: Any) -> StudySpec | None:
        task, task_file = self.task(doc.task)
        if task is None:
            return None
        source_language = doc.source_language or task.source_language
        if source_language not in task.languages:
            self.fail(("source_language",), f"expected one of {', '.join(task.languages)}, got {source_language!r}")
        train = doc.train.model_dump(include=doc.train.model_fields_set)
        # TrainConfig resolves `freeze: auto` itself; the spec writes the model's default into its `train:`
        # section too, because study ids were first hashed with it there (a spec's id must not change).
        if "freeze" not in train and default_freeze(doc.model) != "none":
            train["freeze"] = default_freeze(doc.model)
        analysis = doc.analysis.model_dump()
        analysis["axes"] = None if analysis["axes"] in ("auto", None) else tuple(analysis["axes"])
        prediction = doc.prediction.model_dump()
        prediction["features"] = None if prediction["features"] in ("auto", None) else tuple(prediction["features"])
        spec = StudySpec(
            name=doc.name,
            task=task.name,
            model=doc.model,
            source_language=source_language,
            target_languages=self.languages(doc.target_languages, task, source_language),
            data=self.data(doc.data),
            train=tuple(sorted(train.items())),
            grid=self.grid(doc.grid),
            seeds=tuple(dict.fromkeys(doc.seeds)),
            checkpoints=self.checkpoints(doc.checkpoints),
            evaluation=self.evaluation(doc.evaluation, task),
            measures=self.measures(doc.measures, task, source_language),
            analysis=AnalysisSpec(**analysis),
            prediction=PredictionSpec(**prediction),
            source=self.source,
            task_file=task_file,
        )
        if not self.errors:
            self.check_runs(spec)
        return spec


def parse_spec(
    raw: Any, source: str = "<spec>", base_dir: str | Path | None = None, lines: Mapping[Location, int] | None = None
) -> StudySpec:
    """Validate an already-loaded YAML document (a dict) into a `StudySpec`; a `SpecError` lists every error, one
    a line: `FILE:LINE: FIELD: what was expected` (the line when `lines`, from `line_numbers`, knows it)."""
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(f"{source}: expected a YAML mapping with at least `name`, `grid`")
    raw = _measures_in_full(raw)
    reader = _Reader(source, Path(base_dir) if base_dir is not None else None)
    model = document_model()
    spec = None
    try:
        doc = model.model_validate(raw)
    except ValidationError as err:
        reader.errors.extend(document_errors(err, raw))
        # the sections that did validate are still checked (a placeholder for a broken required field)
        broken = {loc[0] for loc, _ in reader.errors if loc}
        rest: dict[str, Any] = {k: v for k, v in raw.items() if k not in broken and k in model.model_fields}
        rest.setdefault("name", "-")
        rest.setdefault("grid", ["adamw"])
        try:
            doc = model.model_validate(rest)
        except ValidationError:
            doc = None
        if doc is not None:
            second = _Reader(source, reader.base_dir)
            second.spec(doc)
            reader.errors.extend(e for e in second.errors if e[0] and e[0][0] not in broken)
    else:
        spec = reader.spec(doc)
    if reader.errors or spec is None:
        found = [(_line_of(loc, lines or {}), loc, message) for loc, message in reader.errors]
        found.sort(key=lambda e: e[0] or 0)  # in the file's order (stable: as found within a line)
        raise SpecError("\n".join(_line(source, loc, message, line) for line, loc, message in found))
    return spec


def _measures_in_full(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """The document with `measures:` in its full form, `{names: [entries]}`, as the schema reads it, so that an
    error's location names the entry (`measures.names[1]`) whether the file wrote a list or a mapping."""
    measures = raw.get("measures")
    if isinstance(measures, list) or (isinstance(measures, Mapping) and isinstance(measures.get("names"), Mapping)):
        full = measures_mapping(measures)
        return {**raw, "measures": {**full, "names": entry_list(full["names"])}}
    return raw


def _line_of(loc: Location, lines: Mapping[Location, int]) -> int | None:
    """The line of `loc`, or of the nearest place above it that the file has (a missing key: its mapping)."""
    return next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)


def _line(source: str, loc: Location, message: str, line: int | None) -> str:
    head = f"{source}:{line}" if line is not None else source
    return f"{head}: {where(loc)}: {message}" if loc else f"{head}: {message}"


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
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{at}: expected valid YAML ({problem})") from None
    return parse_spec(raw, source, base_dir, line_numbers(text))
