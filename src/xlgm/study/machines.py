"""Which machines computed a study's units, and whether each stage's units come from one kind of machine.

Results agree bit for bit only between machines of one kind (`xlgm.core.machine.machine_kind`: the kernel-picking
instruction sets, GPU, threads, resolved precision, torch). Stages run in different precisions by design (training
in `auto`, evaluation and measures in fp32), so kinds are compared within a stage: a study is *mixed* when the
units of one stage (train, eval, measure or group) come from more than one kind. Units whose machine was not
recorded (study files older than the record) are counted as unknown and do not make a study mixed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from xlgm.core.machine import describe_machine, machine_kind
from xlgm.study.db import StudyDB
from xlgm.study.spec import StudySpec
from xlgm.study.units import DB_NAME, seed_groups

UNKNOWN = "unknown"
# `kinds`: how many kinds of machine the unit's record covers (2 or more: a training resumed on another kind).
COLUMNS = ["unit_id", "stage", "run_id", "machine_id", "machine", "kinds", "description"]
# Unit ids a mixed-machine table names per row before it only counts the rest (analysis/machines.csv has them all).
NAMED_UNITS = 20


def study_unit_machines(spec: StudySpec, out: Path) -> pd.DataFrame:
    """One row per finished unit of the study's runs and groups of seeds: its stage, run (or group), machine id,
    machine kind and a description for people (`unknown` where the file does not say)."""
    configs = spec.run_configs()
    owners = [c.run_id for c in configs] + list(seed_groups(configs))
    with StudyDB(out / DB_NAME) as db:
        rows = db.query(
            "SELECT w.unit_id, w.kind, w.run_id, w.machine_id, m.record FROM work AS w LEFT JOIN machines AS m "
            f"ON m.machine_id = w.machine_id WHERE w.run_id IN ({','.join('?' * len(owners))}) ORDER BY w.unit_id",
            tuple(owners),
        )
    out_rows = []
    for unit_id, stage, run_id, machine_id, record in rows:
        machine = json.loads(record) if record else None
        kinds = len(machine["mixed"]) if machine and "mixed" in machine else 1
        out_rows.append((unit_id, stage, run_id, machine_id, machine_kind(machine), kinds, describe_machine(machine)))
    return pd.DataFrame(out_rows, columns=COLUMNS)


def machine_counts(units: pd.DataFrame) -> dict[str, str]:
    """Each machine (its description) with its units per stage, e.g. `3 train, 12 eval`; for the settings."""
    counts: dict[str, str] = {}
    if units.empty:
        return counts
    for description, group in units.groupby("description", sort=True):
        per_stage = group["stage"].value_counts()
        counts[str(description)] = ", ".join(f"{int(n)} {stage}" for stage, n in per_stage.sort_index().items())
    return counts


def mixed_stages(units: pd.DataFrame) -> dict[str, list[str]]:
    """Stage -> its machine kinds, for the stages whose known units come from more than one kind (or hold a unit
    that does itself: a training resumed on another kind of machine)."""
    known = units[units["machine"] != UNKNOWN]
    mixed = {}
    for stage, group in known.groupby("stage"):
        kinds = sorted(map(str, group["machine"].unique()))
        if len(kinds) > 1 or (group["kinds"] > 1).any():
            mixed[str(stage)] = kinds
    return mixed


def mixed_units_table(units: pd.DataFrame) -> pd.DataFrame:
    """For each mixed stage, one row per machine: the stage, the machine, its units and their ids (the first
    `NAMED_UNITS`; analysis/machines.csv lists every unit)."""
    mixed = mixed_stages(units)
    rows = []
    for (stage, description), group in units[units["stage"].isin(list(mixed))].groupby(["stage", "description"]):
        ids = list(group["unit_id"])
        named = ", ".join(ids[:NAMED_UNITS]) + (f" and {len(ids) - NAMED_UNITS} more" if len(ids) > NAMED_UNITS else "")
        rows.append((stage, description, len(ids), named))
    return pd.DataFrame(rows, columns=["stage", "machine", "units", "unit ids"])


def mixed_machines_note(units: pd.DataFrame) -> str | None:
    """One sentence when the study's units come from more than one kind of machine, else None."""
    mixed = mixed_stages(units)
    if not mixed:
        return None
    stages = ", ".join(mixed)
    return (
        f"units computed on more than one kind of machine (stages: {stages}): their numbers do not agree bit for "
        "bit and may differ as much as a change of seed does; compare a measure's cross-machine difference with its "
        "spread over seeds (analysis/machines.csv names every unit's machine)"
    )
