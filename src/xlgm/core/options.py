"""Options defined once, on config dataclasses: a field's type, default, help and rule give its command-line flag
(`add_config_arguments`, or `shared_flags` for the configs of several objectives), its place in a study spec
(`section_model`, a pydantic model of the same fields) and how a mapping of options is read (`parse_options`:
a measure's `--set` pairs, a spec entry, a dict handed to the Python API).

    @dataclass(frozen=True)
    class TrainConfig:
        lr: float = field(default=1e-4, metadata=option(help="peak learning rate"))

A field's rule is `option(rule=...)` or, for options that several configs share (`max_length`, `seed`, ...),
`validation.FIELD_RULES[name]`: one function `rule(label, value) -> value` that raises XlgmError naming `label`.
A `Literal[...]` type gives the field's choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, ValidationError, create_model, model_validator
from pydantic.functional_validators import AfterValidator

from xlgm.core import validation
from xlgm.core.errors import XlgmError

OPTION_KEY = "xlgm_option"
Rule = Callable[[str, Any], Any]


def option(
    flag: str | None = None,
    help: str = "",
    *,
    exclusive: str | None = None,
    rule: Rule | None = None,
    cli: bool = True,
) -> dict[str, Any]:
    """Metadata of a config field: `field(default=..., metadata=option(...))`. `flag` defaults to the field's
    name as a flag (`max_length` -> `--max-length`); configs may share a flag (SAM's and ASAM's `--rho`), the
    first help given for it is shown; fields with the same `exclusive` key are mutually exclusive flags.
    cli=False: the program sets the field, it is no flag of its own (MVR's max_length comes from the loop)."""
    return {OPTION_KEY: {"flag": flag, "help": help, "exclusive": exclusive, "rule": rule, "cli": cli}}


def _info(f: dataclasses.Field) -> Mapping[str, Any]:
    return f.metadata.get(OPTION_KEY) or {}


def help_of(f: dataclasses.Field) -> str:
    return str(_info(f).get("help") or "")


def flag_of(f: dataclasses.Field) -> str:
    return str(_info(f).get("flag") or validation.flag(f.name))


def rule_of(f: dataclasses.Field) -> Rule | None:
    rule: Rule | None = _info(f).get("rule") or validation.FIELD_RULES.get(f.name)
    return rule


def is_flag(f: dataclasses.Field) -> bool:
    """Whether the field is a command-line flag of its own (not `option(cli=False)`)."""
    return bool(_info(f).get("cli", True))


def check_fields(
    config: Any, label: Callable[[str], str] = validation.flag, optional: Iterable[str] = (), store: bool = False
) -> None:
    """Check every field of a config dataclass that has a rule, or a `Literal[...]` type (errors name
    `label(field)`, by default its command-line flag); a field named in `optional` may also be None. Config
    classes call this in `__post_init__`. store=True keeps what each rule returns (an integer option given as
    4.0 becomes 4, a number option given 1 becomes 1.0); a config whose id hashes its fields as given leaves it
    off."""
    optional = set(optional)
    cls: type = type(config)
    hints = type_hints(cls)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and (f.name in optional or _allows_none(hints[f.name])):
            continue
        rule = rule_of(f)
        if rule is not None:
            checked = rule(label(f.name), value)
            if store:
                object.__setattr__(config, f.name, checked)
        choices = choices_of(hints[f.name])
        if choices is not None:
            validation.one_of(label(f.name), value, choices)


def flag_label(config: type) -> Callable[[str], str]:
    """`check_fields`' label for a config whose fields are flags under other names: `rho (--rho)`, `lam
    (--fisher-lambda)`; a field that is no flag is named alone."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    return lambda name: f"{name} ({flag_of(fields[name])})" if is_flag(fields[name]) else name


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
    base: type[Section] = Section,
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
    model: type[Section] = create_model(name or config.__name__, __base__=base, **fields)
    return model


# ----------------------------------------------------------------------------------------------------------
# One reader of a mapping of options: a spec entry, `--set` pairs, a dict given to the Python API
# ----------------------------------------------------------------------------------------------------------


class Options(Section):
    """A config's options as read from a mapping: pydantic checks each value (its type, a number written as
    text becomes the number the field expects, its rule), then the config is built, which checks what involves
    several fields. `config` is that config; `written` is the mapping as it was given (before text became
    numbers and integers floats), which is what ids hash."""

    config_class: ClassVar[type]
    _written: dict[str, Any] = PrivateAttr(default_factory=dict)
    _config: Any = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_written(cls, value: Any, handler: Callable[[Any], Any]) -> Any:
        model = handler(value)
        if isinstance(value, Mapping):
            model._written = dict(value)
        return model

    @model_validator(mode="after")
    def _build_config(self) -> Options:
        names = {f.name for f in dataclasses.fields(self.config_class)}
        try:
            self._config = self.config_class(**{k: getattr(self, k) for k in self.model_fields_set & names})
        except XlgmError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def config(self) -> Any:
        return self._config

    @property
    def written(self) -> dict[str, Any]:
        return dict(self._written)


@functools.cache
def options_model(config: type, name: str | None = None) -> type[Options]:
    """The `Options` model of a config dataclass (one per config and name)."""
    base = type(f"{config.__name__}Options", (Options,), {"config_class": config, "__module__": __name__})
    model = section_model(config, name or config.__name__, base=base)
    return typing.cast(type[Options], model)


def parse_options(config: type, options: Mapping[str, Any], what: str) -> Any:
    """The config built from a mapping of options (`what` names whose options they are, e.g. `measure margin`).
    An unknown option, a value of the wrong type or against its rule, and a config that refuses the
    combination are one-line XlgmErrors: `option num_draws of measure sharpness-diff: expected ...`."""
    model = options_model(config)
    unknown = sorted(set(options) - set(model.model_fields))
    if unknown:
        known = ", ".join(sorted(model.model_fields)) or "(none)"
        raise XlgmError(f"unknown option(s) {', '.join(unknown)} for {what}; known: {known}")
    try:
        return model.model_validate(dict(options)).config
    except ValidationError as err:
        lines = [
            f"option {'.'.join(map(str, e['loc']))} of {what}: {error_message(e)}"
            if e["loc"]
            else f"{what}: {error_message(e)}"
            for e in err.errors(include_url=False)
        ]
        raise XlgmError("; ".join(lines)) from None


# pydantic's error types, said as what the value should have been
MESSAGES = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "string_type": "expected a string",
    "string_too_short": "expected a non-empty string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "too_short": "expected a non-empty list",
    "missing": "required field missing",
}
COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def got(value: Any) -> str:
    """`, got VALUE` for an error message (nothing for a long list or mapping)."""
    return f", got {value!r}" if not isinstance(value, (dict, list)) or len(repr(value)) < 80 else ""


def error_message(error: Mapping[str, Any]) -> str:
    """One pydantic error (of `ValidationError.errors()`) as what was expected, without its location."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}{got(value)}"
    if kind in COMPARISONS:
        return f"expected a number {COMPARISONS[kind]} {next(iter(ctx.values()))}{got(value)}"
    if kind in MESSAGES:
        return MESSAGES[kind] + ("" if kind == "missing" else got(value))
    text = str(error["msg"])
    return text[:1].lower() + text[1:]


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
        if f.name in excluded or not f.init or not is_flag(f):
            continue
        default = (defaults or {}).get(f.name, default_of(f))
        kwargs = _argument(f.name, hints[f.name], None if default is ... else default, (types_ or {}).get(f.name))
        parser.add_argument(flag_of(f), dest=f.name, help=help_of(f) or None, **kwargs)


