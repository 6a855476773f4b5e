"""The objectives' registry: an objective class registers itself with `@register_objective`, as a measure does
with `@register_measure`; importing `xlgm.objectives` imports every module of the package, so a new objective is
one module. Its config class declares its options (`option(...)` metadata: flag, help, rule; Literal choices),
from which `xlgm train`'s flags (`xlgm.core.options.shared_flags`), a spec's grid entries and the checks follow.

    @register_objective
    class SAMObjective:
        name = "sam"; config_class = SAMConfig; reference = "..."; summary = "..."; loop_facts = ()
        def __init__(self, config): ...
        def micro_step(self, model, batch, ctx): ...
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from xlgm.core.errors import XlgmError
from xlgm.core.options import Flag, add_shared_flags, shared_flags
from xlgm.objectives.base import Objective

# What the training loop tells an objective besides its options: the task (MVR's λ is the authors' value for the
# task) and the micro-batch per device (Fisher's `--fisher-weight` w becomes λ = w / batch_size).
LOOP_FACTS = ("task", "batch_size")


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    config: type
    factory: Callable[..., Objective]
    reference: str
    summary: str
    loop_facts: tuple[str, ...] = ()  # of LOOP_FACTS, what the factory takes besides the config


# name -> its entry, in registration order (module name order, then definition order): the order `--help` lists
OBJECTIVES: dict[str, ObjectiveSpec] = {}

ObjectiveClass = TypeVar("ObjectiveClass", bound=type)


def objective_spec(cls: type[Any]) -> ObjectiveSpec:
    """The registry entry of an objective class."""
    unknown = [fact for fact in cls.loop_facts if fact not in LOOP_FACTS]
    if unknown:
        raise TypeError(f"objective {cls.name}: unknown loop fact(s) {unknown}; expected of {LOOP_FACTS}")
    return ObjectiveSpec(cls.name, cls.config_class, cls, cls.reference, cls.summary, tuple(cls.loop_facts))


def register_objective(cls: ObjectiveClass) -> ObjectiveClass:
    """Class decorator: register an objective class (name, config_class, reference, summary, loop_facts,
    micro_step) under its `name`."""
    spec = objective_spec(cls)
    if spec.name in OBJECTIVES and OBJECTIVES[spec.name].factory is not cls:
        raise ValueError(f"objective {spec.name!r} is already registered")
    OBJECTIVES[spec.name] = spec
    return cls


def objective_flags(specs: Iterable[ObjectiveSpec]) -> dict[str, Flag]:
    """The flags the objectives' config fields declare, in declaration order; a flag several objectives share
    (`--rho`) sets the field of whichever is selected."""
    return shared_flags({spec.name: spec.config for spec in specs}, what="objectives")


def get_objective(name: str) -> ObjectiveSpec:
    key = str(name).strip().lower()
    if key not in OBJECTIVES:
        raise XlgmError(f"unknown objective {name!r}; expected one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[key]


def config_fields(name: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(get_objective(name).config))


def build_config(name: str, **options: Any):
    """The validated frozen config of objective `name`; options set to None take their defaults."""
    spec = get_objective(name)
    fields = config_fields(spec.name)
    unknown = sorted(k for k in options if k not in fields)
    if unknown:
        allowed = ", ".join(fields) if fields else "none"
        raise XlgmError(f"objective {spec.name} has no option {', '.join(unknown)}; its options are: {allowed}")
    return spec.config(**{k: v for k, v in options.items() if v is not None})


def build_objective(
    name: str, /, *, task: str | None = None, batch_size: int | None = None, **options: Any
) -> Objective:
    """An objective by registry name with its options (config field names), validated. `task` and
    `batch_size` (the micro-batch per device) are the training loop's facts, used by the objectives whose
    defaults depend on them and ignored by the others."""
    spec = get_objective(name)
    facts = {"task": task, "batch_size": batch_size}
    return spec.factory(build_config(spec.name, **options), **{k: facts[k] for k in spec.loop_facts})


def describe_objective(objective: Objective) -> dict[str, Any]:
    """{"objective": name, **config} for run records, with the λ in use where the config leaves it to a
    default that depends on the loop (MVR's task, Fisher's batch size)."""
    config = getattr(objective, "config", None)
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else {}
    if "lam" in fields and hasattr(objective, "lam"):
        fields["lam"] = objective.lam
    return {"objective": objective.name, **fields}


# ----------------------------------------------------------------------------------------------------------
# `xlgm train`'s objective flags


def add_objective_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--objective` and every objective's options (all default to None: the objective's default)."""
    group = parser.add_argument_group("objective")
    group.add_argument(
        "--objective",
        default="adamw",
        type=str.lower,
        choices=list(OBJECTIVES),
        help="optimization objective (default: adamw); its options below apply only when it is selected",
    )
    add_shared_flags(group, objective_flags(OBJECTIVES.values()).values())
    return parser


def objective_options(namespace: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(name, options) from parsed arguments; an option given for another objective is an error."""
    name = get_objective(getattr(namespace, "objective", None) or "adamw").name
    options: dict[str, Any] = {}
    for flag in objective_flags(OBJECTIVES.values()).values():
        value = getattr(namespace, flag.dest, None)
        if value is None:
            continue
        if name not in flag.targets:
            raise XlgmError(f"{flag.flag} applies to --objective {'/'.join(flag.targets)}, not to --objective {name}")
        options[flag.targets[name]] = value
    return name, options


def objective_from_args(namespace: argparse.Namespace, **extra: Any) -> Objective:
    """Build the objective from parsed arguments. `extra` options (e.g. max_length=...) are passed on only
    when the selected objective has them, so the loop can always hand over its max_length; `task` and
    `batch_size` among them are the loop's facts (see `build_objective`)."""
    name, options = objective_options(namespace)
    facts = {k: extra.pop(k) for k in LOOP_FACTS if k in extra}
    fields = config_fields(name)
    options.update({k: v for k, v in extra.items() if k in fields and v is not None})
    return build_objective(name, **facts, **options)
