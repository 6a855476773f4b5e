"""A study's units and its plan: what each unit is called, and which units every run will have.

Work is cut into units (`xlgm.study.db`): a run's training, each (checkpoint, language) evaluation, each
(checkpoint, measure) measurement and each (group of seeds, group measure) measurement. A unit's id is a content
key (run id, checkpoint id, evaluation settings, measure config hash), so a finished unit stays finished when the
spec changes in ways that do not touch it.

Every run's checkpoints follow from the spec and the size of its training set (`expected_checkpoint_steps`, from
the same step schedule `xlgm train` follows), so the number of units is known before the first one starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xlgm.data.loading import load_task_rows
from xlgm.data.tasks import get_task
from xlgm.measures.base import list_measures
from xlgm.recipes.schedule import config_schedule
from xlgm.recipes.train import split_train_select
from xlgm.results import config_hash
from xlgm.runs import checkpoint_name
from xlgm.study.db import StudyDB
from xlgm.study.spec import StudySpec

# ------------------------------------------------------------------------------------------------------------
# The study folder's files
# ------------------------------------------------------------------------------------------------------------

DB_NAME = "study.sqlite"

SPEC_NAME = "spec.yaml"


def default_out(spec: StudySpec) -> Path:
    return Path("runs") / f"study-{re.sub(r'[^A-Za-z0-9_.-]+', '-', spec.name)}"


# ------------------------------------------------------------------------------------------------------------
# Unit ids
# ------------------------------------------------------------------------------------------------------------


def eval_data_label(spec: StudySpec) -> str:
    """The `data` column of the evaluations: the source, and the row limit when there is one (so that
    evaluations on the first 100 rows and on all rows are different rows, not one overwriting the other)."""
    base = str(spec.data.dir) if spec.data.kind == "local" else spec.data.kind
    return base if spec.evaluation.max_examples is None else f"{base}[:{spec.evaluation.max_examples}]"


def train_unit_id(run_id: str) -> str:
    return f"train/{run_id}"


def eval_key(spec: StudySpec) -> str:
    """What identifies an evaluation setting (and, when outputs are kept, how they are kept)."""
    setting: dict[str, Any] = {
        "task": spec.task,
        "split": spec.evaluation.split,
        "data": eval_data_label(spec),
        "max_length": spec.eval_max_length(),
    }
    if spec.evaluation.mixed_precision != "no":  # fp32 evaluations keep the keys they always had
        setting["mixed_precision"] = spec.evaluation.mixed_precision
    if spec.prediction.enabled:  # a study that starts keeping outputs evaluates again to get them
        setting["outputs"] = {"layer": spec.prediction.embedding_layer, "rows": spec.prediction.embedding_rows}
    return config_hash(setting, 8)


def eval_unit_id(spec: StudySpec, checkpoint_id: str, language: str) -> str:
    return f"eval/{checkpoint_id}/{eval_key(spec)}/{language}"


def outputs_path(spec: StudySpec, run_dir: Path, checkpoint: str, language: str) -> Path:
    """Where an evaluation keeps its outputs (`TextOutputs` as .npz) for the label-free measures."""
    return Path(run_dir) / "outputs" / checkpoint / f"{spec.evaluation.split}-{eval_key(spec)}-{language}.npz"


def measure_unit_id(spec: StudySpec, checkpoint_id: str, item) -> str:
    """A measure item's unit: keyed by its options and its data, so each setting of a sweep is a unit of its own
    and one that an earlier spec already had (at the same options and data) is found done."""
    key = config_hash({"config": spec.measure_config(item), "data": asdict(spec.measure_data(item))}, 8)
    return f"measure/{checkpoint_id}/{item.name}/{key}"


# The plans' key of the study's group units (measures of runs that differ only in their seed).
GROUPS = "(groups)"


def seed_group_id(config) -> str:
    """The id shared by runs whose configs differ only in their seed."""
    fields = asdict(config)
    fields.pop("seed")
    return config_hash(fields)


def seed_groups(configs) -> dict[str, list]:
    """group id -> its configs, for every group of at least 2 seeds, in spec order."""
    groups: dict[str, list] = {}
    for config in configs:
        groups.setdefault(seed_group_id(config), []).append(config)
    return {g: members for g, members in groups.items() if len(members) >= 2}


def group_measure_names() -> list[str]:
    return list_measures("group")


def group_unit_id(group: str, measure: str) -> str:
    return f"group/{group}/{measure}"


# ------------------------------------------------------------------------------------------------------------
# The plan: every run's units, before the run is trained
# ------------------------------------------------------------------------------------------------------------


def planned_units(spec: StudySpec, run_id: str, checkpoints: Sequence[dict] | None) -> list[str]:
    """Every unit of one run; before its training the checkpoints are unknown and only the training unit is."""
    units = [train_unit_id(run_id)]
    checkpoints = list(checkpoints or [])
    chosen = spec.checkpoints.selects([run_id] * len(checkpoints), [c["step"] for c in checkpoints])
    # Before training the best checkpoint is unknown: the plan takes the last, and follows the real one after.
    best = [bool(c.get("is_best", c.get("is_last"))) for c in checkpoints]
    for c, keep, is_best in zip(checkpoints, chosen, best):
        if keep:
            units += [eval_unit_id(spec, c["checkpoint_id"], lang) for lang in spec.languages]
            units += [
                measure_unit_id(spec, c["checkpoint_id"], item) for item in spec.measures.items if item.applies(is_best)
            ]
    return units


def planned_group_units(configs) -> list[str]:
    return [group_unit_id(g, m) for g in seed_groups(configs) for m in group_measure_names()]


def expected_checkpoint_steps(config, num_train: int) -> list[int]:
    """The steps at which `recipes.train.train` (one process) saves the checkpoints of a run of `config` over
    `num_train` rows, when it trains to the end: its step schedule's (`recipes.schedule`)."""
    return config_schedule(config, num_train).checkpoint_steps()


