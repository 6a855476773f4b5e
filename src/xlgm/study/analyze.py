"""`xlgm study analyze SPEC_OR_DIR`: which measure predicts cross-lingual accuracy in this study?

Reads the study's SQLite file (only the rows of the spec's runs, evaluation setting and measure configs),
builds the analysis frame (`xlgm.analysis.build_frame`, one row per checkpoint) and writes to OUT/analysis/:

    verdict.csv               per measure, three answers: tau with the transfer residual (beyond the fit?), the mean
                              target accuracy and the source accuracy (the fit), each with its run-level CI and
                              adjusted p, the two-level CI, the within- and between-configuration tests and the
                              level the answer rests on, Psi, CMI K, the expected sign, agrees / disagrees /
                              inconclusive / excluded, the measure's finding and health (`xlgm.analysis.verdict`)
    findings.csv              one row per measure: its finding and the three answers (tau, Holm p, verdict, level)
    sensitivity.csv           per measure setting (a swept measure's settings are measures of their own, named
                              `sharpness-diff[rows=64,alpha=0.05,sigma=0.001]`) and verdict target: the rows it
                              saw and its swept options, tau with its run-level CI, Holm p and verdict, and its
                              draw-to-draw and seed-to-seed spread (`xlgm.analysis.sensitivity`); its Holm
                              correction runs over every setting's tests
    stability.csv             per swept measure and verdict target: whether the verdict holds at every setting or
                              flips, and tau's range over the settings
    levels.csv                the within-configuration (exact permutation among seeds), between-configuration
                              (configuration means) and two-level bootstrap results behind the verdict
                              (`xlgm.analysis.levels`)
    languages.csv             per (measure, target language): tau with its accuracy and with its residual, raw and
                              Holm-adjusted p (family: all measures x target languages of that kind)
    fit.csv                   the fit of target on source accuracy behind the residuals: its degree, the straight
                              line's slope and intercept, in-sample and leave-one-configuration-out R^2
                              (`xlgm.analysis.fit`)
    health.csv                per measure: checkpoints, converged, saturated, NaN, constant, healthy, why not
    frame.csv                 the frame: configuration, config, measures, acc_<lang>, rows_<lang>, mean_target,
                              gap_<lang>, mean_gap, resid_<lang>, transfer_residual(_oof)
    correlations.{csv,json}   every measure vs every target: Kendall tau-b, Spearman, Pearson, run-level permutation
                              p-values (raw, Holm, Benjamini-Hochberg over the table), run-level bootstrap CIs,
                              runs and checkpoints behind each
    granulated.{csv,json}     Jiang et al.'s granulated Kendall Psi over the hyperparameter axes
    cmi.{csv,json}            Jiang et al.'s conditional-mutual-information criterion K vs the mean target accuracy
    top.csv                   the strongest correlations by |tau|, with their adjusted p, whether they survive and
                              whether the measure is healthy
    groups.csv                group measures (parameter-variance-across-seeds) of each group of seeds, with the
                              group's mean accuracy; group_correlations.csv: Kendall tau over the groups, exact p
    summary.json              study id, unit, axes, measures, languages, rows, completeness
    settings.json             the spec, every measure's options, data sizes, library versions, wall times, and
                              the machines that computed the units (with their units per stage)
    machines.csv              every finished unit's machine (`xlgm.study.machines`); a study whose units of one
                              stage come from more than one kind of machine gets a note saying so

The terminal summary prints the verdict first. The unit of correlation is the checkpoint or the run
(`analysis.unit`, `analysis.run_reduce`); either way the intervals and p-values resample and permute whole runs,
because checkpoints of one run are not independent (`xlgm.analysis.correlation`). The axes are the
spec's `analysis.axes`, or by default the configuration fields that vary over the study's runs, minus those that
another axis already determines (e.g. `rho` when every SAM run has the same rho: it only restates `objective`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xlgm.analysis import (
    MEAN_TARGET,
    add_targets,
    build_frame,
    cmi_table,
    correlation_table,
    flatten_configs,
    granulated_table,
    top_correlations,
)
from xlgm.analysis.frame import CONFIGURATION
from xlgm.analysis.health import measure_health
from xlgm.analysis.levels import level_table
from xlgm.analysis.multiple import adjust_table
from xlgm.analysis.report_table import fit_table, language_table, prepare_frame
from xlgm.analysis.sensitivity import ROWS, SETTING, sensitivity_table, stability_table
from xlgm.analysis.verdict import findings_table, verdict_table, verdict_targets
from xlgm.core.errors import XlgmError
from xlgm.core.files import write_json
from xlgm.data.tasks import get_task
from xlgm.measures.base import get_measure
from xlgm.results import config_hash
from xlgm.study.db import StudyDB
from xlgm.study.machines import machine_counts, mixed_machines_note, study_unit_machines
from xlgm.study.spec import StudySpec, load_spec
from xlgm.study.units import (
    DB_NAME,
    SPEC_NAME,
    default_out,
    eval_data_label,
    planned_units,
    seed_group_id,
    train_unit_id,
)

AXIS_PRIORITY = ("objective", "seed", "lr")


@dataclass
class StudyData:
    """What the analysis and the report read from a study folder."""

    spec: StudySpec
    out: Path
    frame: pd.DataFrame  # one row per checkpoint, with the targets added
    runs: pd.DataFrame  # run_id + flattened config, one row per run of the spec that has finished training
    checkpoints: pd.DataFrame
    measures: list[str]  # measure columns present in the frame
    axes: list[str]
    units_done: int
    units_total: int
    notes: list[str] = field(default_factory=list)
    configs: dict[str, dict] = field(default_factory=dict)  # run_id -> the TrainConfig as recorded
    machines: pd.DataFrame = field(default_factory=pd.DataFrame)  # each finished unit's machine (`study.machines`)

    @property
    def languages(self) -> list[str]:
        return list(self.spec.languages)


def resolve_study(target: str | Path, out: str | Path | None = None) -> tuple[StudySpec, Path]:
    """A study folder (with OUT/spec.yaml) or a spec file (its folder: --out, else the default)."""
    path = Path(target)
    if path.is_dir():
        if not (path / DB_NAME).is_file():
            raise XlgmError(f"{path}: not a study folder (no {DB_NAME}); run `xlgm study run SPEC --out {path}`")
        if not (path / SPEC_NAME).is_file():
            raise XlgmError(f"{path}: the study folder has no {SPEC_NAME}")
        return load_spec(path / SPEC_NAME), Path(out) if out else path
    spec = load_spec(path)
    folder = Path(out) if out else default_out(spec)
    if not (folder / DB_NAME).is_file():
        raise XlgmError(
            f"{folder / DB_NAME}: no results yet; run `xlgm study run {path}"
            + (f" --out {out}`" if out else "`")
            + " first"
        )
    return spec, folder


def _in(values: list[str]) -> str:
    return ",".join("?" * len(values))


def load_study(spec: StudySpec, out: Path) -> StudyData:
    """The spec's rows from OUT/study.sqlite as an analysis frame (targets added), with the axes chosen."""

    run_ids = [c.run_id for c in spec.run_configs()]
    notes: list[str] = []
    with StudyDB(out / DB_NAME) as db:
        done = db.done_units()
        trained = [r for r in run_ids if train_unit_id(r) in done]
        rows = db.query(f"SELECT run_id, config FROM runs WHERE run_id IN ({_in(trained)})", tuple(trained))
        runs = pd.DataFrame(rows, columns=["run_id", "config"])
        ckpts = pd.DataFrame(
            db.query(
                "SELECT checkpoint_id, run_id, step, epoch, dev_accuracy, is_best, is_last FROM checkpoints "
                f"WHERE run_id IN ({_in(trained)})",
                tuple(trained),
            ),
            columns=["checkpoint_id", "run_id", "step", "epoch", "dev_accuracy", "is_best", "is_last"],
        )
        planned = [
            u
            for r in run_ids
            for u in planned_units(spec, r, ckpts[ckpts.run_id == r].to_dict("records") if r in trained else None)
        ]
        units_done = sum(u in done for u in planned)
        if not ckpts.empty:
            ckpts["is_best"] = ckpts["is_best"].astype(bool)
            ckpts["is_last"] = ckpts["is_last"].astype(bool)
            keep = spec.checkpoints.selects(list(ckpts.run_id), list(ckpts.step))
            measured = ckpts[keep]
        else:
            measured = ckpts
        ids = list(measured["checkpoint_id"])
        evals = pd.DataFrame(
            db.query(
                f"SELECT checkpoint_id, language, accuracy, num_examples FROM evaluations WHERE task=? AND split=? "
                f"AND data=? "
                f"AND language IN ({_in(list(spec.languages))}) AND checkpoint_id IN ({_in(ids)})",
                (spec.task, spec.evaluation.split, eval_data_label(spec), *spec.languages, *ids),
            ),
            columns=["checkpoint_id", "language", "accuracy", "num_examples"],
        )
        meas = stored_measures(db, spec, ids)[["checkpoint_id", "measure", "value"]]
    if units_done < len(planned):
        notes.append(f"the study is not finished: {units_done} of {len(planned)} known units done")
    if evals.empty:
        raise XlgmError(f"{out / DB_NAME}: no evaluations of this study's runs yet; run the study first")
    frame = build_frame(evals, meas, runs, measured)
    # each run's configuration (its seed group: the runs that differ only in their seed)
    configuration = {c.run_id: seed_group_id(c) for c in spec.run_configs()}
    frame.insert(2, CONFIGURATION, frame["run_id"].map(configuration))
    frame = add_targets(frame, list(spec.languages), spec.source_language)
    measures = [m for m in spec.measures.labels if m in frame.columns]  # a swept measure: one column a setting
    missing = [m for m in spec.measures.labels if m not in frame.columns]
    if missing:
        notes.append(f"no values yet for measure(s) {', '.join(missing)}")
    flat = flatten_configs(runs)
    axes = list(spec.analysis.axes) if spec.analysis.axes else auto_axes(flat)
    unknown = [a for a in axes if a not in frame.columns]
    if unknown:
        raise XlgmError(
            f"{spec.source}: analysis.axes: unknown config field(s) {', '.join(unknown)}; "
            f"known: {', '.join(c for c in flat.columns if c != 'run_id')}"
        )
    configs = {r: json.loads(c) for r, c in zip(runs["run_id"], runs["config"])}
    machines = study_unit_machines(spec, out)
    if (note := mixed_machines_note(machines)) is not None:
        notes.append(note)
    return StudyData(spec, out, frame, flat, ckpts, measures, axes, units_done, len(planned), notes, configs, machines)


