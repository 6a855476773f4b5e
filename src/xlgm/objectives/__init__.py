"""Optimization objectives: the registry, `build_objective`, and the CLI options.

    adamw   plain cross-entropy, the baseline             (no options)
    sam     SAM, Foret et al. ICLR 2021                    rho (--rho, 0.05),
                                                           shared_perturbation (--sam-shared-perturbation, off)
    asam    adaptive SAM, Kwon et al. ICML 2021            rho (--rho, 0.5), eta (--asam-eta, 0.01),
                                                           shared_perturbation
    fisher  Fisher Penalty, Jastrzebski et al. ICML 2021   lam (--fisher-lambda, 0.1) or the cross-lingual
                                                           study authors' weight w (--fisher-weight), λ = w/B,
                                                           sub_batch (--fisher-sub-batch, whole micro-batch),
                                                           every (--fisher-every, 1)
    mvr     Multi-view Subword Regularization,             lam (--mvr-lambda; XNLI 0.2, PAWS-X 0.6),
            Wang, Ruder & Neubig NAACL 2021                rate (--mvr-rate, 0.2), max_length (from the
                                                           loop), seed

Each module's docstring gives the reference, the exact formula, the defaults and why.

Every `micro_step` returns at least `loss` (the plain cross-entropy of the micro-batch at the current
weights, comparable across objectives) and `objective` (the value it actually minimized: the loss at
w + ε for SAM/ASAM, CE + λ·penalty for Fisher, the MVR total), plus its own diagnostics (`sam_skipped`,
`fisher_penalty`, `fisher_active`, `mvr_ce_sampled`, `mvr_kl`). With `--sam-shared-perturbation` only the
last micro-batch of a step reports `objective` (the descent passes all run there).

The base optimizer is always the loop's AdamW (with its scheduler, clipping and accumulation); an
objective only decides what gradient each micro-batch adds to `.grad` (see `base.py`). Every regularizer
is off unless its objective is selected, and an option given for another objective is an error.

    objective = build_objective("sam", rho=0.1)
    objective = build_objective("fisher", batch_size=32, weight=1e-3)    # λ = 1e-3 / 32
    objective = objective_from_args(args, max_length=args.max_length)   # after add_objective_arguments

Two facts only the training loop knows set defaults: `task` (MVR's λ is the authors' value for the task)
and `batch_size`, the micro-batch per device (Fisher's `--fisher-weight` w becomes λ = w / batch_size).
`build_objective` takes them as keywords beside the options; they are not options of any objective.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from xlgm.core.errors import XlgmError
from xlgm.core.modules import classes_defined_in, import_submodules
from xlgm.core.options import scalar_type, type_hints
from xlgm.objectives.adamw import AdamWConfig, AdamWObjective
from xlgm.objectives.base import NON_MODEL_KEYS, OPTION_KEY, Objective, StepContext, model_inputs, option
from xlgm.objectives.fisher import FisherConfig, FisherObjective
from xlgm.objectives.mvr import MVRConfig, MVRObjective
from xlgm.objectives.sam import (
    ASAMConfig,
    ASAMObjective,
    SAMConfig,
    SAMObjective,
    asam_perturbation,
    sam_perturbation,
)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    config: type
    factory: Callable[..., Objective]
    reference: str
    summary: str
    loop_facts: tuple[str, ...] = ()  # of LOOP_FACTS, what the factory takes besides the config


# What the training loop tells an objective besides its options (see the module docstring).
LOOP_FACTS = ("task", "batch_size")

# Every objective class of this package's modules, in module and definition order (the order `--help` lists
# them). A new objective is one module with its class (name, config_class with `option(...)` field metadata
# for its flags, reference, summary, loop_facts, micro_step): its name, flags and validation follow from it.
OBJECTIVE_CLASSES: tuple[type[Any], ...] = tuple(
    classes_defined_in(
        import_submodules(sys.modules[__name__]), "name", "config_class", "reference", "summary", "micro_step"
    )
)


def objective_spec(cls: type[Any]) -> ObjectiveSpec:
    """The registry entry of an objective class."""
    unknown = [fact for fact in cls.loop_facts if fact not in LOOP_FACTS]
    if unknown:
        raise TypeError(f"objective {cls.name}: unknown loop fact(s) {unknown}; expected of {LOOP_FACTS}")
    return ObjectiveSpec(cls.name, cls.config_class, cls, cls.reference, cls.summary, tuple(cls.loop_facts))


OBJECTIVES: dict[str, ObjectiveSpec] = {cls.name: objective_spec(cls) for cls in OBJECTIVE_CLASSES}


@dataclass(frozen=True)
class ObjectiveFlag:
    """One `xlgm train` flag, derived from the config fields that declare it (`option` metadata)."""

    flag: str
    type: type  # float, int or bool (a switch)
    help: str
    exclusive: str | None
    targets: dict[str, str]  # objective name -> its config field

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


def objective_flags(specs: Iterable[ObjectiveSpec]) -> dict[str, ObjectiveFlag]:
    """The flags the objectives' config fields declare (`option` metadata), in declaration order."""
    found: dict[str, dict[str, Any]] = {}
    for spec in specs:
        hints = type_hints(spec.config)
        for f in dataclasses.fields(spec.config):
            meta = f.metadata.get(OPTION_KEY)
            if meta is None:
                continue
            kind = scalar_type(hints[f.name])
            entry = found.setdefault(
                meta["flag"],
                {"flag": meta["flag"], "type": kind, "help": "", "exclusive": meta["exclusive"], "targets": {}},
            )
            if entry["type"] is not kind or entry["exclusive"] != meta["exclusive"]:
                raise TypeError(f"{meta['flag']}: {spec.name}.{f.name} declares it unlike the objectives before it")
            entry["help"] = entry["help"] or meta["help"]
            entry["targets"][spec.name] = f.name
    return {flag: ObjectiveFlag(**entry) for flag, entry in found.items()}


