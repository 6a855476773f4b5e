"""`xlgm study report SPEC_OR_DIR`: one self-contained HTML file and a markdown file about a study.

    OUT/report/report.html     figures embedded as base64 PNG, no outside files
    OUT/report/report.md       the same content; its figures are OUT/report/figures/*.png

Contents, in order: a warning when the models did not leave chance; the verdict (one row per measure: Kendall tau
against the mean target accuracy and the mean transfer gap with its confidence interval and adjusted p-values,
granulated Psi, CMI K, the direction the literature expects, agrees / disagrees / inconclusive / excluded, and the
measure's health), read from OUT/analysis/verdict.csv; the study's facts; accuracies with 95% Wilson intervals
(heatmap, per-language plot with the chance level, table); the per-run table; a scatter per measure against the mean
target accuracy (unhealthy measures greyed, with the reason); a measure x language tau heatmap; the detailed
correlation table with raw and adjusted p-values, the strongest correlations marking what survives correction,
granulated Psi and CMI K; measure health (OUT/analysis/health.csv); training curves with the loss of a uniform
prediction; the settings (OUT/analysis/settings.json, else rebuilt from the study's database and spec); and, when
`xlgm predict` has run, the label-free predictor against its baselines. A file of OUT/analysis/ that the analysis did
not write leaves a "not computed" note in its place. Every string from the user (spec name, measure options,
labels) is escaped in both files. Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, Agg
canvas): no pyplot, no display needed.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import json
import math
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xlgm.analysis import acc_column
from xlgm.analysis.frame import select_unit
from xlgm.analysis.intervals import wilson_interval
from xlgm.analysis.report_table import top_correlations
from xlgm.core.errors import XlgmError
from xlgm.core.files import write_text
from xlgm.data.tasks import get_task
from xlgm.study.analyze import (
    StudyData,
    analysis_tables,
    evaluated_rows_and_work,
    load_study,
    resolve_study,
    unit_frame,
    write_tables,
)

PNG_PREFIX = '<img src="data:image/png;base64,'
ANALYSIS_DIR = "analysis"
# verdict.csv's targets, as `xlgm study analyze` names them, and the analysis frame's columns for them
VERDICT_TARGETS = {"mean_accuracy": "mean_target", "mean_gap": "mean_gap"}
TARGET_NAMES = {
    "mean_target": "mean target accuracy",
    "mean_accuracy": "mean target accuracy",
    "mean_gap": "mean transfer gap",
}


def target_name(target: Any) -> str:
    """A target as a reader names it: `mean target accuracy`, `accuracy de`, `gap de`."""
    text = str(target)
    if text in TARGET_NAMES:
        return TARGET_NAMES[text]
    for prefix, name in (("acc_", "accuracy"), ("gap_", "gap")):
        if text.startswith(prefix):
            return f"{name} {text[len(prefix) :]}"
    return text


REPORT_LIBRARIES = (
    "xlgm",
    "torch",
    "transformers",
    "accelerate",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
)
GREY = "#9a9a9a"


@dataclass
class Figure:
    key: str  # file stem
    title: str
    png: bytes


def _figure(width: float, height: float):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _mpl(text: Any) -> str:
    """A user string as matplotlib text: a `$` would start mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def _colours(n: int) -> list:
    """n colours that a reader can tell apart: tab10 up to 10, tab20 up to 20, then an evenly sampled ramp."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        # dark and light shades of one hue are neighbours in tab20: take the dark ones first
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return [colormaps["tab20"](i) for i in order[:n]]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _fmt(value: Any, digits: int = 3) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        small_or_large = abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3)
        return f"{value:.{digits}g}" if small_or_large else f"{value:.{digits}f}"
    return str(value)


def _signed(value: Any, digits: int = 2) -> str:
    return "" if _is_missing(value) else f"{float(value):+.{digits}f}"


def _pvalue(value: Any) -> str:
    if _is_missing(value):
        return ""
    value = float(value)
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def _coefficient(value: Any, low: Any, high: Any) -> str:
    """`+0.58 [+0.14, +0.90]`; `n/a` for an undefined coefficient."""
    if _is_missing(value):
        return "n/a"
    ci = "" if _is_missing(low) or _is_missing(high) else f" [{_signed(low)}, {_signed(high)}]"
    return f"{_signed(value)}{ci}"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _count(value: Any) -> str:
    number = _number(value)
    return "?" if math.isnan(number) else str(int(number))


def _interval_text(accuracy: Any, rows: int | None) -> str:
    """`0.412 [0.37, 0.46]`: an accuracy on `rows` rows with its 95% Wilson interval (the accuracy alone when the
    number of rows is unknown)."""
    accuracy = _number(accuracy)
    if math.isnan(accuracy):
        return ""
    if not rows:
        return f"{accuracy:.3f}"
    low, high = wilson_interval(accuracy * rows, rows)
    return f"{accuracy:.3f} [{low:.2f}, {high:.2f}]"


# ------------------------------------------------------------------------------------------------------------
# What the analysis wrote (OUT/analysis/) and what the report reads from the study database
# ------------------------------------------------------------------------------------------------------------


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
        health["healthy"] = health["healthy"].map(_truthy)
    return AnalysisFiles(
        verdict=_read_csv(analysis / "verdict.csv", VERDICT_REQUIRED),
        health=health,
        settings=settings,
        correlations=_read_csv(analysis / "correlations.csv", ("measure", "target", "tau")),
    )


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return not _is_missing(value) and bool(value)


@dataclass
class StudyRecords:
    """What the report reads from study.sqlite besides the analysis frame."""

    eval_rows: dict[str, int] = field(default_factory=dict)  # language -> rows of its evaluation
    seconds: dict[str, float] = field(default_factory=dict)  # work kind (train, eval, measure) -> seconds summed
    run_configs: dict[str, dict] = field(default_factory=dict)  # run_id -> RUN/config.json


def read_study_records(data: StudyData) -> StudyRecords:
    """Rows evaluated per language and the work's wall time per kind, for the study's checkpoints and runs."""
    rows, work = evaluated_rows_and_work(data)
    return StudyRecords(
        {str(lang): int(most) for lang, _, most in rows if most},
        {str(kind): float(seconds or 0.0) for kind, _, seconds in work},
        run_records(data),
    )


def run_records(data: StudyData) -> dict[str, dict]:
    """run_id -> RUN/config.json (rows trained on and held out, library versions), for the runs that have one."""
    out = {}
    for run_id in data.runs["run_id"]:
        path = data.out / "runs" / str(run_id) / "config.json"
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise XlgmError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(record, dict):
            out[str(run_id)] = record
    return out


def _num_labels(data: StudyData) -> int:

    return get_task(data.spec.task).num_labels


def _target_rows(data: StudyData, records: StudyRecords) -> int | None:
    """Rows behind a mean target accuracy: those of one target language. The target sets are translations of the
    same rows, so their errors are not independent; one language's rows give the conservative interval."""
    counts = [records.eval_rows[lang] for lang in data.spec.target_languages if lang in records.eval_rows]
    return min(counts) if counts else None


