"""What a study spec file may say: pydantic v2 models of the YAML document, built from the configs they feed.

The training options (`train:` and a grid entry's training axes) are `TrainConfig`'s fields, an objective's
options its config's fields, a measure's options (an entry of `measures.names`) its config's fields, the other
sections `xlgm.study.sections`' dataclasses, each with its type, default, help and rule (`xlgm.core.options`).
`document_model().model_validate(raw)` checks types and ranges and reports every error at once (a measure entry
becomes its config here); `xlgm.study.spec` adds the checks that need the task, the registries or a whole config,
and builds the frozen `StudySpec`. `document_schema()` is the JSON Schema editors use (`xlgm study schema`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Tag,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from xlgm.analysis.predict import FEATURES
from xlgm.core.errors import XlgmError
from xlgm.core.options import (
    Section,
    default_of,
    field_annotation,
    help_of,
    rule_validator,
    section_model,
    type_hints,
)
from xlgm.core.validation import FIELD_RULES
from xlgm.data.splits import Split
from xlgm.measures.base import get_measure, list_measures
from xlgm.objectives import OBJECTIVES
from xlgm.recipes.measure import MeasureData
from xlgm.recipes.train import TrainConfig
from xlgm.study.sections import AnalysisSpec, CheckpointSpec, EvaluationSpec, MeasureAt, PredictionSpec

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
Text = Annotated[str, Field(min_length=1)]
Feature: Any = Literal.__getitem__(tuple(FEATURES))  # the predictor's feature names


def as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


def axis(annotation: Any) -> Any:
    """A grid axis: one value or a non-empty list of values, each of `annotation`."""
    item = TypeAdapter(annotation).json_schema()
    schema = {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}
    # kept as it is when written out: a default (the JSON Schema's) is one value, not a list
    keep = PlainSerializer(lambda value: value)
    return Annotated[list[annotation], BeforeValidator(as_list), Field(min_length=1), WithJsonSchema(schema), keep]


def train_fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """TrainConfig's fields a spec may set in `train:` or a grid entry, with their resolved types."""
    hints = type_hints(TrainConfig)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(TrainConfig) if f.name not in NOT_IN_TRAIN}


@functools.cache
def train_model() -> type[Section]:
    """`train:`: any TrainConfig option except those set elsewhere in the spec."""
    return section_model(TrainConfig, "Train", exclude=NOT_IN_TRAIN)


@functools.cache
def grid_entry_models() -> dict[str, type[Section]]:
    """One model per objective: `objective`, then each of its options and each training option as an axis."""
    models = {}
    for name, spec in OBJECTIVES.items():
        hints = type_hints(spec.config)
        fields: dict[str, Any] = {"objective": (Literal[name], Field(description=spec.summary))}
        for f in dataclasses.fields(spec.config):
            # null: the objective's default (the same run id as leaving the option out)
            annotation = field_annotation(f, hints[f.name] | None)
            fields[f.name] = (axis(annotation), Field(default=None, description=help_of(f) or None))
        for tname, (f, hint) in train_fields().items():
            if tname not in fields:
                fields[tname] = (axis(field_annotation(f, hint)), Field(default=None, description=help_of(f) or None))
        models[name] = create_model(f"Grid_{name}", __base__=Section, **fields)
    return models


def grid_entry_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        tag = value.get("objective")
        return tag if isinstance(tag, str) else None
    return getattr(value, "objective", None)


def entry_mapping(value: Any) -> Any:
    return {"objective": value} if isinstance(value, str) else value


@functools.cache
def grid_entry_type() -> Any:
    """An objective name, or a mapping `{objective: NAME, option: value or [values], ...}`."""
    members = tuple(Annotated[model, Tag(name)] for name, model in grid_entry_models().items())
    union = functools.reduce(operator.or_, members)
    return Annotated[union, Discriminator(grid_entry_tag), BeforeValidator(entry_mapping)]


def data_rows() -> Any:
    """The measures' data size (MeasureData.max_examples: a row limit, null for all rows), or a list of sizes."""
    field = next(f for f in dataclasses.fields(MeasureData) if f.name == "max_examples")
    return axis(field_annotation(field, type_hints(MeasureData)[field.name]))


Checkpoints = section_model(CheckpointSpec, "Checkpoints")
Evaluation = section_model(EvaluationSpec, "Evaluation")
MeasureDataSection = section_model(
    MeasureData,
    "MeasureData",
    defaults={"language": None, "max_length": None},
    types_={
        "language": Text | None,
        "split": Split,
        "max_examples": data_rows(),  # a list: every measure at each size (a sweep)
    },
)
Analysis = section_model(
    AnalysisSpec,
    "Analysis",
    defaults={"axes": "auto"},
    types_={"axes": Literal["auto"] | Annotated[list[Text], Field(min_length=1)] | None},
)
Prediction = section_model(
    PredictionSpec,
    "Prediction",
    defaults={"features": "auto"},
    types_={"features": Literal["auto"] | Annotated[list[Feature], Field(min_length=1)] | None},
)


