"""What a study spec file may say: pydantic v2 models of the YAML document, built from the configs they feed.

The training options (`train:` and a grid entry's training axes) are `TrainConfig`'s fields, an objective's
options its config's fields, the other sections `xlgm.study.sections`' dataclasses, each with its type, default,
help and rule (`xlgm.core.options`). `document_model().model_validate(raw)` checks types and ranges and reports
every error at once; `xlgm.study.spec` adds the checks that need the task, the registries or a whole config,
and builds the frozen `StudySpec`. `document_schema()` is the JSON Schema editors use (`xlgm study schema`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    field_validator,
)

from xlgm.analysis.predict import FEATURES
from xlgm.core.options import Section, field_annotation, help_of, rule_validator, section_model, type_hints
from xlgm.core.validation import FIELD_RULES
from xlgm.data.splits import Split
from xlgm.objectives import OBJECTIVES
from xlgm.recipes.measure import MeasureData
from xlgm.recipes.train import TrainConfig
from xlgm.study.sections import AnalysisSpec, CheckpointSpec, EvaluationSpec, PredictionSpec

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
    return Annotated[list[annotation], BeforeValidator(as_list), Field(min_length=1), WithJsonSchema(schema)]


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


Checkpoints = section_model(CheckpointSpec, "Checkpoints")
Evaluation = section_model(EvaluationSpec, "Evaluation")
MeasureDataSection = section_model(
    MeasureData,
    "MeasureData",
    defaults={"language": None, "max_length": None},
    types_={"language": Text | None, "split": Split},
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
MeasureEntry = Text | dict[str, dict[str, Any] | None]


class Measures(Section):
    names: list[MeasureEntry] | dict[str, dict[str, Any] | None] = Field(
        default_factory=list,
        description="NAME or {NAME: {option: value, at: all|best}}; `xlgm measure --list` shows the options",
    )
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
        "measures": (Annotated[Measures, BeforeValidator(measures_mapping)], Measures()),
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
    "measures": Measures,
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
    model = SECTION_MODELS.get(section)
    return list(model.model_fields) if model is not None else []


def document_schema() -> dict[str, Any]:
    """The spec's JSON Schema (draft 2020-12), for editors (yaml-language-server: $schema=...)."""
    schema = document_model().model_json_schema()
    schema["title"] = "xlgm study spec"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