# ------------------------------------------------------------------------------------------------------------
# Verdict, health and the detailed tables
# ------------------------------------------------------------------------------------------------------------


def _expected_text(sign: Any) -> str:
    sign = _number(sign)
    if sign > 0:
        return "+ (higher: better transfer)"
    if sign < 0:
        return "− (higher: worse transfer)"
    return "not declared"


def _joined_reasons(by_target: dict[str, Any]) -> str:
    texts = {t: str(v) for t, v in by_target.items() if not _is_missing(v) and str(v).strip()}
    if len(texts) == len(by_target) and len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{target_name(t)}: {v}" for t, v in texts.items())


def verdict_table(verdict: pd.DataFrame) -> pd.DataFrame:
    """One row per measure (in verdict.csv's order) from verdict.csv's (measure, target) rows."""
    rows = []
    for measure, group in verdict.groupby("measure", sort=False):
        by = {str(r["target"]): r for _, r in group.iterrows()}
        acc, gap = by.get("mean_accuracy", by.get("mean_target")), by.get("mean_gap")
        first = acc if acc is not None else gap
        assert first is not None  # verdict.csv has a row vs the mean target accuracy or the mean gap per measure
        sign = first.get("expected_sign") if acc is not None else -_number(first.get("expected_sign"))

        def col(row, name):
            return None if row is None else row.get(name)

        cmi = col(acc, "cmi_k")
        if _is_missing(cmi):
            cmi = col(gap, "cmi_k")
        runs, checkpoints = col(first, "n_runs"), col(first, "n_checkpoints")
        row = {"measure": measure, "expected": _expected_text(sign), "reference": _fmt(first.get("reference"))}
        for key, target in (("acc", acc), ("gap", gap)):
            name = "mean target acc" if key == "acc" else "mean gap"
            row[f"τ vs {name} [95% CI]"] = (
                "" if target is None else _coefficient(target.get("tau"), target.get("ci_low"), target.get("ci_high"))
            )
            row[f"p Holm ({key})"] = _pvalue(col(target, "p_holm"))
            row[f"p BH ({key})"] = _pvalue(col(target, "p_bh"))
            row[f"verdict ({key})"] = _fmt(col(target, "verdict"))
        row["Ψ (acc)"] = _signed(col(acc, "psi"))
        row["CMI K"] = _fmt(_number(cmi))
        row["runs / checkpoints"] = f"{_count(runs)} / {_count(checkpoints)}"
        row["health"] = _joined_reasons({t: r.get("health") for t, r in by.items()})
        row["reason"] = _joined_reasons({t: r.get("reason") for t, r in by.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def exclusions(analysis: AnalysisFiles) -> dict[str, str]:
    """measure -> why it is kept out of the findings: unhealthy in health.csv, or excluded in every verdict row."""
    out: dict[str, str] = {}
    if analysis.health is not None:
        for _, r in analysis.health.iterrows():
            if not r["healthy"]:
                out[str(r["measure"])] = _fmt(r.get("reason")) or "unhealthy"
    if analysis.verdict is not None:
        for measure, group in analysis.verdict.groupby("measure", sort=False):
            if str(measure) not in out and (group["verdict"].astype(str) == "excluded").all():
                why = [
                    _fmt(v)
                    for v in list(group.get("reason", [])) + list(group.get("health", []))
                    if _fmt(v) and _fmt(v) != "healthy"
                ]
                out[str(measure)] = why[0] if why else "excluded by the analysis"
    return out


def health_table(health: pd.DataFrame) -> pd.DataFrame:
    names = {
        "measure": "measure",
        "n_units": "units",
        "n_converged": "converged",
        "n_saturated": "saturated",
        "n_nan": "NaN/inf",
        "constant": "constant",
        "healthy": "healthy",
        "reason": "reason",
    }
    table = health[[c for c in names if c in health.columns]].rename(columns=names).copy()
    for column in ("healthy", "constant"):
        if column in table.columns:
            table[column] = ["yes" if _truthy(v) else "no" for v in table[column]]
    return table


def _mark(value: Any) -> str:
    if _is_missing(value):
        return ""
    return "✓" if _truthy(value) else "–"


def correlation_detail(corr: pd.DataFrame, targets: tuple[str, ...] = ("mean_target", "mean_gap")) -> pd.DataFrame:
    """The correlations with the mean targets (or any rows of a correlation table, e.g. the top list): tau with its
    CI, raw and adjusted p-values, what survives correction, units, the other coefficients and the note."""
    rows = corr if not targets else corr[corr["target"].isin(targets)]
    out = []
    for _, r in rows.iterrows():
        row = {
            "measure": r["measure"],
            "target": target_name(r["target"]),
            "τ [95% CI]": _coefficient(r.get("tau"), r.get("tau_lo"), r.get("tau_hi")),
            "p": _pvalue(r.get("tau_p")),
        }
        if "p_holm" in r.index:
            row["p Holm"] = _pvalue(r.get("p_holm"))
            row["p BH"] = _pvalue(r.get("p_bh"))
            row["survives Holm"] = _mark(r.get("survives_holm"))
            row["survives BH"] = _mark(r.get("survives_bh"))
        row["Spearman"] = _signed(r.get("spearman"))
        row["Pearson"] = _signed(r.get("pearson"))
        if "n_runs" in r.index:
            row["runs"] = _fmt(r.get("n_runs"))
            row["checkpoints"] = _fmt(r.get("n_checkpoints"))
        else:
            row["n"] = _fmt(r.get("n"))
        if "unit" in r.index:
            row["bootstrap unit"] = _fmt(r.get("unit"))
        row["note"] = _fmt(r.get("note"))
        out.append(row)
    return pd.DataFrame(out)


def granulated_detail(granulated: pd.DataFrame) -> pd.DataFrame:
    if granulated is None or granulated.empty:
        return pd.DataFrame()
    rows = granulated[granulated["target"].isin(["mean_target", "mean_gap"])]
    out = []
    for _, r in rows.iterrows():
        row = {"measure": r["measure"], "target": target_name(r["target"]), "Ψ": _signed(r.get("psi"))}
        for column in rows.columns:
            if column.startswith("psi["):
                axis = column[4:-1]
                row[f"ψ[{axis}]"] = _signed(r[column])
                row[f"groups[{axis}]"] = _fmt(r.get(f"groups[{axis}]"))
        row["n"] = _fmt(r.get("n"))
        row["note"] = _fmt(r.get("note"))
        out.append(row)
    return pd.DataFrame(out)


def cmi_detail(cmi: pd.DataFrame) -> pd.DataFrame:
    if cmi is None or cmi.empty:
        return pd.DataFrame()
    out = []
    for _, r in cmi.iterrows():
        argmin = r.get("argmin")
        if isinstance(argmin, (tuple, list)):
            argmin = "{" + ", ".join(map(str, argmin)) + "}"
        row = {
            "measure": r["measure"],
            "target": target_name(r["target"]),
            "K": _fmt(_number(r.get("k"))),
            "argmin S": _fmt(argmin),
        }
        for column in cmi.columns:
            if column.startswith("cmi["):
                row["Î(" + (column[4:-1] or "∅") + ")"] = _fmt(_number(r[column]))
        row.update(
            {
                "n": _fmt(r.get("n")),
                "pairs": _fmt(r.get("n_pairs")),
                "tied pairs": _fmt(r.get("n_pairs_tied")),
                "note": _fmt(r.get("note")),
            }
        )
        out.append(row)
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------------------
# Runs and accuracies
# ------------------------------------------------------------------------------------------------------------


def hyperparameters(data: StudyData, run_id: str, row: pd.Series | dict) -> str:
    """The run's objective options and any other varying axis (objective and seed left out): `rho=0.05`."""
    config = data.configs.get(run_id, {})
    options = dict(config.get("objective_options") or {})

    def short(v: Any) -> str:
        return format(float(v), "g") if isinstance(v, (float, np.floating)) else _fmt(v)

    parts = [f"{k}={short(v)}" for k, v in sorted(options.items())]
    for axis in data.axes:
        if axis in ("objective", "seed") or axis in options:
            continue
        value = row.get(axis) if hasattr(row, "get") else None
        if _fmt(value) != "":
            parts.append(f"{axis}={short(value)}")
    return ", ".join(parts)


def run_labels(data: StudyData, runs: pd.DataFrame) -> dict[str, str]:
    """A short label per run: objective, its hyperparameters, seed."""
    labels = {}
    for _, row in runs.iterrows():
        hyper = hyperparameters(data, row["run_id"], row)
        seed = f" s{row['seed']}" if "seed" in row else ""
        labels[row["run_id"]] = f"{row.get('objective', '?')}{' ' + hyper if hyper else ''}{seed}"
    return labels


def run_table(data: StudyData, per_run: pd.DataFrame, records: StudyRecords | None = None) -> pd.DataFrame:
    """One row per run: id, objective, hyperparameters, seed, best held-out accuracy, accuracies (with their 95%
    Wilson intervals where the rows are known), measures."""
    spec = data.spec
    records = records or StudyRecords()
    best_dev = data.checkpoints.groupby("run_id")["dev_accuracy"].max() if not data.checkpoints.empty else {}
    target_rows = _target_rows(data, records)
    source_rows = records.eval_rows.get(spec.source_language)
    rows = []
    for _, r in per_run.iterrows():
        held_out = records.run_configs.get(r["run_id"], {}).get("num_select")
        row = {
            "run": r["run_id"],
            "objective": r.get("objective"),
            "hyperparameters": hyperparameters(data, r["run_id"], r),
            "seed": r.get("seed"),
            "step": r.get("step"),
            "best held-out acc": _interval_text(
                best_dev.get(r["run_id"], np.nan) if len(best_dev) else np.nan, int(held_out) if held_out else None
            ),
            "mean target acc": _interval_text(r.get("mean_target"), target_rows),
            f"{spec.source_language} acc": _interval_text(r.get(acc_column(spec.source_language)), source_rows),
        }
        for m in data.measures:
            row[m] = r.get(m)
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_table(
    data: StudyData, per_run: pd.DataFrame, labels: dict[str, str], records: StudyRecords
) -> pd.DataFrame:
    """Run x language accuracies with 95% Wilson intervals."""
    rows = []
    for _, r in per_run.iterrows():
        row = {"run": r["run_id"], "label": labels.get(r["run_id"], r["run_id"]), "step": r.get("step")}
        for lang in data.languages:
            row[lang] = _interval_text(r.get(acc_column(lang)), records.eval_rows.get(lang))
        rows.append(row)
    return pd.DataFrame(rows)


def _per_run(data: StudyData) -> pd.DataFrame:
    """One checkpoint per run (the analysis' run_reduce; `last` when the best checkpoint was not measured)."""

    base = data.frame
    try:
        return select_unit(base, "run", data.spec.analysis.run_reduce)
    except Exception:  # noqa: BLE001 - e.g. `best` not among the measured checkpoints
        return select_unit(base, "run", "last")


@dataclass
class ChanceCheck:
    chance: float
    near_source: int  # units whose source accuracy's 95% interval includes chance
    near_target: int  # units whose mean target accuracy's 95% interval includes chance
    units: int

    @property
    def warn(self) -> bool:
        return self.units > 0 and self.near_source > self.units / 2

    def message(self, source: str) -> str:
        return (
            f"The models barely left chance: the {source} accuracy's 95% interval includes chance "
            f"(1/{round(1 / self.chance)} = {self.chance:.3f}) at {self.near_source} of {self.units} units, "
            f"the mean target accuracy's at {self.near_target}. These correlations compare training progress, "
            "not generalization."
        )


def chance_check(data: StudyData, rows: pd.DataFrame, records: StudyRecords) -> ChanceCheck | None:
    """How many correlated units have a source (and mean target) accuracy within sampling noise of chance."""
    chance = 1.0 / _num_labels(data)
    source_rows = records.eval_rows.get(data.spec.source_language)
    if not source_rows or rows.empty:
        return None

    def near(values: pd.Series, n: int | None) -> int:
        acc = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        acc = acc[np.isfinite(acc)]
        if not n or acc.size == 0:
            return 0
        low, high = wilson_interval(acc * n, n)
        return int(np.sum((low <= chance) & (chance <= high)))

    return ChanceCheck(
        chance,
        near(rows[acc_column(data.spec.source_language)], source_rows),
        near(rows["mean_target"], _target_rows(data, records)),
        int(len(rows)),
    )


# ------------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {}
    for name in REPORT_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s ({seconds / 60:.1f} min)"


def settings_from_study(data: StudyData, records: StudyRecords) -> dict[str, Any]:
    """What settings.json holds, rebuilt from the spec, the runs' recorded configs and the study database."""
    spec = data.spec
    d = spec.measures.data
    configs = list(records.run_configs.values())
    train_rows = sorted({int(c["num_train"]) for c in configs if c.get("num_train") is not None})
    held_out = sorted({int(c["num_select"]) for c in configs if c.get("num_select") is not None})
    sizes: dict[str, Any] = {
        "train rows": ", ".join(map(str, train_rows)) or "unknown",
        "held-out rows (checkpoint selection)": ", ".join(map(str, held_out)) or "unknown",
        **{f"eval rows {lang} ({spec.evaluation.split})": n for lang, n in records.eval_rows.items()},
        "measure examples": f"{d.max_examples} ({d.language} {d.split})",
    }
    recorded: dict[str, set] = {}
    for config in configs:
        for name, version in (config.get("versions") or {}).items():
            recorded.setdefault(name, set()).add(str(version))
    versions = {f"{name} (training)": ", ".join(sorted(v)) for name, v in sorted(recorded.items())}
    versions.update({f"{name} (report)": v for name, v in _versions().items()})
    seconds = {kind: _seconds_text(s) for kind, s in sorted(records.seconds.items())}
    if records.seconds:
        seconds["total"] = _seconds_text(sum(records.seconds.values()))
    return {
        "spec": spec.to_yaml(),
        "measures": {
            item.name: dict(item.options_dict, seed=spec.measures.seed, params=spec.measures.params or "all")
            for item in spec.measures.items
        },
        "data sizes": sizes,
        "library versions": versions,
        "wall time": seconds,
    }


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        if not value:
            return [(prefix, "(none)")] if prefix else []
        out: list[tuple[str, str]] = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, (list, tuple)):
        text = ", ".join(json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else _fmt(v) for v in value)
        return [(prefix, text or "(none)")]
    return [(prefix, _fmt(value) if not isinstance(value, str) else value)]


def _spec_text(spec: Any) -> str:
    import yaml

    if isinstance(spec, str):
        return spec
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=None)