def expected_checkpoints(config, num_train: int) -> list[dict[str, Any]]:
    """The checkpoint rows a run will have (id, step, is_last), before it is trained."""
    steps = expected_checkpoint_steps(config, num_train)
    return [
        {"checkpoint_id": f"{config.run_id}/{checkpoint_name(s)}", "step": s, "is_last": s == steps[-1]} for s in steps
    ]


def training_rows(config, cache: dict | None = None) -> int:
    """How many rows `train` trains on (after holding out the selection rows), read as `train` reads them. A token
    task's are its sentences: the few that tokenizing splits into windows give `train` a row more each, so the
    plan may be a step short until the run is trained and its real checkpoints replace the expected ones."""
    key = (
        config.task,
        config.data,
        config.data_dir,
        config.train_split,
        config.select_split,
        config.source_language,
        config.max_train_examples,
        config.holdout_fraction,
    )
    if cache is not None and key in cache:
        return cache[key]
    task = get_task(config.task)
    rows = load_task_rows(task, config.train_split, config.source_language, config.source, config.max_train_examples)
    # a separate selection split is read by `train` itself; here only its presence matters
    train_rows, _ = split_train_select(config, task, rows, [] if config.select_split != config.train_split else None)
    if cache is not None:
        cache[key] = len(train_rows)
    return len(train_rows)


def unit_plans(spec: StudySpec, db: StudyDB, configs, done: set[str]) -> dict[str, list[str]]:
    """Every run's units: trained runs from their recorded checkpoints, the others from the expected ones."""
    sizes: dict = {}
    plans = {}
    for config in configs:
        if train_unit_id(config.run_id) in done:
            checkpoints = db.checkpoints_of(config.run_id)
        else:
            checkpoints = expected_checkpoints(config, training_rows(config, sizes))
        plans[config.run_id] = planned_units(spec, config.run_id, checkpoints)
    plans[GROUPS] = planned_group_units(configs)
    return plans
