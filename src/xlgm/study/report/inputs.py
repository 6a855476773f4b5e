"""What the report reads: the files `xlgm study analyze` wrote (OUT/analysis/) and, from the study database and
the run folders, the rows evaluated per language, the wall time per kind of work and each run's recorded config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from xlgm.analysis.frame import select_unit
from xlgm.core.errors import XlgmError
from xlgm.data.tasks import get_task
from xlgm.study.analyze import StudyData, evaluated_rows_and_work
from xlgm.study.folders import run_dir
from xlgm.study.report.format import truthy

ANALYSIS_DIR = "analysis"


@dataclass
class AnalysisFiles:
    """OUT/analysis/ files of `xlgm study analyze` that the report shows as they are; None where not written."""

    verdict: pd.DataFrame | None = None  # one row per (measure, target): verdict.csv
    health: pd.DataFrame | None = None  # one row per measure: health.csv
    settings: dict | None = None  # settings.json
    correlations: pd.DataFrame | None = None  # correlations.csv


VERDICT_REQUIRED = ("measure", "target", "verdict")
HEALTH_REQUIRED = ("measure", "healthy")


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise XlgmError(
            f"{path}: not a readable CSV table ({str(exc).splitlines()[0] if str(exc) else 'empty'}); "
            "run `xlgm study analyze` again"
        ) from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise XlgmError(f"{path}: missing column(s) {', '.join(missing)}; run `xlgm study analyze` again")
    return table


def load_analysis_files(folder: Path) -> AnalysisFiles:
    """verdict.csv, health.csv, settings.json and correlations.csv of OUT/analysis/, those that exist."""
    analysis = Path(folder) / ANALYSIS_DIR
    settings = None
    path = analysis / "settings.json"
    if path.is_file():
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise XlgmError(f"{path}: not valid JSON ({exc}); run `xlgm study analyze` again") from None
        if not isinstance(settings, dict):
            raise XlgmError(f"{path}: expected a JSON object, found {type(settings).__name__}")
    health = _read_csv(analysis / "health.csv", HEALTH_REQUIRED)
    if health is not None:
        health["healthy"] = health["healthy"].map(truthy)
    return AnalysisFiles(
        verdict=_read_csv(analysis / "verdict.csv", VERDICT_REQUIRED),
        health=health,
        settings=settings,
        correlations=_read_csv(analysis / "correlations.csv", ("measure", "target", "tau")),
    )


@dataclass
class StudyRecords:
    """What the report reads from study.sqlite besides the analysis frame."""

    eval_rows: dict[str, int] = field(default_factory=dict)  # language -> rows of its evaluation
    seconds: dict[str, float] = field(default_factory=dict)  # work kind (train, eval, measure) -> seconds summed
    run_configs: dict[str, dict] = field(default_factory=dict)  # run_id -> RUN/config.json


def read_study_records(data: StudyData) -> StudyRecords:
    """Rows evaluated per language and the work's wall time per kind, for the study's checkpoints and runs."""
    rows, work = evaluated_rows_and_work(data)
    # The rows give Wilson intervals (tables, figures, the chance check). A token task's rows are sentences and
    # its metric is over words or entities: its report shows no interval rather than a wrong one.
    token_task = get_task(data.spec.task).is_token_task
    return StudyRecords(
        {} if token_task else {str(lang): int(most) for lang, _, most in rows if most},
        {str(kind): float(seconds or 0.0) for kind, _, seconds in work},
        run_records(data),
    )


def run_records(data: StudyData) -> dict[str, dict]:
    """run_id -> RUN/config.json (rows trained on and held out, library versions), for the runs that have one."""
    out = {}
    for run_id in data.runs["run_id"]:
        path = run_dir(data.out, str(run_id)) / "config.json"
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise XlgmError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(record, dict):
            out[str(run_id)] = record
    return out


def metric_name(data: StudyData) -> str:
    """What the study's `accuracy` values are, as the report names them: accuracy, or a token task's metric
    (token accuracy, entity F1)."""
    return get_task(data.spec.task).metric_name


def chance_level(data: StudyData) -> tuple[float, str]:
    """The metric of a model that learned nothing (`Task.chance`): the value and how the report writes it."""
    return get_task(data.spec.task).chance


def evaluation_rows_text(data: StudyData, rows: dict[str, int]) -> str:
    """The evaluated rows a language, as the study facts give them: the counts found, else what the spec asked
    (a token task's rows are sentences, whose count the study does not store)."""
    if rows:
        return ", ".join(sorted({str(n) for n in rows.values()}))
    limit = data.spec.evaluation.max_examples
    if get_task(data.spec.task).is_token_task:
        return "all sentences" if limit is None else f"the first {limit} sentences (fewer where a language has fewer)"
    return "unknown"


def task_num_labels(data: StudyData) -> int:

    return get_task(data.spec.task).num_labels


def target_eval_rows(data: StudyData, records: StudyRecords) -> int | None:
    """Rows behind a mean target accuracy: those of one target language. The target sets are translations of the
    same rows, so their errors are not independent; one language's rows give the conservative interval."""
    counts = [records.eval_rows[lang] for lang in data.spec.target_languages if lang in records.eval_rows]
    return min(counts) if counts else None


def one_checkpoint_per_run(data: StudyData) -> pd.DataFrame:
    """One checkpoint per run (the analysis' run_reduce; `last` when the best checkpoint was not measured)."""

    base = data.frame
    try:
        return select_unit(base, "run", data.spec.analysis.run_reduce)
    except Exception:  # noqa: BLE001 - e.g. `best` not among the measured checkpoints
        return select_unit(base, "run", "last")