def settings_sections(settings: dict[str, Any]) -> tuple[str | None, list[tuple[str, pd.DataFrame]]]:
    """(the spec as YAML text, [(section title, two-column table)]) of a settings dict."""
    spec = settings.get("spec")
    sections = []
    for key, value in settings.items():
        if key == "spec":
            continue
        items = _flatten(value) if isinstance(value, dict) else [(key, _flatten(value)[0][1])]
        sections.append((str(key).replace("_", " "), pd.DataFrame(items, columns=["setting", "value"])))
    return (None if spec is None else _spec_text(spec)), sections


# ------------------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------------------


def accuracy_heatmap(data: StudyData, per_run: pd.DataFrame, labels: dict[str, str]) -> Figure:
    langs = data.languages
    values = per_run[[acc_column(lang) for lang in langs]].to_numpy(dtype=float)
    fig = _figure(max(5.0, 0.55 * len(langs) + 2.5), max(2.5, 0.35 * len(per_run) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(langs)), [_mpl(lang) for lang in langs])
    ax.set_yticks(range(len(per_run)), [_mpl(labels.get(r, r)) for r in per_run["run_id"]], fontsize=8)
    if values.size <= 600:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v < np.nanmean(values) else "black",
                )
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(f"Accuracy per run and language ({_mpl(data.spec.evaluation.split)})", fontsize=10)
    return Figure("accuracy-heatmap", "Accuracy: run x language", _png(fig))


