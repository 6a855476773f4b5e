"""The report's tables (the verdict's are in `xlgm.study.report.transfer`): exclusions, measure health, the correlation
details, granulated Psi and CMI K, one row per run, accuracies per run and language, and the chance check."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from xlgm.analysis import acc_column
from xlgm.analysis.intervals import wilson_interval
from xlgm.data.tasks import get_task
from xlgm.study.analyze import StudyData
from xlgm.study.report.format import (
    fmt,
    fmt_coefficient,
    fmt_pvalue,
    fmt_signed,
    interval_text,
    is_missing,
    target_name,
    to_number,
    truthy,
)
from xlgm.study.report.inputs import (
    AnalysisFiles,
    StudyRecords,
    chance_level,
    metric_name,
    target_eval_rows,
)

# the note of xlgm.analysis.correlation and .granulated for rows without a finite value
DROPPED_NOTE = re.compile(r"(\d+) row\(s\) with NaN/inf dropped")


def once_a_run(data: StudyData) -> dict[str, str]:
    """measure -> the checkpoints it is taken at (`best`), for the measures not taken at every checkpoint."""
    measures = data.spec.measures
    return {measures.label(item): item.at for item in measures.items if item.at != "all"}


def describe_once_a_run(table: pd.DataFrame, once: dict[str, str]) -> pd.DataFrame:
    """The table with the note of a measure taken once a run saying so: its other checkpoints have no value by
    design, which the correlation's note counts as rows dropped for NaN/inf."""
    if table is None or table.empty or "note" not in table.columns or not once:
        return table
    out = table.copy()
    for i, r in out.iterrows():
        at = once.get(str(r["measure"]))
        note = r["note"]
        if at is None or not isinstance(note, str):
            continue
        told = rf"taken once a run (at: {at}): \1 checkpoint(s) without it left out"
        out.at[i, "note"] = DROPPED_NOTE.sub(told, note)
    return out


def exclusions(analysis: AnalysisFiles) -> dict[str, str]:
    """measure -> why it is kept out of the findings: unhealthy in health.csv, or excluded in every verdict row."""
    out: dict[str, str] = {}
    if analysis.health is not None:
        for _, r in analysis.health.iterrows():
            if not r["healthy"]:
                out[str(r["measure"])] = fmt(r.get("reason")) or "unhealthy"
    if analysis.verdict is not None:
        for measure, group in analysis.verdict.groupby("measure", sort=False):
            if str(measure) not in out and (group["verdict"].astype(str) == "excluded").all():
                why = [
                    fmt(v)
                    for v in list(group.get("reason", [])) + list(group.get("health", []))
                    if fmt(v) and fmt(v) != "healthy"
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
            table[column] = ["yes" if truthy(v) else "no" for v in table[column]]
    return table


def _mark(value: Any) -> str:
    if is_missing(value):
        return ""
    return "✓" if truthy(value) else "–"


MEAN_TARGETS = ("transfer_residual", "transfer_residual_oof", "mean_target", "mean_gap")


def correlation_detail(corr: pd.DataFrame, targets: tuple[str, ...] = MEAN_TARGETS) -> pd.DataFrame:
    """The correlations with the mean targets (or any rows of a correlation table, e.g. the top list): tau with its
    CI, raw and adjusted p-values, what survives correction, units, the other coefficients and the note."""
    rows = corr if not targets else corr[corr["target"].isin(targets)]
    out = []
    for _, r in rows.iterrows():
        row = {
            "measure": r["measure"],
            "target": target_name(r["target"]),
            "τ [95% CI]": fmt_coefficient(r.get("tau"), r.get("tau_lo"), r.get("tau_hi")),
            "p": fmt_pvalue(r.get("tau_p")),
        }
        if "p_holm" in r.index:
            row["p Holm"] = fmt_pvalue(r.get("p_holm"))
            row["p BH"] = fmt_pvalue(r.get("p_bh"))
            row["survives Holm"] = _mark(r.get("survives_holm"))
            row["survives BH"] = _mark(r.get("survives_bh"))
        row["Spearman"] = fmt_signed(r.get("spearman"))
        row["Pearson"] = fmt_signed(r.get("pearson"))
        if "n_runs" in r.index:
            row["runs"] = fmt(r.get("n_runs"))
            row["checkpoints"] = fmt(r.get("n_checkpoints"))
        else:
            row["n"] = fmt(r.get("n"))
        if "unit" in r.index:
            row["bootstrap unit"] = fmt(r.get("unit"))
        row["note"] = fmt(r.get("note"))
        out.append(row)
    return pd.DataFrame(out)


def granulated_detail(granulated: pd.DataFrame) -> pd.DataFrame:
    if granulated is None or granulated.empty:
        return pd.DataFrame()
    rows = granulated[granulated["target"].isin(["mean_target", "mean_gap"])]
    out = []
    for _, r in rows.iterrows():
        row = {"measure": r["measure"], "target": target_name(r["target"]), "Ψ": fmt_signed(r.get("psi"))}
        for column in rows.columns:
            if column.startswith("psi["):
                axis = column[4:-1]
                row[f"ψ[{axis}]"] = fmt_signed(r[column])
                row[f"groups[{axis}]"] = fmt(r.get(f"groups[{axis}]"))
        row["n"] = fmt(r.get("n"))
        row["note"] = fmt(r.get("note"))
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
            "K": fmt(to_number(r.get("k"))),
            "argmin S": fmt(argmin),
        }
        for column in cmi.columns:
            if column.startswith("cmi["):
                row["Î(" + (column[4:-1] or "∅") + ")"] = fmt(to_number(r[column]))
        row.update(
            {
                "n": fmt(r.get("n")),
                "pairs": fmt(r.get("n_pairs")),
                "tied pairs": fmt(r.get("n_pairs_tied")),
                "note": fmt(r.get("note")),
            }
        )
        out.append(row)
    return pd.DataFrame(out)