def auto_axes(runs: pd.DataFrame) -> list[str]:
    """The hyperparameter axes of a grid: config fields that vary over the runs and are not determined by the axes
    kept before them (objective, seed and lr first, then the config's order)."""
    columns = [c for c in runs.columns if c != "run_id"]
    order = [c for c in AXIS_PRIORITY if c in columns] + [c for c in columns if c not in AXIS_PRIORITY]
    table = runs[columns].map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else v)
    kept: list[str] = []
    for column in order:
        if table[column].nunique(dropna=False) < 2:
            continue
        if kept and (table.groupby(kept, dropna=False)[column].nunique(dropna=False) <= 1).all():
            continue  # a function of the axes already kept (e.g. rho, constant within each objective)
        kept.append(column)
    return kept


def stored_measures(db: StudyDB, spec: StudySpec, ids: list[str]) -> pd.DataFrame:
    """The stored results (checkpoint_id, measure, value, spread, details) of the spec's measure items at these
    checkpoints, `measure` being the item's name in the analysis (a swept measure's setting: its label)."""
    rows: list[tuple] = []
    for item in spec.measures.items:
        found = db.query(
            f"SELECT checkpoint_id, value, spread, details FROM measures WHERE measure=? AND config_hash=? "
            f"AND data=? AND checkpoint_id IN ({_in(ids)})",
            (item.name, config_hash(spec.measure_config(item)), spec.measure_data(item).key, *ids),
        )
        label = spec.measures.label(item)
        rows += [(c, label, value, spread, details) for c, value, spread, details in found]
    return pd.DataFrame(rows, columns=["checkpoint_id", "measure", "value", "spread", "details"])