OBJECTIVE_FLAGS: dict[str, ObjectiveFlag] = objective_flags(OBJECTIVES.values())


def _spec(name: str) -> ObjectiveSpec:
    key = str(name).strip().lower()
    if key not in OBJECTIVES:
        raise XlgmError(f"unknown objective {name!r}; expected one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[key]


def config_fields(name: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(_spec(name).config))


def build_config(name: str, **options: Any):
    """The validated frozen config of objective `name`; options set to None take their defaults."""
    spec = _spec(name)
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
    spec = _spec(name)
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
# CLI


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
    exclusive: dict[str, Any] = {}
    for option_flag in OBJECTIVE_FLAGS.values():
        target = group
        if option_flag.exclusive is not None:
            if option_flag.exclusive not in exclusive:
                exclusive[option_flag.exclusive] = group.add_mutually_exclusive_group()
            target = exclusive[option_flag.exclusive]
        if option_flag.type is bool:
            target.add_argument(option_flag.flag, action="store_true", default=None, help=option_flag.help)
        else:
            target.add_argument(option_flag.flag, type=option_flag.type, default=None, help=option_flag.help)
    return parser


def objective_options(namespace: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(name, options) from parsed arguments; an option given for another objective is an error."""
    name = _spec(getattr(namespace, "objective", None) or "adamw").name
    options: dict[str, Any] = {}
    for option_flag in OBJECTIVE_FLAGS.values():
        value = getattr(namespace, option_flag.dest, None)
        if value is None:
            continue
        targets = option_flag.targets
        if name not in targets:
            raise XlgmError(f"{option_flag.flag} applies to --objective {'/'.join(targets)}, not to --objective {name}")
        options[targets[name]] = value
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


__all__ = [
    "LOOP_FACTS",
    "NON_MODEL_KEYS",
    "OBJECTIVES",
    "OBJECTIVE_CLASSES",
    "OBJECTIVE_FLAGS",
    "ASAMConfig",
    "ASAMObjective",
    "AdamWConfig",
    "AdamWObjective",
    "FisherConfig",
    "FisherObjective",
    "MVRConfig",
    "MVRObjective",
    "Objective",
    "ObjectiveFlag",
    "ObjectiveSpec",
    "SAMConfig",
    "SAMObjective",
    "StepContext",
    "add_objective_arguments",
    "asam_perturbation",
    "build_config",
    "build_objective",
    "config_fields",
    "describe_objective",
    "model_inputs",
    "objective_flags",
    "objective_from_args",
    "objective_options",
    "objective_spec",
    "option",
    "sam_perturbation",
]
