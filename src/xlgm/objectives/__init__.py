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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xlgm.errors import XlgmError
from xlgm.objectives.adamw import AdamWConfig, AdamWObjective
from xlgm.objectives.base import NON_MODEL_KEYS, Objective, StepContext, model_inputs
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


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec(
            "adamw",
            AdamWConfig,
            AdamWObjective,
            "Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
            "plain cross-entropy (the loop's AdamW)",
        ),
        ObjectiveSpec(
            "sam",
            SAMConfig,
            SAMObjective,
            "Foret et al., Sharpness-Aware Minimization for Efficiently Improving Generalization, ICLR 2021",
            "gradient at w + rho*g/|g|",
        ),
        ObjectiveSpec(
            "asam",
            ASAMConfig,
            ASAMObjective,
            "Kwon et al., ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep "
            "Neural Networks, ICML 2021",
            "gradient at w + rho*T^2 g/|T g|, T = |w| + eta",
        ),
        ObjectiveSpec(
            "fisher",
            FisherConfig,
            FisherObjective,
            "Jastrzebski et al., Catastrophic Fisher Explosion: Early Phase Fisher Matrix Impacts "
            "Generalization, ICML 2021",
            "CE + lambda * |grad CE(f(x), y_sampled)|^2",
            loop_facts=("batch_size",),
        ),
        ObjectiveSpec(
            "mvr",
            MVRConfig,
            MVRObjective,
            "Wang, Ruder & Neubig, Multi-view Subword Regularization, NAACL 2021",
            "0.5 CE(det) + 0.5 CE(sampled) + lambda * KL(p_det || p_sampled)",
            loop_facts=("task",),
        ),
    )
}


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
        raise XlgmError(
            f"objective {spec.name} has no option {', '.join(unknown)}; its options are: {allowed}"
        )
    return spec.config(**{k: v for k, v in options.items() if v is not None})


def build_objective(name: str, /, *, task: str | None = None, batch_size: int | None = None,
                    **options: Any) -> Objective:
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
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
    if "lam" in fields and hasattr(objective, "lam"):
        fields["lam"] = objective.lam
    return {"objective": objective.name, **fields}


# ----------------------------------------------------------------------------------------------------------
# CLI

# flag -> (argparse dest, {objective: config field})
_FLAGS: dict[str, tuple[str, dict[str, str]]] = {
    "--rho": ("rho", {"sam": "rho", "asam": "rho"}),
    "--asam-eta": ("asam_eta", {"asam": "eta"}),
    "--sam-shared-perturbation": (
        "sam_shared_perturbation",
        {"sam": "shared_perturbation", "asam": "shared_perturbation"},
    ),
    "--fisher-lambda": ("fisher_lambda", {"fisher": "lam"}),
    "--fisher-weight": ("fisher_weight", {"fisher": "weight"}),
    "--fisher-sub-batch": ("fisher_sub_batch", {"fisher": "sub_batch"}),
    "--fisher-every": ("fisher_every", {"fisher": "every"}),
    "--mvr-lambda": ("mvr_lambda", {"mvr": "lam"}),
    "--mvr-rate": ("mvr_rate", {"mvr": "rate"}),
}


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
    group.add_argument("--rho", type=float, default=None, help="sam/asam neighbourhood size (sam 0.05, asam 0.5)")
    group.add_argument("--asam-eta", type=float, default=None, help="asam: eta in T_w = |w| + eta (0.01)")
    group.add_argument(
        "--sam-shared-perturbation",
        action="store_true",
        default=None,
        help="sam/asam: one perturbation per optimizer step from the gradient of all micro-batches "
        "(default: one per micro-batch)",
    )
    fisher_weight = group.add_mutually_exclusive_group()
    fisher_weight.add_argument(
        "--fisher-lambda",
        type=float,
        default=None,
        help="fisher: λ in CE + λ·‖∇CE(ŷ)‖², the gradient of the mean loss over the micro-batch "
        "(default 0.1). The cross-lingual study's authors write the penalty as w·‖∇CE(ŷ)‖²/B with B the micro-batch "
        "per "
        "device (--batch-size), so λ = w/B: 0.1 is w = 3.2 at --batch-size 32; their w = 1e-3 is λ ≈ 3.1e-5 "
        "at 32",
    )
    fisher_weight.add_argument(
        "--fisher-weight",
        type=float,
        default=None,
        help="fisher: the penalty weight in the authors' convention, w (their XNLI script's is 1e-3); "
        "λ = w / --batch-size. Not with --fisher-lambda",
    )
    group.add_argument(
        "--fisher-sub-batch", type=int, default=None, help="fisher: penalty on the first m examples (all)"
    )
    group.add_argument("--fisher-every", type=int, default=None, help="fisher: penalty every k optimizer steps (1)")
    group.add_argument(
        "--mvr-lambda",
        type=float,
        default=None,
        help="mvr: KL weight (default per task, the authors' scripts: xnli 0.2, pawsx 0.6)",
    )
    group.add_argument(
        "--mvr-rate",
        type=float,
        default=None,
        help="mvr: WordPiece dropout rate / Unigram sampling alpha (0.2); 0 disables sampling",
    )
    return parser


def objective_options(namespace: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(name, options) from parsed arguments; an option given for another objective is an error."""
    name = _spec(getattr(namespace, "objective", None) or "adamw").name
    options: dict[str, Any] = {}
    for flag, (dest, targets) in _FLAGS.items():
        value = getattr(namespace, dest, None)
        if value is None:
            continue
        if name not in targets:
            raise XlgmError(
                f"{flag} applies to --objective {'/'.join(targets)}, not to --objective {name}"
            )
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
    "ASAMConfig",
    "ASAMObjective",
    "AdamWConfig",
    "AdamWObjective",
    "FisherConfig",
    "FisherObjective",
    "LOOP_FACTS",
    "MVRConfig",
    "MVRObjective",
    "NON_MODEL_KEYS",
    "OBJECTIVES",
    "Objective",
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
    "objective_from_args",
    "objective_options",
    "sam_perturbation",
]