def measure_directions(names: list[str], spec: StudySpec | None = None) -> dict[str, tuple[int | None, str]]:
    """measure -> (expected sign vs accuracy, citation) as registered; (None, "") for an unregistered name. With
    the spec, a swept measure's settings (its labels) take their measure's."""

    measure_of = {} if spec is None else {spec.measures.label(m): m.name for m in spec.measures.items}
    out: dict[str, tuple[int | None, str]] = {}
    for name in names:
        try:
            registered = get_measure(measure_of.get(name, name))
        except XlgmError:
            out[name] = (None, "")
            continue
        out[name] = (registered.expected_sign, registered.direction_reference)
    return out


def measure_rows(data: StudyData) -> pd.DataFrame:
    """The stored results (checkpoint_id, measure, value, spread, details) of the spec's measures at the frame's
    checkpoints: what `xlgm.analysis.health.measure_health` reads."""
    with StudyDB(data.out / DB_NAME) as db:
        return stored_measures(db, data.spec, list(data.frame["checkpoint_id"]))


def analysis_tables(data: StudyData) -> dict[str, pd.DataFrame]:
    """verdict, health, correlations, granulated, cmi and top tables (granulated/cmi are empty without axes)."""

    spec, a = data.spec, data.spec.analysis
    if not data.measures:
        raise XlgmError(f"{data.out}: no measure values yet; nothing to correlate")
    frame = _base_frame(data)
    unit, run_reduce = a.unit, a.run_reduce
    directions = measure_directions(data.measures, spec)
    targets = verdict_targets(spec.source_language)
    signs = {m: s for m, (s, _) in directions.items() if s is not None}
    corr = correlation_table(
        frame,
        data.measures,
        data.languages,
        spec.source_language,
        data.axes,
        n_boot=a.n_boot,
        confidence=a.confidence,
        seed=a.seed,
        expected_signs=signs,
        unit=unit,
        run_reduce=run_reduce,
    )
    corr = adjust_table(corr, "tau_p")  # one family: every (measure, target) of the table
    tables = {"correlations": corr}
    if data.axes:
        tables["granulated"] = granulated_table(
            frame, data.measures, data.languages, spec.source_language, data.axes, unit=unit, run_reduce=run_reduce
        )
        cmi = {
            target: cmi_table(
                frame,
                data.measures,
                data.languages,
                spec.source_language,
                data.axes,
                target=target,
                max_conditioning=a.max_conditioning,
                unit=unit,
                run_reduce=run_reduce,
            )
            for target in targets.values()
        }
        tables["cmi"] = cmi[MEAN_TARGET]
        verdict_cmi = pd.concat(cmi.values(), ignore_index=True)  # K vs the gap too, for the verdict
    else:
        tables["granulated"] = pd.DataFrame()
        tables["cmi"] = verdict_cmi = pd.DataFrame()
        data.notes.append("no hyperparameter axis varies: granulated Kendall and CMI left out")
    stored = measure_rows(data)
    tables["health"] = measure_health(stored, data.measures)
    tables["levels"] = level_table(
        frame,
        data.measures,
        data.languages,
        spec.source_language,
        list(targets.values()),
        unit=unit,
        run_reduce=run_reduce,
        n_boot=a.n_boot,
        confidence=a.confidence,
        seed=a.seed,
    )

    def verdict_of(measures: list[str]) -> pd.DataFrame:
        return verdict_table(
            corr,
            tables["health"],
            directions,
            levels=tables["levels"],
            granulated=tables["granulated"],
            cmi=verdict_cmi,
            measures=measures,
            source=spec.source_language,
        )

    # The verdict judges each measure once (its primary setting); every setting of a sweep is judged in the
    # sensitivity table, whose Holm correction runs over all the settings.
    primary = [m for m in spec.measures.primary_labels if m in data.measures]
    tables["verdict"] = verdict_of(primary)
    tables["findings"] = findings_table(tables["verdict"])
    swept = primary != data.measures
    tables["sensitivity"] = sensitivity_table(
        verdict_of(data.measures) if swept else tables["verdict"],
        measure_settings(spec, data.measures),
        run_frame(data),
        stored.rename(columns={"measure": SETTING}),
    )
    tables["stability"] = stability_table(tables["sensitivity"])
    tables["languages"] = language_table(corr)
    tables["fit"] = fit_table(
        frame, data.measures, data.languages, spec.source_language, unit=unit, run_reduce=run_reduce
    )
    top = top_correlations(corr, a.top)
    healthy = dict(zip(tables["health"]["measure"], tables["health"]["healthy"].astype(bool)))
    top["healthy"] = [healthy.get(m, False) for m in top["measure"]]
    tables["top"] = top
    tables["groups"], tables["group_correlations"] = group_tables(data)
    return tables