class MeasureOptions(Section):
    """A measure entry's options: its config's fields, each a value or a list of values (a sweep), `at`, and
    `max_examples` (a size or a list of sizes; not given: `measures.data.max_examples`). `settings` is every
    point of the product of the options' lists, as (the options as written, the config they give), in the order
    of the options' names (sorted) and of each list; `sizes` the entry's own data sizes, or None."""

    config_class: ClassVar[type]
    max_examples: list[int | None] | None = None  # typed and described by `measure_options_model`
    _written: dict[str, Any] = PrivateAttr(default_factory=dict)
    _settings: list[tuple[dict[str, Any], Any]] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_written(cls, value: Any, handler: Callable[[Any], Any]) -> Any:
        model = handler(value)
        if isinstance(value, Mapping):
            model._written = dict(value)
        return model

    @field_validator("*")
    @classmethod
    def _once_each(cls, value: Any) -> Any:
        if isinstance(value, list) and len({repr(v) for v in value}) < len(value):
            raise ValueError(f"a value is listed twice in {value}")
        return value

    @model_validator(mode="after")
    def _build_settings(self) -> MeasureOptions:
        names = sorted({f.name for f in dataclasses.fields(self.config_class)} & self.model_fields_set)
        # pydantic read a scalar as a one-value list: the value as written is the scalar itself
        written = [self._written[n] if isinstance(self._written[n], list) else [self._written[n]] for n in names]
        values = [getattr(self, n) for n in names]
        self._settings = []
        for index in itertools.product(*(range(len(v)) for v in values)):
            try:
                config = self.config_class(**{n: v[i] for n, v, i in zip(names, values, index)})
            except XlgmError as err:
                raise ValueError(str(err)) from None
            self._settings.append(({n: w[i] for n, w, i in zip(names, written, index)}, config))
        return self

    @property
    def settings(self) -> list[tuple[dict[str, Any], Any]]:
        return list(self._settings)

    @property
    def sizes(self) -> tuple[int | None, ...] | None:
        return tuple(self.max_examples or ()) if "max_examples" in self.model_fields_set else None


def sweep_fields(config: type) -> dict[str, Any]:
    """A config's fields as a measure entry's: each a value or a list of values, with its help and default."""
    hints = type_hints(config)
    return {
        f.name: (axis(field_annotation(f, hints[f.name])), Field(default=default_of(f), description=help_of(f) or None))
        for f in dataclasses.fields(config)
    }


@functools.cache
def measure_options_model(name: str) -> type[MeasureOptions]:
    """A measure's options in a spec entry: its config's fields (each a value or a list), `at`, `max_examples`."""
    config = get_measure(name).config_cls
    fields: dict[str, Any] = {
        **sweep_fields(config),
        "at": (MeasureAt, Field(default="all", description="which measured checkpoints: all, or each run's best only")),
        "max_examples": (
            data_rows(),
            Field(default=None, description="rows this measure sees, or a list (a sweep); default: measures.data's"),
        ),
    }
    base = type(f"{config.__name__}Entry", (MeasureOptions,), {"config_class": config, "__module__": __name__})
    model: type[MeasureOptions] = create_model(f"Measure_{name}", __base__=base, **fields)
    return model


@functools.cache
def measure_entry_models() -> dict[str, type[Section]]:
    """One model per measure of a checkpoint: `{NAME: {option: value, ...}}`."""
    models = {}
    for name in list_measures("model"):
        field: dict[str, Any] = {name.replace("-", "_"): (measure_options_model(name), Field(alias=name))}
        models[name] = create_model(f"Entry_{name}", __base__=Section, **field)
    return models


def measure_entry(value: Any) -> Any:
    """NAME or {NAME: options} -> {NAME: options}; a name that is no measure of a checkpoint is an error here."""
    if isinstance(value, str):
        value = {value: None}
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"expected NAME or {{NAME: {{option: value}}}}, got {value!r}")
    ((name, options),) = value.items()
    try:
        kind = get_measure(name).kind
    except XlgmError as err:
        raise ValueError(str(err)) from None
    if kind != "model":
        raise ValueError(f"{name} is not a measure of one checkpoint (its kind is {kind}; see `xlgm measure --list`)")
    return {name: {} if options is None else options}


def measure_entry_tag(value: Any) -> str | None:
    return next(iter(value)) if isinstance(value, dict) and len(value) == 1 else None


def entry_list(value: Any) -> Any:
    """`names:` may be a mapping NAME -> options: one entry a name, in the file's order."""
    return [{name: options} for name, options in value.items()] if isinstance(value, dict) else value