def accuracy_intervals(data: StudyData, per_run: pd.DataFrame, labels: dict[str, str], records: StudyRecords) -> Figure:
    """Each run's accuracy per language with its 95% Wilson interval, and the chance level."""
    langs = data.languages
    chance = 1.0 / _num_labels(data)
    fig = _figure(max(6.0, 0.5 * len(langs) + 3.5), 4.0)
    ax = fig.add_subplot()
    colours = _colours(len(per_run))
    width = 0.7 / max(len(per_run), 1)
    for i, (_, r) in enumerate(per_run.iterrows()):
        x = np.arange(len(langs)) - 0.35 + width * (i + 0.5)
        acc = np.array([_number(r.get(acc_column(lang))) for lang in langs])
        rows = np.array([records.eval_rows.get(lang, 0) for lang in langs], dtype=float)
        ok = np.isfinite(acc) & (rows > 0)
        low, high = np.full_like(acc, np.nan), np.full_like(acc, np.nan)
        if ok.any():
            low[ok], high[ok] = wilson_interval(acc[ok] * rows[ok], rows[ok])
        ax.errorbar(
            x[ok],
            acc[ok],
            yerr=[acc[ok] - low[ok], high[ok] - acc[ok]],
            fmt=MARKERS[i % len(MARKERS)],
            markersize=4,
            capsize=2,
            linewidth=1,
            color=colours[i],
            label=_mpl(labels.get(r["run_id"], r["run_id"])),
        )
    ax.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance (1/{_num_labels(data)})")
    ax.set_xticks(range(len(langs)), [_mpl(lang) for lang in langs])
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title("Accuracy per language: each run's checkpoint, with 95% intervals", fontsize=10)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return Figure("accuracy-intervals", "Accuracy per language with 95% intervals and chance", _png(fig))


def _undefined_reason(note: Any, measure: str) -> str:
    text = _fmt(note).replace(": correlations undefined (NaN)", "")
    text = text.replace("x is constant", f"{measure} is constant across units")
    text = text.replace("y is constant", "the mean target accuracy is constant across units")
    return text or "undefined"