def group_tables(data: StudyData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(groups, group_correlations): each group measure of each group of seeds with the group's mean accuracy
    (its runs' best checkpoints), and per group measure Kendall tau over the groups with its exact p-value.
    Groups are few (one per configuration), so tau here is rarely more than inconclusive."""
    from scipy.stats import kendalltau

    with StudyDB(data.out / DB_NAME) as db:
        rows = db.query("SELECT group_id, measure, run_ids, checkpoint_ids, value FROM group_measures")
    best = data.frame[data.frame["is_best"].fillna(False).astype(bool)].set_index("checkpoint_id")
    source = f"acc_{data.spec.source_language}"
    records = []
    for group, measure, run_ids, checkpoint_ids, value in rows:
        runs, checkpoints = json.loads(run_ids), json.loads(checkpoint_ids)
        if not set(runs) <= set(data.configs) or not set(checkpoints) <= set(best.index):
            continue  # another spec's group, or a run of it not analysed
        config = data.configs[runs[0]]
        options = " ".join(f"{k}={v}" for k, v in sorted(config.get("objective_options", {}).items()))
        records.append(
            {
                "measure": measure,
                "group_id": group,
                "group": f"{config['objective']} {options}".strip(),
                "runs": len(runs),
                "value": value,
                "mean_target": float(best.loc[checkpoints, "mean_target"].mean()),
                "source_accuracy": float(best.loc[checkpoints, source].mean()),
                "run_ids": " ".join(runs),
            }
        )
    groups = pd.DataFrame(
        records,
        columns=["measure", "group_id", "group", "runs", "value", "mean_target", "source_accuracy", "run_ids"],
    )
    summary = []
    for measure, part in groups.groupby("measure", sort=True):
        n = len(part)
        tau, p = kendalltau(part["value"], part["mean_target"]) if n >= 3 else (math.nan, math.nan)
        decided = n >= 4 and math.isfinite(p) and p < 0.05
        summary.append(
            {
                "measure": measure,
                "groups": n,
                "tau": tau,
                "p": p,
                "finding": ("higher with higher accuracy" if tau > 0 else "higher with lower accuracy")
                if decided
                else "inconclusive",
            }
        )
    return groups, pd.DataFrame(summary, columns=["measure", "groups", "tau", "p", "finding"])


def measure_settings(spec: StudySpec, labels: list[str]) -> pd.DataFrame:
    """One row per measure setting in the analysis: its label, measure, rows (NaN: all) and the value of each
    option some setting of its measure sweeps (sensitivity_table's `settings`)."""
    by_label = {spec.measures.label(m): m for m in spec.measures.items}
    rows = []
    for label in labels:
        item = by_label[label]
        options = {k: v for k, v in spec.measures.setting(item).items() if k != "max_examples"}
        rows.append({SETTING: label, "measure": item.name, ROWS: spec.measure_data(item).max_examples, **options})
    table = pd.DataFrame(rows)
    return table.astype({ROWS: float}) if not table.empty else pd.DataFrame(columns=[SETTING, "measure", ROWS])


def run_frame(data: StudyData) -> pd.DataFrame:
    """One row per run (its checkpoint by `analysis.run_reduce`), with its configuration."""
    return prepare_frame(
        _base_frame(data),
        data.measures,
        data.languages,
        data.spec.source_language,
        unit="run",
        run_reduce=data.spec.analysis.run_reduce,
    )


def _base_frame(data: StudyData) -> pd.DataFrame:
    """The frame without the derived targets (the analysis functions add them after reducing to the unit)."""
    derived = [c for c in data.frame.columns if c.startswith("gap_") or c in ("mean_target", "mean_gap")]
    return data.frame.drop(columns=derived)


def unit_frame(data: StudyData) -> pd.DataFrame:
    """The rows correlated over (checkpoints, or one per run), with the targets."""

    unit, run_reduce = data.spec.analysis.unit, data.spec.analysis.run_reduce
    return prepare_frame(
        _base_frame(data),
        data.measures,
        data.languages,
        data.spec.source_language,
        unit=unit,
        run_reduce=run_reduce,
    )


def _jsonable(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records", default_handler=str))


def write_tables(data: StudyData, tables: dict[str, pd.DataFrame]) -> Path:
    folder = data.out / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    data.frame.to_csv(folder / "frame.csv", index=False)
    data.machines.to_csv(folder / "machines.csv", index=False)
    for name in ("correlations", "granulated", "cmi"):
        tables[name].to_csv(folder / f"{name}.csv", index=False)
        write_json(folder / f"{name}.json", _jsonable(tables[name]), indent=1, sort_keys=False)
    for name in (
        "top",
        "verdict",
        "findings",
        "sensitivity",
        "stability",
        "levels",
        "languages",
        "fit",
        "health",
        "groups",
        "group_correlations",
    ):
        if name in tables and (name not in ("groups", "group_correlations") or not tables[name].empty):
            tables[name].to_csv(folder / f"{name}.csv", index=False)
    summary = {
        "study_id": data.spec.study_id,
        "name": data.spec.name,
        "unit": data.spec.analysis.unit,
        "run_reduce": data.spec.analysis.run_reduce,
        "axes": data.axes,
        "measures": data.measures,
        "languages": data.languages,
        "source_language": data.spec.source_language,
        "checkpoints": int(len(data.frame)),
        "runs": int(data.frame["run_id"].nunique()),
        "units_done": data.units_done,
        "units_total": data.units_total,
        "notes": data.notes,
    }
    write_json(folder / "summary.json", summary, indent=1, sort_keys=False)
    write_json(folder / "settings.json", study_settings(data), indent=1, sort_keys=False)
    return folder


LIBRARIES = ("xlgm", "torch", "transformers", "tokenizers", "numpy", "scipy", "pandas", "scikit-learn", "accelerate")


def evaluated_rows_and_work(data: StudyData) -> tuple[list[tuple], list[tuple]]:
    """For the study's checkpoints and runs: (language, fewest rows, most rows) of their evaluations, and
    (kind, units, seconds) of their work."""
    spec = data.spec
    run_ids = [str(r) for r in data.frame["run_id"].unique()]
    ids = [str(c) for c in data.frame["checkpoint_id"]]
    with StudyDB(data.out / DB_NAME) as db:
        eval_rows = db.query(
            f"SELECT language, MIN(num_examples), MAX(num_examples) FROM evaluations WHERE task=? AND split=? AND "
            f"data=? AND checkpoint_id IN ({_in(ids)}) GROUP BY language",
            (spec.task, spec.evaluation.split, eval_data_label(spec), *ids),
        )
        work = db.query(
            f"SELECT kind, COUNT(*), SUM(seconds) FROM work WHERE run_id IN ({_in(run_ids)}) GROUP BY kind",
            tuple(run_ids),
        )
    return eval_rows, work


def study_settings(data: StudyData) -> dict[str, Any]:
    """What the results were made with: the spec, every measure's options (as given and with the defaults
    filled in), data sizes, library versions, the wall time of each kind of work (seconds summed over the
    study's work table) and the machines that computed the units."""
    import dataclasses
    import platform
    from importlib import metadata

    import yaml

    spec = data.spec
    measures = {}
    for item in spec.measures.items:
        measures[spec.measures.label(item)] = {**spec.measure_config(item), "resolved": dataclasses.asdict(item.config)}
        if spec.measures.data_of(item) != spec.measures.data:
            measures[spec.measures.label(item)]["rows"] = spec.measure_data(item).max_examples
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    eval_rows, work = evaluated_rows_and_work(data)
    train = spec.train_options
    return {
        "spec": yaml.safe_load(spec.to_yaml()),
        "measures": measures,
        "data": {
            "train_split": train.get("train_split"),
            "train_max_examples": train.get("max_train_examples"),
            "eval_split": spec.evaluation.split,
            "eval_rows": {lang: lo if lo == hi else [lo, hi] for lang, lo, hi in eval_rows},
            "measure_data": {
                **dataclasses.asdict(spec.measure_data()),
                **({"max_examples": list(spec.measures.sizes)} if spec.measures.sizes else {}),
            },
        },
        "versions": versions,
        "wall_seconds": {kind: {"units": int(count), "seconds": float(total or 0.0)} for kind, count, total in work},
        "machines": machine_counts(data.machines),
    }


def _num(v: Any, fmt: str, width: int = 0) -> str:
    missing = v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
    text = "" if missing else format(v, fmt)
    return f"{text:>{width}}" if width else text


def _answer(row: Any) -> str:
    ci = f"[{_num(row.ci_low, '+.2f')}, {_num(row.ci_high, '+.2f')}]" if pd.notna(row.ci_low) else ""
    return f"{_num(row.tau, '+.2f', 6)} {ci:>15} {_num(row.p_holm, '.2g', 7)}"


def format_verdict(verdict: pd.DataFrame) -> str:
    """The verdict for the terminal: one line per measure, its three answers (tau, run-level CI, Holm p) led by
    transfer beyond the fit, the level the residual and target answers rest on, and the finding."""
    width = max([len("measure")] + [len(str(m)) for m in verdict["measure"]])
    answer = f"{'tau':>6} {'95% CI':>15} {'p_holm':>7}"
    lines = [
        f"{'':<{width}}  {'beyond the fit (residual)':<30}  {'target accuracy':<30}  {'source accuracy (fit)':<30}",
        f"{'measure':<{width}}  {answer}  {answer}  {answer}  finding [the level each decided answer rests on]",
    ]
    for measure, part in verdict.groupby("measure", sort=False):
        rows = {r.target: r for r in part.itertuples(index=False)}
        cells = [_answer(rows[t]) if t in rows else f"{'':<30}" for t in verdict_targets()]
        levels = [f"{t}: {rows[t].level}" for t in verdict_targets() if t in rows and rows[t].level]
        finding = str(part["finding"].iloc[0]) + (f" [{'; '.join(levels)}]" if levels else "")
        lines.append(f"{measure:<{width}}  " + "  ".join(cells) + f"  {finding}")
    return "\n".join(lines)


def format_top(top: pd.DataFrame) -> str:
    """The strongest correlations for the terminal: raw and adjusted p, what survives, and whether the measure
    is healthy (an unhealthy one is listed, marked, and kept out of the verdict)."""
    width = max([len("measure")] + [len(str(m)) for m in top.get("measure", [])])
    has_adjusted = "p_holm" in top.columns
    lines = [
        f"{'measure':<{width}}  {'target':<12}{'tau':>7} {'95% CI':>16} {'p':>8}"
        + (f"{'p_holm':>9}{'p_bh':>9}" if has_adjusted else "")
        + f"{'spearman':>10}{'pearson':>9}{'runs':>5}{'n':>5}"
        + ("  survives" if has_adjusted else "")
    ]
    for r in top.to_dict("records"):
        ci = f"[{_num(r['tau_lo'], '+.2f') or 'nan'}, {_num(r['tau_hi'], '+.2f') or 'nan'}]"
        line = (
            f"{r['measure']:<{width}}  {r['target']:<12}{_num(r['tau'], '+.3f', 7)} {ci:>16} "
            f"{_num(r['tau_p'], '.2g', 8)}"
        )
        if has_adjusted:
            line += f"{_num(r['p_holm'], '.2g', 9)}{_num(r['p_bh'], '.2g', 9)}"
        line += (
            f"{_num(r['spearman'], '+.3f', 10)}{_num(r['pearson'], '+.3f', 9)}"
            f"{int(r.get('n_runs', r['n'])):>5}{int(r['n']):>5}"
        )
        if has_adjusted:
            marks = [name for name in ("holm", "bh") if r.get(f"survives_{name}")]
            line += "  " + (", ".join(marks) if marks else "-")
        if r.get("healthy") is False:
            line += "  (unhealthy: not in the verdict)"
        lines.append(line)
    return "\n".join(lines)


def analyze_study(
    target: str | Path, out: str | Path | None = None, echo: bool = True
) -> tuple[StudyData, dict[str, pd.DataFrame]]:
    spec, folder = resolve_study(target, out)
    data = load_study(spec, folder)
    tables = analysis_tables(data)
    written = write_tables(data, tables)
    if echo:
        a = data.spec.analysis
        unit = a.unit + (f" ({a.run_reduce} checkpoint)" if a.unit == "run" else "")
        metric = get_task(spec.task).metric_name  # what the study's accuracies are: token accuracy, entity F1
        print(
            f"study {spec.name} ({spec.study_id}): {data.frame['run_id'].nunique()} runs, {len(data.frame)} "
            f"checkpoints; unit {unit}; axes {', '.join(data.axes) or '(none)'}"
        )
        for note in data.notes:
            print(f"note: {note}")
        print(
            "verdict: does each measure predict transfer beyond the fit? Kendall tau with the transfer residual "
            f"(mean target {metric} less its fit on source {metric}), mean target and source {metric}; "
            f"{a.confidence:.0%} CI resampling whole runs, p from permuting runs, Holm-adjusted over this table"
        )
        print(format_verdict(tables["verdict"]))
        counts = tables["findings"]["finding"].value_counts()
        print("  " + ", ".join(f"{n} {finding}" for finding, n in counts.items()))
        print()
        n_tests = int(tables["correlations"]["tau_p"].notna().sum())
        print(
            f"strongest correlations (of {n_tests} tests; p_holm / p_bh adjusted over all of them; survives: "
            "adjusted p <= 0.05)"
        )
        print(format_top(tables["top"]))
        if not tables["cmi"].empty:
            cmi = tables["cmi"][["measure", "k"]].sort_values("k", ascending=False, na_position="last")
            print(
                f"CMI K vs mean target {metric}: "
                + ", ".join(f"{m} {num:.3f}" if not np.isnan(num) else f"{m} nan" for m, num in zip(cmi.measure, cmi.k))
            )
        print(f"tables: {written}")
    return data, tables
