"""Optimization objectives: each module holds one (registered by `registry.register_objective`), and
`registry.py` builds them by name and gives `xlgm train` their flags.

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

import sys

from xlgm.core.modules import import_submodules
from xlgm.objectives.adamw import AdamWConfig, AdamWObjective
from xlgm.objectives.base import NON_MODEL_KEYS, OPTION_KEY, Objective, StepContext, model_inputs, option
from xlgm.objectives.fisher import FisherConfig, FisherObjective
from xlgm.objectives.mvr import MVRConfig, MVRObjective
from xlgm.objectives.registry import (
    LOOP_FACTS,
    OBJECTIVES,
    ObjectiveSpec,
    add_objective_arguments,
    build_config,
    build_objective,
    config_fields,
    describe_objective,
    get_objective,
    objective_flags,
    objective_from_args,
    objective_options,
    objective_spec,
    register_objective,
)
from xlgm.objectives.sam import (
    ASAMConfig,
    ASAMObjective,
    SAMConfig,
    SAMObjective,
    asam_perturbation,
    sam_perturbation,
)

# Importing the package's modules registers their objectives: a new objective is one module.
import_submodules(sys.modules[__name__])

# The registered objective classes, in registration order.
OBJECTIVE_CLASSES: tuple[type, ...] = tuple(spec.factory for spec in OBJECTIVES.values())  # type: ignore[misc]

__all__ = [
    "LOOP_FACTS",
    "NON_MODEL_KEYS",
    "OBJECTIVES",
    "OBJECTIVE_CLASSES",
    "OPTION_KEY",
    "ASAMConfig",
    "ASAMObjective",
    "AdamWConfig",
    "AdamWObjective",
    "FisherConfig",
    "FisherObjective",
    "MVRConfig",
    "MVRObjective",
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
    "get_objective",
    "model_inputs",
    "objective_flags",
    "objective_from_args",
    "objective_options",
    "objective_spec",
    "option",
    "register_objective",
    "sam_perturbation",
]