def measure_scatter(
    data: StudyData,
    rows: pd.DataFrame,
    measure: str,
    corr: pd.DataFrame,
    verdict: pd.DataFrame | None = None,
    excluded: str | None = None,
    target_rows: int | None = None,
) -> Figure:
    """The measure against the mean target accuracy per unit, with 95% intervals of the accuracy and chance.

    The title gives tau with its CI and Holm-adjusted p from verdict.csv, else the raw tau and p; an undefined tau
    says why. An excluded measure is drawn in grey with the reason and no fitted line: it is not a finding."""
    fig = _figure(4.6, 3.8)
    ax = fig.add_subplot()
    x = pd.to_numeric(rows[measure], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(rows["mean_target"], errors="coerce").to_numpy(dtype=float)
    yerr = None
    if target_rows:
        ok = np.isfinite(y)
        low, high = np.full_like(y, np.nan), np.full_like(y, np.nan)
        if ok.any():
            low[ok], high[ok] = wilson_interval(y[ok] * target_rows, target_rows)
        yerr = np.vstack([y - low, high - y])
    groups = rows["objective"].astype(str) if "objective" in rows else pd.Series(["runs"] * len(rows))
    names = list(dict.fromkeys(groups))
    colours = _colours(len(names))
    for i, name in enumerate(names):
        mask = (groups == name).to_numpy()
        colour = GREY if excluded else colours[i]
        ax.errorbar(
            x[mask],
            y[mask],
            yerr=None if yerr is None else yerr[:, mask],
            fmt=MARKERS[i % len(MARKERS)],
            markersize=4,
            capsize=2,
            linewidth=0.8,
            alpha=0.85,
            color=colour,
            label=_mpl(name),
        )
    ok = np.isfinite(x) & np.isfinite(y)
    if not excluded and ok.sum() >= 2 and np.unique(x[ok]).size >= 2 and np.unique(y[ok]).size >= 2:
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(xs, slope * xs + intercept, color="black", linewidth=1, label="least squares")
    ax.axhline(1.0 / _num_labels(data), color="black", linestyle="--", linewidth=0.8, label="chance")
    title = scatter_title(measure, corr, verdict, excluded)
    ax.set_title(_mpl("\n".join(textwrap.wrap(title, 52))), fontsize=9, color=GREY if excluded else "black")
    ax.set_xlabel(_mpl(measure))
    ax.set_ylabel("mean target accuracy" + (" (95% interval)" if yerr is not None else ""))
    ax.legend(fontsize=6)
    return Figure(f"scatter-{measure}", f"{measure} vs mean target accuracy", _png(fig))


def scatter_title(
    measure: str, corr: pd.DataFrame, verdict: pd.DataFrame | None = None, excluded: str | None = None
) -> str:
    """A scatter's title: excluded with its reason; tau with its CI, Holm p and verdict (verdict.csv); else the raw
    tau and p; an undefined tau with the reason."""
    if excluded:
        return f"{measure}: excluded ({excluded})"
    if verdict is not None:
        rows = verdict[(verdict["measure"] == measure) & verdict["target"].isin(["mean_accuracy", "mean_target"])]
        if len(rows):
            r = rows.iloc[0]
            if _is_missing(r.get("tau")):
                return f"{measure}: τ undefined ({_fmt(r.get('reason')) or _fmt(r.get('health')) or 'no value'})"
            return (
                f"{measure}: τ = {_coefficient(r.get('tau'), r.get('ci_low'), r.get('ci_high'))}, "
                f"p Holm = {_pvalue(r.get('p_holm'))}; {_fmt(r.get('verdict'))}"
            )
    rows = corr[(corr["measure"] == measure) & (corr["target"] == "mean_target")]
    if not len(rows):
        return f"{measure}: τ not computed"
    r = rows.iloc[0]
    if _is_missing(r.get("tau")):
        return f"{measure}: τ undefined: {_undefined_reason(r.get('note'), measure)}"
    tau = _coefficient(r.get("tau"), r.get("tau_lo"), r.get("tau_hi"))
    return f"{measure}: τ = {tau} (p = {_pvalue(r.get('tau_p'))}, unadjusted)"


def tau_heatmap(data: StudyData, corr: pd.DataFrame, excluded: dict[str, str] | None = None) -> Figure:
    """Kendall tau of every measure with every language's accuracy; an excluded or undefined row says why."""
    excluded = excluded or {}
    targets = [acc_column(lang) for lang in data.languages] + ["mean_target"]
    names = [_mpl(lang) for lang in data.languages] + ["mean"]
    table = corr.pivot(index="measure", columns="target", values="tau").reindex(index=data.measures, columns=targets)
    values = table.to_numpy(dtype=float)
    fig = _figure(max(6.0, 0.55 * len(targets) + 3.5), max(2.4, 0.4 * len(data.measures) + 1.4))
    ax = fig.add_subplot()
    shown = values.copy()
    for i, measure in enumerate(data.measures):
        if measure in excluded:
            shown[i, :] = np.nan
    image = ax.imshow(shown, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(targets)), names)
    ax.set_yticks(range(len(data.measures)), [_mpl(m) for m in data.measures], fontsize=8)
    middle = (len(targets) - 1) / 2
    wrap = max(18, 7 * len(targets))

    def row_text(i: int, text: str) -> None:
        ax.text(
            middle,
            i,
            _mpl("\n".join(textwrap.wrap(text, wrap))),
            ha="center",
            va="center",
            fontsize=7,
            color="#555555",
            clip_on=True,
        )

    for i, measure in enumerate(data.measures):
        if measure in excluded:
            row_text(i, f"excluded: {excluded[measure]}")
            continue
        if not np.isfinite(values[i]).any():
            notes = corr[(corr["measure"] == measure) & (corr["target"] == "mean_target")]
            why = _undefined_reason(notes["note"].iloc[0] if len(notes) and "note" in notes else "", measure)
            row_text(i, f"τ undefined: {why}")
            continue
        for j, v in enumerate(values[i]):
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="Kendall τ")
    ax.set_title("Kendall τ: measure vs accuracy per language (unadjusted)", fontsize=10)
    return Figure("tau-heatmap", "Kendall τ: measure x language", _png(fig))


