"""Options defined once, on config dataclasses: a field's type, default, help and rule give its command-line flag
(`add_config_arguments`) and its place in a study spec (`section_model`, a pydantic model of the same fields).

    @dataclass(frozen=True)
    class TrainConfig:
        lr: float = field(default=1e-4, metadata=option(help="peak learning rate"))

A field's rule is `option(rule=...)` or, for options that several configs share (`max_length`, `seed`, ...),
`validation.FIELD_RULES[name]`: one function `rule(label, value) -> value` that raises XlgmError naming `label`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, create_model
from pydantic.functional_validators import AfterValidator

from xlgm.core import validation
from xlgm.core.errors import XlgmError

OPTION_KEY = "xlgm_option"
Rule = Callable[[str, Any], Any]


def option(
    flag: str | None = None, help: str = "", *, exclusive: str | None = None, rule: Rule | None = None
) -> dict[str, Any]:
    """Metadata of a config field: `field(default=..., metadata=option(...))`. `flag` defaults to the field's
    name as a flag (`max_length` -> `--max-length`); configs may share a flag (SAM's and ASAM's `--rho`), the
    first help given for it is shown; fields with the same `exclusive` key are mutually exclusive flags."""
    return {OPTION_KEY: {"flag": flag, "help": help, "exclusive": exclusive, "rule": rule}}


def _info(f: dataclasses.Field) -> Mapping[str, Any]:
    return f.metadata.get(OPTION_KEY) or {}


def help_of(f: dataclasses.Field) -> str:
    return str(_info(f).get("help") or "")


def flag_of(f: dataclasses.Field) -> str:
    return str(_info(f).get("flag") or validation.flag(f.name))


def rule_of(f: dataclasses.Field) -> Rule | None:
    rule: Rule | None = _info(f).get("rule") or validation.FIELD_RULES.get(f.name)
    return rule


def check_fields(config: Any, label: Callable[[str], str] = validation.flag, optional: Iterable[str] = ()) -> None:
    """Check every field of a config dataclass that has a rule, or a `Literal[...]` type (errors name
    `label(field)`, by default its command-line flag); a field named in `optional` may also be None. Config
    classes call this in `__post_init__`."""
    optional = set(optional)
    cls: type = type(config)
    hints = type_hints(cls)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and (f.name in optional or _allows_none(hints[f.name])):
            continue
        rule = rule_of(f)
        if rule is not None:
            rule(label(f.name), value)
        choices = choices_of(hints[f.name])
        if choices is not None:
            validation.one_of(label(f.name), value, choices)


@functools.cache
def type_hints(config: type) -> dict[str, Any]:
    """`typing.get_type_hints` of a config class, resolved once (the dict is shared: read it, don't change it)."""
    return typing.get_type_hints(config)


def _allows_none(annotation: Any) -> bool:
    return _is_union(annotation) and type(None) in typing.get_args(annotation)


def default_of(f: dataclasses.Field) -> Any:
    """The field's default (a fresh one from a factory), or `...` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a `Literal[...]` type (or of `Literal[...] | None`), else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if _is_union(annotation):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def scalar_type(annotation: Any) -> Any:
    """`int | None` -> int; `Literal['a', 'b']` -> str; others unchanged."""
    if _is_union(annotation):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return scalar_type(args[0])
    if typing.get_origin(annotation) is Literal:
        return type(typing.get_args(annotation)[0])
    return annotation


# ----------------------------------------------------------------------------------------------------------
# pydantic: a config's fields as a model (a spec section)
# ----------------------------------------------------------------------------------------------------------


class Section(BaseModel):
    """A mapping of a YAML file: unknown keys are errors, numbers must be finite, booleans are true/false."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def rule_validator(rule: Rule) -> AfterValidator:
    """A `rule(label, value)` as a pydantic validator whose error is the rule's message without the label."""

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            return rule("\0", value)
        except XlgmError as err:
            raise ValueError(str(err).removeprefix("\0: ")) from None

    return AfterValidator(check)


def strict_bools(annotation: Any) -> Any:
    """`bool` as YAML's true/false only (pydantic alone also reads 1, "yes" and "on" as booleans)."""
    if annotation is bool:
        return Annotated[bool, Strict()]
    if _is_union(annotation) and bool in typing.get_args(annotation):
        strict = [Annotated[bool, Strict()] if a is bool else a for a in typing.get_args(annotation)]
        return functools.reduce(operator.or_, strict)
    return annotation


def field_annotation(f: dataclasses.Field, annotation: Any) -> Any:
    """A config field's type for pydantic: strict booleans, its rule attached."""
    annotation = strict_bools(annotation)
    rule = rule_of(f)
    return annotation if rule is None else Annotated[annotation, rule_validator(rule)]


def section_model(
    config: type,
    name: str | None = None,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    types_: Mapping[str, Any] | None = None,
) -> type[Section]:
    """A pydantic model of a config dataclass's fields (minus `exclude`), each with its type, default, help and
    rule; `defaults` and `types_` replace a field's default or type where the file writes it otherwise."""
    hints = type_hints(config)
    excluded = set(exclude)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.name in excluded:
            continue
        annotation = (types_ or {}).get(f.name) or field_annotation(f, hints[f.name])
        default = (defaults or {}).get(f.name, default_of(f))
        fields[f.name] = (annotation, Field(default=default, description=help_of(f) or None))
    model: type[Section] = create_model(name or config.__name__, __base__=Section, **fields)
    return model


# ----------------------------------------------------------------------------------------------------------
# argparse: a config's fields as flags
# ----------------------------------------------------------------------------------------------------------


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config: type,
    *,
    exclude: Iterable[str] = (),
    types_: Mapping[str, Callable[[str], Any]] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """One flag per field of `config` (minus `exclude`), with its type, default, choices and help (`types_` and
    `defaults` replace a field's parser or default); parsed values are checked by the config itself when it is
    built from `config_kwargs`."""
    hints = type_hints(config)
    excluded = set(exclude)
    for f in dataclasses.fields(config):
        if f.name in excluded:
            continue
        default = (defaults or {}).get(f.name, default_of(f))
        annotation = hints[f.name]
        kind = scalar_type(annotation)
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_of(f) or None}
        if kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        else:
            kwargs.update(type=(types_ or {}).get(f.name, kind), default=None if default is ... else default)
            choices = choices_of(annotation)
            if choices is not None:
                kwargs["choices"] = list(choices)
            else:
                kwargs["metavar"] = f.name.split("_")[-1].upper()
        parser.add_argument(flag_of(f), **kwargs)


def config_kwargs(args: argparse.Namespace, config: type, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The values of `config`'s fields from parsed arguments (as `add_config_arguments` named them)."""
    excluded = set(exclude)
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if f.name not in excluded}
