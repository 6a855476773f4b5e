"""`xlgm study run SPEC`: train every grid point, evaluate and measure its checkpoints, one SQLite file per study.

    OUT/spec.yaml        the validated spec as last run (every default written out; `analyze OUT` reads it)
    OUT/study.sqlite     runs, checkpoints, evaluations, measures (`xlgm.results`) + study, study_runs, work;
                         its paths are relative to OUT, so the folder can be moved or copied
    OUT/runs/<prefix>-<run_id>/  one run directory per grid point (`xlgm.runs`): its config hash after a readable
                         prefix (`folders`; a bare <run_id> in studies written before)
    OUT/quarantine/<time>/  files found unfinished or corrupt, moved aside (same layout as OUT) before redoing
                         their unit, and the database rows of a run that is redone (rows/<run_id>.json)
    OUT/.lock            held by the running `study run` (`xlgm.study.lock`): one at a time per folder

Work is cut into units (`study.units`): a run's training, each (checkpoint, language) evaluation and each
(checkpoint, measure) measurement. A unit's rows and its done-mark are written in one transaction, so the study
can be killed at any moment (kill -9 included) and run again: finished units are skipped, a run directory whose
training has no done-mark resumes from its last checkpoint (`xlgm train --resume`: optimizer, schedule, data
order and random states, so it ends as if never stopped) or, when it cannot be resumed, is moved aside and
trained again, and nothing is recorded twice.

The study loop, `run_study`, in order:
    write OUT/spec.yaml and record the study    (`study.db`)
    check the files of finished units           (`study.repair`: what is unfinished or corrupt is redone)
    plan every run's units                      (`study.units`: known before any run is trained)
    run the unfinished units of each run        (`study.executors`: local or Ray), showing progress
                                                (`study.progress`: the bar and the time left)
    run the measures of groups of seeds         (`study.executors.run_groups`)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from xlgm.core.errors import XlgmError
from xlgm.data.loading import DataSource, load_task_rows
from xlgm.data.tasks import get_task
from xlgm.study.db import StudyDB
from xlgm.study.executors import EXECUTORS, RunTask, check_device, run_groups, run_on_ray, run_point
from xlgm.study.lock import study_lock
from xlgm.study.progress import StudyProgress
from xlgm.study.repair import Quarantine, repair
from xlgm.study.spec import StudySpec
from xlgm.study.units import DB_NAME, SPEC_NAME, default_out, unit_plans


@dataclass
class StudyResult:
    study_id: str
    out: Path
    runs: int
    units_done: int
    units_total: int
    units_now: int  # finished by this invocation
    units_planned: int = 0  # the bar's total, known before the first unit started
    repairs: list[str] = field(default_factory=list)  # unfinished or corrupt files found and set aside


def run_study(
    spec: StudySpec,
    out: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    cpus_per_task: int | None = None,
    show_progress: bool = True,
    spec_text: str | None = None,
    device: str = "auto",
) -> StudyResult:
    """Run (or resume) a study; returns what was done. See the module docstring."""
    if executor not in EXECUTORS:
        raise XlgmError(f"unknown executor {executor!r}; expected one of: {', '.join(EXECUTORS)}")
    device = check_device(device, executor)
    out = Path(out or default_out(spec)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if spec_text is None and Path(spec.source).is_file():
        spec_text = Path(spec.source).read_text(encoding="utf-8")
    configs = spec.run_configs()
    with study_lock(out), StudyDB(out / DB_NAME) as db:  # a garbage database fails here, before any write
        # OUT/spec.yaml: the validated spec with every default and an absolute data folder, so that `analyze OUT`
        # and `report OUT` read exactly this study; the YAML as written is kept in the study table.
        tmp = out / (SPEC_NAME + ".tmp")
        tmp.write_text(
            f"# {spec.name} ({spec.study_id}), written by `xlgm study run` from {spec.source}\n" + spec.to_yaml(),
            encoding="utf-8",
        )
        os.replace(tmp, out / SPEC_NAME)
        _check_data(spec)
        db.record_study(spec.study_id, spec.name, spec.to_dict(), spec_text, [c.run_id for c in configs])
        db.relativize_paths()
        repairs = repair(spec, out, db, configs, Quarantine(out), _say)
        done = db.done_units()
        progress = StudyProgress(spec, db, unit_plans(spec, db, configs, done), done, show_progress)
        todo = [
            RunTask(spec, c, str(out), frozenset(u for u in done if c.run_id in u), show_progress, device)
            for c in configs
            if not set(progress.plans[c.run_id]) <= done
        ]
        try:
            if executor == "local":
                for task in todo:
                    run_point(task, progress.commit)
            else:
                run_on_ray(todo, progress.commit, address, cpus_per_task, device)
            run_groups(spec, out, db, configs, progress.done, progress.commit)
        finally:
            finished, total = progress.close()
    return StudyResult(spec.study_id, out, len(configs), finished, total, progress.now, progress.planned, repairs)


def _say(line: str) -> None:
    tqdm.write(f"xlgm: {line}", file=sys.stderr)


def _check_data(spec: StudySpec) -> None:
    """Read every evaluation file before training anything: a missing or malformed file fails in seconds."""
    if spec.data.kind == "hf":
        return  # loading the Hub data here would download it twice as often; the loaders report errors

    task = get_task(spec.task)
    source = DataSource(spec.data.kind, spec.data.dir)
    for lang in spec.languages:
        load_task_rows(task, spec.evaluation.split, lang, source, spec.evaluation.max_examples)
    for data in dict.fromkeys(spec.measures.data_of(item) for item in spec.measures.items):  # a sweep's sizes
        load_task_rows(task, data.split, data.language, source, data.max_examples)