def training_curves(data: StudyData, labels: dict[str, str]) -> Figure:
    """Training loss per run, and the loss of a uniform prediction (ln of the number of labels)."""
    fig = _figure(7.2, 3.8)
    ax = fig.add_subplot()
    series = []
    for run_id in data.runs["run_id"]:
        path = data.out / "runs" / run_id / "train_log.jsonl"
        if not path.is_file():
            continue
        points = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in record and "step" in record:
                points.append((record["step"], record["loss"]))
        if points:
            series.append((run_id, points))
    colours = _colours(len(series))
    for i, (run_id, points) in enumerate(series):
        steps, losses = zip(*points)
        ax.plot(
            steps,
            losses,
            marker="." if len(points) < 30 else None,
            linewidth=1,
            color=colours[i],
            label=_mpl(labels.get(run_id, run_id)),
        )
        if len(series) > 20:  # more runs than a legend can tell apart: label the line ends
            ax.annotate(
                _mpl(labels.get(run_id, run_id)),
                (steps[-1], losses[-1]),
                fontsize=5,
                color=colours[i],
                xytext=(2, 0),
                textcoords="offset points",
                va="center",
            )
    num_labels = _num_labels(data)
    ax.axhline(
        math.log(num_labels),
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"chance (uniform prediction): ln {num_labels} = {math.log(num_labels):.3f}",
    )
    ax.annotate(
        "chance (uniform prediction)",
        (1.0, math.log(num_labels)),
        xycoords=("axes fraction", "data"),
        xytext=(-3, 3),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=7,
    )
    if not series:
        ax.text(0.5, 0.75, "no training log", ha="center", va="center", transform=ax.transAxes)
    if len(series) <= 20:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training curves")
    return Figure("training-curves", "Training loss", _png(fig))


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


def _html_table(table: pd.DataFrame, css: str = "") -> str:
    """A table with one header row (the columns, each named) and no index; every cell escaped."""
    if isinstance(table.columns, pd.MultiIndex):
        raise ValueError("_html_table: flatten the columns first")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>\n"
        for row in table.itertuples(index=False)
    )
    return f'<table class="{html.escape(css)}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def _html_facts(facts: list[tuple[str, str]], css: str = "facts") -> str:
    """A key-value table: each row headed by its key, no header row."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>\n" for k, v in facts)
    return f'<table class="{html.escape(css)}"><tbody>\n{body}</tbody></table>'


def _md_text(text: Any) -> str:
    """A user string as markdown text: HTML escaped, on one line."""
    return html.escape(" ".join(str(text).split()), quote=False)


def _md_table(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return _md_text(_fmt(v)).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _md_image(fig: Figure) -> str:
    alt = _md_text(fig.title).replace("[", "\\[").replace("]", "\\]")
    return f"![{alt}](figures/{fig.key}.png)"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.facts th { text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } .figs figure { margin: 0; }
figcaption { font-size: 0.8em; color: #555; } .note { color: #a50; font-size: 0.9em; }
.warning { border: 2px solid #c33; background: #fdecea; padding: 0.6em 1em; margin: 1em 0; font-weight: 600; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.8em; overflow-x: auto; }
img { max-width: 100%; }
"""