@functools.cache
def measure_names_type() -> Any:
    """`measures.names`: a list of entries, each a measure's name or `{NAME: {option: value, at: all|best}}` with
    the options of that measure, or a mapping NAME -> options."""
    models = measure_entry_models()
    members: Any = functools.reduce(operator.or_, (Annotated[model, Tag(name)] for name, model in models.items()))
    written: Any = Literal.__getitem__(tuple(models)) | members  # what an entry may be in the file (JSON Schema)
    entry = Annotated[
        members, Discriminator(measure_entry_tag), BeforeValidator(measure_entry, json_schema_input_type=written)
    ]
    by_name: dict[str, Any] = {
        name.replace("-", "_"): (measure_options_model(name) | None, Field(default=None, alias=name)) for name in models
    }
    mapping = create_model("MeasuresByName", __base__=Section, **by_name)
    return Annotated[list[entry], BeforeValidator(entry_list, json_schema_input_type=list[written] | mapping)]


@functools.cache
def measures_model() -> type[Section]:
    """`measures:` (built at first use, from the measure registry)."""
    names = measure_names_type()
    return create_model(
        "Measures",
        __base__=MeasuresBase,
        names=(
            names,
            Field(
                default_factory=list,
                description="NAME or {NAME: {option: value, at: all|best}}; `xlgm measure --list` shows the options",
            ),
        ),
    )


class MeasuresBase(Section):
    """`measures:` but its `names`, which `measures_model` adds from the measure registry."""

    # a class built at import (section_model), which mypy cannot take as a type
    data: MeasureDataSection = Field(default_factory=MeasureDataSection, description="what the measures see")  # type: ignore[valid-type]
    params: str | None = Field(default=None, description="parameter filter, a regex (null: the trained parameters)")
    seed: Annotated[int, rule_validator(FIELD_RULES["seed"])] = 0

    @field_validator("params")
    @classmethod
    def regular_expression(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"expected a regular expression ({err})") from None
        return value


class DataDir(Section):
    dir: Text


@functools.cache
def document_model() -> type[BaseModel]:
    """The whole spec (built at first use: the registries decide the grid's shape)."""
    fields: dict[str, Any] = {
        "name": (Text, Field(description="the study's name (its folder: runs/study-NAME)")),
        "task": (Text, Field(default="xnli", description="xnli, pawsx or a task file (relative to the spec)")),
        "model": (Text, Field(default="embedded", description="embedded, a Hub id or a local folder")),
        "source_language": (Text | None, Field(default=None, description="null: the task's source language")),
        "target_languages": (
            Literal["all"] | Annotated[list[Text], Field(min_length=1)] | Text,
            Field(default="all", description="`all`, a list or a comma list of language codes"),
        ),
        "data": (
            Text | DataDir,
            Field(default="bundled", description="bundled, hf or a folder in XTREME's layout (relative to the spec)"),
        ),
        "train": (
            train_model(),
            Field(default_factory=train_model(), description="training options (`xlgm train --help` lists them)"),
        ),
        "grid": (
            Annotated[list[grid_entry_type()], Field(min_length=1)],  # type: ignore[misc]
            Field(description="one entry per objective; a list value is an axis of the grid"),
        ),
        "seeds": (
            Annotated[
                list[Annotated[int, rule_validator(FIELD_RULES["seed"])]], BeforeValidator(as_list), Field(min_length=1)
            ],
            Field(default=[0]),
        ),
        "checkpoints": (Checkpoints, Checkpoints()),
        "evaluation": (Evaluation, Evaluation()),
        "measures": (Annotated[measures_model(), BeforeValidator(measures_mapping)], measures_model()()),
        "analysis": (Analysis, Analysis()),
        "prediction": (Prediction, Prediction()),
    }
    return create_model("StudySpecDocument", __base__=Section, **fields)


def measures_mapping(value: Any) -> Any:
    """`measures:` may be the list of names alone."""
    if value is None:
        return {}
    return {"names": value} if isinstance(value, list) else value


SECTION_MODELS: dict[str, Any] = {
    "checkpoints": Checkpoints,
    "evaluation": Evaluation,
    "measures.data": MeasureDataSection,
    "analysis": Analysis,
    "prediction": Prediction,
    "data": DataDir,
}


def allowed_keys(section: str) -> list[str]:
    """The keys a mapping of the spec takes, by its dotted path without indices ('' for the top level)."""
    if section == "":
        return list(document_model().model_fields)
    if section == "train":
        return list(train_model().model_fields)
    if section == "measures":
        return list(measures_model().model_fields)
    model = SECTION_MODELS.get(section)
    return list(model.model_fields) if model is not None else []


def document_schema() -> dict[str, Any]:
    """The spec's JSON Schema (draft 2020-12), for editors (yaml-language-server: $schema=...)."""
    schema = document_model().model_json_schema()
    schema["title"] = "xlgm study spec"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