def hyperparameters(data: StudyData, run_id: str, row: pd.Series | dict) -> str:
    """The run's objective options and any other varying axis (objective and seed left out): `rho=0.05`."""
    config = data.configs.get(run_id, {})
    options = dict(config.get("objective_options") or {})

    def short(v: Any) -> str:
        return format(float(v), "g") if isinstance(v, (float, np.floating)) else fmt(v)

    parts = [f"{k}={short(v)}" for k, v in sorted(options.items())]
    for axis in data.axes:
        if axis in ("objective", "seed") or axis in options:
            continue
        value = row.get(axis) if hasattr(row, "get") else None
        if fmt(value) != "":
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
    target_rows = target_eval_rows(data, records)
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
            "best held-out acc": interval_text(
                best_dev.get(r["run_id"], np.nan) if len(best_dev) else np.nan, int(held_out) if held_out else None
            ),
            "mean target acc": interval_text(r.get("mean_target"), target_rows),
            f"{spec.source_language} acc": interval_text(r.get(acc_column(spec.source_language)), source_rows),
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
            row[lang] = interval_text(r.get(acc_column(lang)), records.eval_rows.get(lang))
        rows.append(row)
    return pd.DataFrame(rows)


# A token task's study stores no interval of its metric (its rows are sentences, the metric is over words or
# entities): a unit counts as near chance when its metric is within this of chance. A metric over a hundred
# sentences (1,500 words or more) has a sampling error of about 0.01-0.03.
TOKEN_CHANCE_MARGIN = 0.05


@dataclass
class ChanceCheck:
    chance: float
    chance_text: str  # how the report writes chance, e.g. "1/3 = 0.333"
    near_source: int  # units whose source accuracy's 95% interval includes chance
    near_target: int  # units whose mean target accuracy's 95% interval includes chance
    units: int
    metric: str = "accuracy"
    rule: str = "95% interval includes"

    @property
    def warn(self) -> bool:
        return self.units > 0 and self.near_source > self.units / 2

    def message(self, source: str) -> str:
        return (
            f"The models barely left chance: the {source} {self.metric}'s {self.rule} chance ({self.chance_text}) "
            f"at {self.near_source} of {self.units} units, the mean target {self.metric}'s at {self.near_target}. "
            "These correlations compare training progress, not generalization."
        )


def chance_check(data: StudyData, rows: pd.DataFrame, records: StudyRecords) -> ChanceCheck | None:
    """How many correlated units have a source (and mean target) accuracy within sampling noise of chance: inside
    their 95% Wilson interval, or for a token task (no interval stored) within `TOKEN_CHANCE_MARGIN`."""
    chance, text = chance_level(data)
    token_task = get_task(data.spec.task).is_token_task
    source_rows = records.eval_rows.get(data.spec.source_language)
    if rows.empty or not (source_rows or token_task):
        return None

    def near(values: pd.Series, n: int | None) -> int:
        acc = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        acc = acc[np.isfinite(acc)]
        if token_task:
            return int(np.sum(acc <= chance + TOKEN_CHANCE_MARGIN))
        if not n or acc.size == 0:
            return 0
        low, high = wilson_interval(acc * n, n)
        return int(np.sum((low <= chance) & (chance <= high)))

    return ChanceCheck(
        chance,
        text,
        near(rows[acc_column(data.spec.source_language)], source_rows),
        near(rows["mean_target"], target_eval_rows(data, records)),
        int(len(rows)),
        metric_name(data),
        f"value is within {TOKEN_CHANCE_MARGIN} of" if token_task else "95% interval includes",
    )


def with_correlation_columns(top: pd.DataFrame, corr: pd.DataFrame) -> pd.DataFrame:
    """The top rows with every column of the correlation table (top_correlations keeps a subset)."""
    keys = ["measure", "target"]
    return top[keys].merge(corr, on=keys, how="left")