class _Page:
    """The report's sections, written once into HTML and markdown together."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += ["#" * level + " " + _md_text(text), ""]

    def paragraph(self, text: str, css: str = "") -> None:
        cls = f' class="{css}"' if css else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")
        self.md += [("> " if css else "") + _md_text(text), ""]

    def warning(self, text: str) -> None:
        self.html.append(f'<div class="warning">{html.escape(text)}</div>')
        self.md += [f"> **Warning:** {_md_text(text)}", ""]

    def table(self, table: pd.DataFrame, css: str, details: str | None = None) -> None:
        block = _html_table(table, css)
        if details:
            block = f"<details><summary>{html.escape(details)}</summary>{block}</details>"
        self.html.append(block)
        self.md += [_md_table(table), ""]

    def facts(self, facts: list[tuple[str, str]]) -> None:
        self.html.append(_html_facts(facts))
        self.md += [_md_table(pd.DataFrame(facts, columns=["item", "value"])), ""]

    def figures(self, figures: list[Figure], img) -> None:
        if len(figures) > 1:
            self.html += ['<div class="figs">', *[img(f) for f in figures], "</div>"]
        else:
            self.html += [img(f) for f in figures]
        self.md += [_md_image(f) for f in figures] + [""]

    def preformatted(self, text: str, summary: str) -> None:
        escaped = html.escape(text)
        self.html.append(f"<details><summary>{html.escape(summary)}</summary><pre>{escaped}</pre></details>")
        # an HTML block in markdown: shown preformatted, its entities decoded for display, nothing raw
        self.md += [f"{_md_text(summary)}:", "", f"<pre>{escaped}</pre>", ""]


# ------------------------------------------------------------------------------------------------------------
# Prediction from unlabelled text (OUT/prediction, written by `xlgm predict`)
# ------------------------------------------------------------------------------------------------------------


@dataclass
class PredictionSection:
    summary: dict
    errors: pd.DataFrame  # per language: actual, predicted, the errors of the predictor and both baselines
    figure: Figure


def prediction_section(folder: Path, eval_rows: dict[str, int] | None = None) -> PredictionSection | None:
    """Predicted vs actual accuracy per language (leave-one-language-out), if `xlgm predict` has run."""
    cv_path, summary_path = folder / "prediction" / "cv.csv", folder / "prediction" / "summary.json"
    if not (cv_path.is_file() and summary_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text())
    cv = pd.read_csv(cv_path)
    cv = cv[cv["scheme"] == "leave-one-language-out"]
    if cv.empty:
        return None
    eval_rows = eval_rows or {}
    errors = (
        cv.groupby("language", sort=False)
        .agg(
            actual=("accuracy", "mean"),
            predicted=("predicted", "mean"),
            mae=("error", "mean"),
            mae_same_as_source=("error_source", "mean"),
            mae_other_languages=("error_other_languages", "mean"),
            rows=("error", "size"),
        )
        .reset_index()
    )
    # the languages' accuracies are means over checkpoints on the same rows: the interval of one language's rows
    errors["actual"] = [_interval_text(a, eval_rows.get(lang)) for lang, a in zip(errors["language"], errors["actual"])]
    half = []
    for lang in errors["language"]:
        n = eval_rows.get(lang)
        acc = cv.loc[cv["language"] == lang, "accuracy"].to_numpy(dtype=float)
        if n and acc.size:
            low, high = wilson_interval(acc * n, n)
            half.append(float(np.mean((high - low) / 2)))
        else:
            half.append(math.nan)
    errors["95% half-width of one accuracy"] = half
    fig = _figure(5.8, 4.6)
    ax = fig.add_subplot()
    languages = list(dict.fromkeys(cv["language"]))
    colours = _colours(len(languages))
    for i, lang in enumerate(languages):
        rows = cv[cv["language"] == lang]
        acc = rows["accuracy"].to_numpy(dtype=float)
        n = eval_rows.get(lang)
        xerr = None
        if n:
            low, high = wilson_interval(acc * n, n)
            xerr = [acc - low, high - acc]
        if xerr is not None:  # light: with a point per checkpoint, dark bars would hide the points
            ax.errorbar(acc, rows["predicted"], xerr=xerr, fmt="none", elinewidth=0.5, alpha=0.15, color=colours[i])
        ax.scatter(
            acc,
            rows["predicted"],
            s=18,
            marker=MARKERS[i % len(MARKERS)],
            alpha=0.85,
            color=colours[i],
            label=_mpl(lang),
        )
    lo = float(min(cv["accuracy"].min(), cv["predicted"].min())) - 0.02
    hi = float(max(cv["accuracy"].max(), cv["predicted"].max())) + 0.02
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    mae = summary.get("schemes", {}).get("leave-one-language-out", {}).get("mae", {})
    ax.set_title(
        f"Leave-one-language-out: MAE {_fmt(mae.get('predicted'))} (same as source {_fmt(mae.get('same_as_source'))})",
        fontsize=9,
    )
    ax.set_xlabel("actual accuracy (95% interval)")
    ax.set_ylabel("predicted from unlabelled text")
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return PredictionSection(summary, errors, Figure("prediction", "Predicted vs actual accuracy", _png(fig)))


def _prediction_tables(section: PredictionSection) -> tuple[str, pd.DataFrame]:
    s = section.summary
    rows = []
    for scheme, r in s.get("schemes", {}).items():
        if "skipped" in r:
            rows.append((scheme, "", "", "", "", "", r["skipped"]))
        else:
            m = r.get("mae", {})
            rows.append(
                (
                    scheme,
                    m.get("predicted"),
                    m.get("predicted_source_anchor", math.nan),
                    m.get("same_as_source"),
                    m.get("other_languages"),
                    r.get("ratio_to_same_as_source"),
                    m.get("rows"),
                )
            )
    table = pd.DataFrame(
        rows,
        columns=[
            "scheme",
            "MAE",
            "MAE source anchor only",
            "MAE same as source",
            "MAE other languages",
            "ratio",
            "rows",
        ],
    )
    intro = (
        "Accuracy per (checkpoint, language) predicted from unlabelled target text: a ridge regression on "
        f"label-free measures ({', '.join(s.get('features', []))}) of the gap to the source accuracy, plus "
        "the checkpoint's offset estimated from its other labelled languages where the scheme leaves any "
        "(leave-one-run-out leaves none: the source alone anchors). Each language's predictions come from "
        "a model fitted and anchored without that language's rows. 'Source anchor only' is the same "
        "model without the offsets; ratio = MAE / MAE same as source. An error below the 95% half-width of "
        "one accuracy is within the sampling noise of the labelled target itself."
    )
    return intro, table


# ------------------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------------------


RECONCILE = (
    "How the three criteria differ: Kendall τ ranks all units together; granulated Ψ averages τ within "
    "groups of units that differ in one hyperparameter only; CMI K (Jiang et al. 2020) is the smallest "
    "conditional mutual information between the measure's and the accuracy's pair orderings over the "
    "conditioning sets of hyperparameters. A measure can rank units well (high |τ|) yet have K near 0: "
    "its ranking then follows the hyperparameters it was conditioned on, not generalization within them."
)


def build_report(
    data: StudyData,
    tables: dict[str, pd.DataFrame],
    prediction: PredictionSection | None = None,
    analysis: AnalysisFiles | None = None,
    records: StudyRecords | None = None,
) -> tuple[str, str, list[Figure]]:
    """(html, markdown, figures) of a study."""
    spec = data.spec
    analysis = analysis or AnalysisFiles()
    records = records or StudyRecords()
    corr = analysis.correlations if analysis.correlations is not None else tables["correlations"]
    excluded = exclusions(analysis)
    per_run = _per_run(data)
    labels = run_labels(data, data.runs)
    rows = unit_frame(data)
    target_rows = _target_rows(data, records)
    heatmap = accuracy_heatmap(data, per_run, labels)
    intervals = accuracy_intervals(data, per_run, labels, records) if records.eval_rows else None
    scatters = [
        measure_scatter(data, rows, m, corr, analysis.verdict, excluded.get(m), target_rows) for m in data.measures
    ]
    tau = tau_heatmap(data, corr, excluded)
    curves = training_curves(data, labels)
    figures = [heatmap] + ([intervals] if intervals else []) + scatters + [tau, curves]
    unit = spec.analysis.unit + (
        f", {spec.analysis.run_reduce} checkpoint of each run" if spec.analysis.unit == "run" else ""
    )
    facts = [
        ("study", f"{spec.name} ({spec.study_id})"),
        ("task", spec.task),
        ("model", spec.model),
        ("source language", spec.source_language),
        ("target languages", " ".join(spec.target_languages)),
        ("runs", str(per_run["run_id"].nunique())),
        ("checkpoints", str(len(data.frame))),
        ("unit of correlation", unit),
        ("axes", ", ".join(data.axes) or "(none)"),
        ("units done", f"{data.units_done} of {data.units_total}"),
        ("chance accuracy", f"1/{_num_labels(data)} = {1 / _num_labels(data):.3f}"),
        ("evaluation rows a language", ", ".join(sorted({str(n) for n in records.eval_rows.values()})) or "unknown"),
        ("generated", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]

    def img(fig: Figure) -> str:
        data64 = base64.b64encode(fig.png).decode("ascii")
        return (
            f'<figure>{PNG_PREFIX}{data64}" alt="{html.escape(fig.title)}">'
            f"<figcaption>{html.escape(fig.title)}</figcaption></figure>"
        )

    page = _Page()
    page.heading(f"Study {spec.name}", 1)
    check = chance_check(data, rows, records)
    if check is not None and check.warn:
        page.warning(check.message(spec.source_language))
    for note in data.notes:
        page.paragraph(note, "note")

    page.heading("Verdict")
    if analysis.verdict is not None and not analysis.verdict.empty:
        page.paragraph(
            "One row per measure: Kendall τ against the mean target accuracy (acc) and the mean transfer "
            "gap (gap, source minus target accuracy) with its 95% confidence interval and adjusted "
            "p-values (Holm: family-wise error; BH: false discovery rate), granulated Ψ, CMI K, the "
            "direction the literature expects, and the verdict: agrees or disagrees with that direction, "
            "inconclusive when the interval spans 0 or the adjusted p exceeds 0.05, excluded when the "
            "measure is unhealthy."
        )
        page.table(verdict_table(analysis.verdict), "verdict")
        absent = [m for m in data.measures if m not in set(analysis.verdict["measure"].astype(str))]
        if absent:
            page.paragraph(f"Not in the verdict: {', '.join(absent)}.", "note")
    else:
        page.paragraph(
            "Verdict not computed: OUT/analysis/verdict.csv was not written by this analysis. The tables "
            "below are not corrected for multiple testing and do not check measure health.",
            "note",
        )

    page.heading("About this study")
    page.facts(facts)

    page.heading("Accuracy per run and language")
    if records.eval_rows:
        page.paragraph(
            "Accuracies carry 95% Wilson intervals from the number of evaluated rows; a mean target "
            "accuracy's interval uses one language's rows (the target sets are translations of the same "
            "rows, so their errors are not independent). The dashed line is chance."
        )
    else:
        page.paragraph("Accuracy intervals not computed: the number of evaluated rows is unknown.", "note")
    page.figures([heatmap] + ([intervals] if intervals else []), img)
    page.table(accuracy_table(data, per_run, labels, records), "accuracy", details="accuracy table")

    page.heading("Runs")
    page.table(run_table(data, per_run, records), "runs")

    page.heading("Measures vs mean target accuracy")
    if excluded:
        page.paragraph(
            "Greyed: measures excluded from the findings ("
            + "; ".join(f"{m}: {why}" for m, why in excluded.items())
            + ").",
            "note",
        )
    page.figures(scatters, img)

    page.heading("Correlation with each language")
    page.figures([tau], img)

    page.heading("Correlations with the mean targets")
    adjusted = "p_holm" in corr.columns
    if not adjusted:
        page.paragraph(
            "Adjusted p-values not computed (no p_holm/p_bh in OUT/analysis/correlations.csv): the "
            "p-values below are raw, one per test, uncorrected for the number of tests.",
            "note",
        )
    page.table(correlation_detail(corr), "correlations")

    page.heading("Strongest correlations")

    top = top_correlations(corr, spec.analysis.top)
    page.paragraph(
        f"The {len(top)} largest |τ| of {len(corr)} tests (measure x target). "
        + (
            "✓ marks a test whose adjusted p-value stays below 0.05 (Holm: family-wise; BH: false discovery rate)."
            if adjusted
            else "Uncorrected: with this many tests, some of the largest |τ| are expected by chance."
        )
    )
    page.table(correlation_detail(_with_notes(top, corr), targets=()), "top")

    page.heading("Granulated Kendall Ψ and CMI K")
    page.paragraph(RECONCILE)
    psi = granulated_detail(tables.get("granulated"))
    if psi.empty:
        page.paragraph("Granulated Ψ not computed (no hyperparameter axis varies).", "note")
    else:
        page.table(psi, "granulated")
    cmi = cmi_detail(tables.get("cmi"))
    if cmi.empty:
        page.paragraph("CMI K not computed (no hyperparameter axis varies).", "note")
    else:
        page.table(cmi, "cmi")

    groups = tables.get("groups")
    if groups is not None and not groups.empty:
        page.heading("Groups of seeds")
        page.paragraph(
            "Measures of a group of runs that differ only in their seed, at each run's best checkpoint, beside "
            "the group's mean accuracy; Kendall τ over the groups with its exact p-value. With one group per "
            "configuration there are few points: a finding needs at least 4 groups and p < 0.05."
        )
        shown = groups.drop(columns=["group_id", "run_ids"]).rename(
            columns={"mean_target": "mean target acc", "source_accuracy": f"{spec.source_language} acc"}
        )
        page.table(shown, "groups")
        page.table(tables["group_correlations"], "group-correlations")

    page.heading("Measure health")
    if analysis.health is not None:
        page.table(health_table(analysis.health), "health")
    else:
        page.paragraph("Measure health not computed: OUT/analysis/health.csv was not written by this analysis.", "note")

    page.heading("Training curves")
    page.paragraph(
        f"The dashed line is the loss of a uniform prediction, ln {_num_labels(data)} = "
        f"{math.log(_num_labels(data)):.3f}: a loss near it means the model barely left chance."
    )
    page.figures([curves], img)

    page.heading("Settings")
    if analysis.settings is not None:
        settings = analysis.settings
    else:
        page.paragraph(
            "OUT/analysis/settings.json not found: the settings below are rebuilt from the study's "
            "spec, its runs' recorded configs and study.sqlite.",
            "note",
        )
        settings = settings_from_study(data, records)
    spec_text, sections = settings_sections(settings)
    if spec_text is not None:
        page.preformatted(spec_text, "spec")
    for title, table in sections:
        page.heading(title, 3)
        page.table(table, "settings")

    if prediction is not None:
        figures.append(prediction.figure)
        intro, table = _prediction_tables(prediction)
        page.heading("Predicted accuracy from unlabelled text")
        page.paragraph(intro)
        page.table(table, "prediction")
        page.figures([prediction.figure], img)
        page.table(prediction.errors, "prediction-errors")

    head = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>xlgm study {html.escape(spec.name)}</title>"
        f"<style>{CSS}</style></head><body>"
    )
    return "\n".join([head, *page.html, "</body></html>"]), "\n".join(page.md), figures


def _with_notes(top: pd.DataFrame, corr: pd.DataFrame) -> pd.DataFrame:
    """The top rows with every column of the correlation table (top_correlations keeps a subset)."""
    keys = ["measure", "target"]
    return top[keys].merge(corr, on=keys, how="left")


def report_study(target: str | Path, out: str | Path | None = None, echo: bool = True) -> Path:
    """Analyse (writing OUT/analysis/ too) and write OUT/report/report.html and report.md; returns the HTML path."""
    spec, folder = resolve_study(target, out)
    data = load_study(spec, folder)
    tables = analysis_tables(data)
    write_tables(data, tables)
    records = read_study_records(data)
    page, markdown, figures = build_report(
        data, tables, prediction_section(folder, records.eval_rows), load_analysis_files(folder), records
    )
    report_dir = folder / "report"
    (report_dir / "figures").mkdir(parents=True, exist_ok=True)
    for fig in figures:
        (report_dir / "figures" / f"{fig.key}.png").write_bytes(fig.png)
    write_text(report_dir / "report.html", page)
    write_text(report_dir / "report.md", markdown)
    if echo:
        print(f"report: {report_dir / 'report.html'} ({len(figures)} figures); markdown: {report_dir / 'report.md'}")
    return report_dir / "report.html"