def _argument(name: str, annotation: Any, default: Any, parse: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """argparse's keywords for a field of this type: a switch for a boolean, else its parser, choices or metavar."""
    kind = scalar_type(annotation)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction, "default": default}
    kwargs: dict[str, Any] = {"type": parse or kind, "default": default}
    choices = choices_of(annotation)
    if choices is not None:
        kwargs["choices"] = list(choices)
    else:
        kwargs["metavar"] = name.split("_")[-1].upper()
    return kwargs


def config_kwargs(args: argparse.Namespace, config: type, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The values of `config`'s fields from parsed arguments (as `add_config_arguments` named them)."""
    excluded = set(exclude)
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if f.name not in excluded and f.init}


# ----------------------------------------------------------------------------------------------------------
# argparse: flags that fields of several configs share (the objectives' options of `xlgm train`)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One flag and the config fields that declare it (`option` metadata), by config key (an objective's name)."""

    flag: str
    type: type  # float, int or bool (a switch)
    help: str  # the first help given for the flag
    exclusive: str | None
    targets: dict[str, str]  # config key -> its field
    defaults: dict[str, Any]  # config key -> the field's default

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default_text(self) -> str:
        """`sam 0.05, asam 0.5` ("" when no config has a default worth saying: None, or a switch's False)."""
        said = {key: value for key, value in self.defaults.items() if value is not None and value is not False}
        if len(self.defaults) == 1:
            return ", ".join(str(value) for value in said.values())
        return ", ".join(f"{key} {value}" for key, value in said.items())


def shared_flags(configs: Mapping[str, type], what: str = "configs") -> dict[str, Flag]:
    """The flags the configs' fields declare with `option(...)` (fields without it, or with cli=False, are no
    flags), in declaration order. A flag several fields share must have one type and one exclusive group (else
    a TypeError names the field and says `what` the configs are)."""
    found: dict[str, dict[str, Any]] = {}
    for key, config in configs.items():
        hints = type_hints(config)
        for f in dataclasses.fields(config):
            if OPTION_KEY not in f.metadata or not is_flag(f):
                continue
            flag, kind, exclusive = flag_of(f), scalar_type(hints[f.name]), _info(f).get("exclusive")
            entry = found.setdefault(
                flag,
                {"flag": flag, "type": kind, "help": "", "exclusive": exclusive, "targets": {}, "defaults": {}},
            )
            if entry["type"] is not kind or entry["exclusive"] != exclusive:
                raise TypeError(f"{flag}: {key}.{f.name} declares it unlike the {what} before it")
            entry["help"] = entry["help"] or help_of(f)
            entry["targets"][key] = f.name
            entry["defaults"][key] = default_of(f)
    return {flag: Flag(**entry) for flag, entry in found.items()}


def add_shared_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flags: Iterable[Flag]) -> None:
    """One argument per flag, default None (each config's own default: the help says it), with its help and
    mutually exclusive groups."""
    groups: dict[str, Any] = {}
    for flag in flags:
        target: Any = parser
        if flag.exclusive is not None:
            if flag.exclusive not in groups:
                groups[flag.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[flag.exclusive]
        help_text = flag.help + (f" (default: {flag.default_text})" if flag.default_text else "")
        kwargs = _argument(flag.dest, flag.type, None)
        if flag.type is bool:
            kwargs = {"action": "store_true", "default": None}
        target.add_argument(flag.flag, help=help_text or None, **kwargs)
