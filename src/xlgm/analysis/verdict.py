"""The verdict: does each measure predict cross-lingual transfer beyond what source-language fit already says?

Three answers per measure, one row each, in this order:

    transfer_residual  does it predict transfer beyond the fit? Kendall tau with the mean transfer residual,
                       mean target accuracy less its fit on source accuracy (`xlgm.analysis.fit`)
    mean_accuracy      does it track target accuracy? tau with the mean zero-shot accuracy (``mean_target``)
    source_accuracy    does it track the fit? tau with the source-language accuracy (``acc_<source>``)

Each row has tau with its run-level 95% interval and permutation p-value (`xlgm.analysis.correlation` with
runs; a measure taken once a run is a plain permutation of its run values), the p-value adjusted over the
verdict's family, the two-level interval and the within- and between-configuration tests
(`xlgm.analysis.levels`), granulated Psi and CMI K (Jiang et al. 2020) when the study has hyperparameter axes,
the expected sign (the measure's registered direction vs accuracy, kept for the residual: more transfer than
the fit predicts) and the measure's health (`xlgm.analysis.health`).

A row is *decided* when its Holm-adjusted p <= alpha and its run-level interval excludes 0. Its verdict is

    excluded      the measure is unhealthy (not converged, saturated, constant, NaN, health unknown);
    inconclusive  not decided, or no expected direction to compare with;
    agrees / disagrees   decided, and sign(tau) is / is not the expected sign.

The level a decided row rests on: "within configurations" when the within-configuration test (seeds of the
same hyperparameters, permuted only among themselves) is significant after Holm over the verdict's rows;
"between configurations only" when the study has such a test and it is not (the overall correlation comes from
differences between configurations, whatever their own test says: with C configurations it cannot go below
2/C!); "runs (no within-configuration test)" when every configuration has one run.

The measure's finding, from its three rows: "excluded"; "predicts transfer beyond fit (agrees / disagrees with
expected sign)" when the residual row is decided; else "tracks fit; does not predict transfer beyond fit"
when the source row is decided; else "inconclusive".

Family. Holm and Benjamini-Hochberg adjust over every row of the verdict table that has a p-value, excluded
measures included (adding tests only raises the adjusted p-values: conservative); the within-configuration
p-values are Holm-adjusted over the same rows, as a family of their own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from xlgm.analysis.frame import MEAN_TARGET, TRANSFER_RESIDUAL, acc_column
from xlgm.analysis.multiple import benjamini_hochberg, holm

VERDICT_COLUMNS = [
    "measure",
    "target",
    "tau",
    "ci_low",
    "ci_high",
    "p_raw",
    "p_holm",
    "p_bh",
    "ci_low_2level",
    "ci_high_2level",
    "tau_within",
    "p_within",
    "p_within_holm",
    "tau_between",
    "p_between",
    "n_runs",
    "n_checkpoints",
    "n_configurations",
    "psi",
    "cmi_k",
    "expected_sign",
    "reference",
    "decided",
    "verdict",
    "level",
    "finding",
    "health",
    "reason",
]
VERDICTS = ("agrees", "disagrees", "inconclusive", "excluded")
BEYOND_FIT, TARGET_ACCURACY, SOURCE_ACCURACY = "transfer_residual", "mean_accuracy", "source_accuracy"
QUESTIONS = {
    BEYOND_FIT: "does it predict transfer beyond the fit?",
    TARGET_ACCURACY: "does it track target accuracy?",
    SOURCE_ACCURACY: "does it track the fit (source accuracy)?",
}
WITHIN, BETWEEN_ONLY, NO_WITHIN = (
    "within configurations",
    "between configurations only",
    "runs (no within-configuration test)",
)
TRACKS_FIT = "tracks fit; does not predict transfer beyond fit"
INCONCLUSIVE, EXCLUDED = "inconclusive", "excluded"


def predicts_beyond_fit(agrees: bool | None) -> str:
    """The finding of a measure whose residual row is decided."""
    sign = {True: "agrees with", False: "disagrees with", None: "no"}[agrees]
    return f"predicts transfer beyond fit ({sign} expected sign)"


def verdict_targets(source: str = "en") -> dict[str, str]:
    """The verdict's targets in report order: label -> frame column."""
    return {BEYOND_FIT: TRANSFER_RESIDUAL, TARGET_ACCURACY: MEAN_TARGET, SOURCE_ACCURACY: acc_column(source)}


Records = dict[tuple[str, str], dict]


def _records(table: pd.DataFrame | None) -> Records:
    """(measure, target) -> that row of `table` as a dict (the first, if several)."""
    if table is None or table.empty:
        return {}
    out: Records = {}
    for row in table.to_dict("records"):
        out.setdefault((row["measure"], row["target"]), row)
    return out


def _lookup(table: Records, measure: str, target: str, column: str) -> float:
    value = table.get((measure, target), {}).get(column)
    return float(value) if value is not None and pd.notna(value) else math.nan


def _note(table: Records, measure: str, target: str) -> str:
    note = table.get((measure, target), {}).get("note")
    return note if isinstance(note, str) else ""


def _undecided_reasons(tau: float, lo: float, hi: float, p_holm: float, p_min: float, alpha: float, note: str):
    if not math.isfinite(tau):
        return ["tau undefined" + (f": {note}" if note else "")]
    reasons = []
    if not (math.isfinite(lo) and math.isfinite(hi)):
        reasons.append("no interval")
    elif lo <= 0.0 <= hi:
        reasons.append(f"95% CI [{lo:+.2f}, {hi:+.2f}] includes 0")
    if not math.isfinite(p_holm):
        reasons.append("no p-value")
    elif p_holm > alpha:
        floor = (
            f"; the smallest p these runs allow is {p_min:.2g}" if math.isfinite(p_min) and p_min > alpha / 10 else ""
        )
        reasons.append(f"Holm-adjusted p {p_holm:.2g} > {alpha:g}{floor}")
    return reasons


def _level(p_within_holm: float, n_pairs_within: float, tau_between: float, p_between: float, alpha: float):
    if not (math.isfinite(n_pairs_within) and n_pairs_within > 0):
        return NO_WITHIN, ""
    if math.isfinite(p_within_holm) and p_within_holm <= alpha:
        return WITHIN, ""
    between = f"between configurations tau {tau_between:+.2f}, p {p_between:.2g}" if math.isfinite(tau_between) else ""
    return BETWEEN_ONLY, f"not within configurations (Holm p {p_within_holm:.2g}); {between}".rstrip("; ")


def _row(tables: tuple[Records, ...], measure, label, column, sign, citation, health) -> dict:
    correlations, levels, granulated, cmi = tables
    expected = None if sign is None else int(sign)
    get = functools.partial(_lookup, correlations, measure, column)
    level = functools.partial(_lookup, levels, measure, column)
    n_runs, n_ckpt, n_configs = get("n_runs"), get("n_checkpoints"), level("n_configurations")
    return {
        "measure": measure,
        "target": label,
        "tau": get("tau"),
        "ci_low": get("tau_lo"),
        "ci_high": get("tau_hi"),
        "p_raw": get("tau_p"),
        "p_min": get("p_min"),
        "ci_low_2level": level("tau_lo_2level"),
        "ci_high_2level": level("tau_hi_2level"),
        "tau_within": level("tau_within"),
        "p_within": level("p_within"),
        "n_pairs_within": level("n_pairs_within"),
        "tau_between": level("tau_between"),
        "p_between": level("p_between"),
        "n_runs": int(n_runs) if math.isfinite(n_runs) else 0,
        "n_checkpoints": int(n_ckpt) if math.isfinite(n_ckpt) else 0,
        "n_configurations": int(n_configs) if math.isfinite(n_configs) else 0,
        "psi": _lookup(granulated, measure, column, "psi"),
        "cmi_k": _lookup(cmi, measure, column, "k"),
        "expected_sign": expected,
        "reference": citation,
        "note": _note(correlations, measure, column),
        "health": health,
    }


def _decide_rows(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    decided, verdicts, levels, reasons = [], [], [], []
    for row in table.itertuples(index=False):
        if row.health != "healthy":
            decided.append(False)
            verdicts.append(EXCLUDED)
            levels.append("")
            reasons.append(f"unhealthy measure: {row.health}")
            continue
        undecided = _undecided_reasons(row.tau, row.ci_low, row.ci_high, row.p_holm, row.p_min, alpha, row.note)
        decided.append(not undecided)
        if undecided:
            verdicts.append(INCONCLUSIVE)
            levels.append("")
            reasons.append("; ".join(undecided))
            continue
        level, why = _level(row.p_within_holm, row.n_pairs_within, row.tau_between, row.p_between, alpha)
        levels.append(level)
        if pd.isna(row.expected_sign):
            verdicts.append(INCONCLUSIVE)
            reasons.append("; ".join(filter(None, ["no expected direction declared for this measure", why])))
        elif np.sign(row.tau) == int(row.expected_sign):
            verdicts.append("agrees")
            reasons.append(why)
        else:
            expects = "> 0" if int(row.expected_sign) > 0 else "< 0"
            verdicts.append("disagrees")
            reasons.append("; ".join(filter(None, [f"tau {row.tau:+.2f}, the literature expects {expects}", why])))
    return table.assign(decided=decided, verdict=verdicts, level=levels, reason=reasons)


def finding_of(rows: pd.DataFrame) -> str:
    """A measure's finding from its verdict rows (module docstring)."""
    by_target = rows.set_index("target")
    if (rows["verdict"] == EXCLUDED).all():
        return EXCLUDED
    if BEYOND_FIT in by_target.index and bool(by_target.loc[BEYOND_FIT, "decided"]):
        verdict = by_target.loc[BEYOND_FIT, "verdict"]
        return predicts_beyond_fit({"agrees": True, "disagrees": False}.get(str(verdict)))
    if SOURCE_ACCURACY in by_target.index and bool(by_target.loc[SOURCE_ACCURACY, "decided"]):
        return TRACKS_FIT
    return INCONCLUSIVE


def verdict_table(
    correlations: pd.DataFrame,
    health: pd.DataFrame,
    directions: Mapping[str, tuple[int | None, str]],
    *,
    levels: pd.DataFrame | None = None,
    granulated: pd.DataFrame | None = None,
    cmi: pd.DataFrame | None = None,
    measures: list[str] | None = None,
    source: str = "en",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The verdict table (columns `VERDICT_COLUMNS`; module docstring for the rules).

    Args:
        correlations: a correlation table (`xlgm.analysis.report_table.correlation_table` with runs) holding the
            rows of the targets ``transfer_residual``, ``mean_target`` and ``acc_<source>``: tau, tau_lo,
            tau_hi, tau_p, n_runs, n_checkpoints (and p_min when present).
        health: `xlgm.analysis.health.measure_health` of the same measures.
        directions: measure -> (expected sign vs accuracy: +1, -1 or None; its citation).
        levels: `xlgm.analysis.levels.level_table` of the same targets, or None (no level then).
        granulated, cmi: tables with measure, target and ``psi`` / ``k`` columns (targets named as in the frame),
            or None.
        measures: the measures, in order (default: those of `correlations`).
        source: the source language (its accuracy is the fit).
        alpha: the level of the decision.
    """
    names = list(measures) if measures is not None else list(dict.fromkeys(correlations["measure"]))
    healthy = dict(zip(health["measure"], health["healthy"].astype(bool)))
    reason_of = dict(zip(health["measure"], health["reason"]))
    tables = tuple(_records(t) for t in (correlations, levels, granulated, cmi))
    rows = []
    for measure in names:
        sign, citation = directions.get(measure, (None, ""))
        state = "healthy" if healthy.get(measure, False) else (reason_of.get(measure) or "no health")
        for label, column in verdict_targets(source).items():
            rows.append(_row(tables, measure, label, column, sign, citation, state))
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    table["p_holm"] = holm(table["p_raw"].to_numpy(dtype=float))
    table["p_bh"] = benjamini_hochberg(table["p_raw"].to_numpy(dtype=float))
    table["p_within_holm"] = holm(table["p_within"].to_numpy(dtype=float))
    table = _decide_rows(table, alpha)
    findings = {m: finding_of(part) for m, part in table.groupby("measure", sort=False)}
    table["finding"] = table["measure"].map(findings)
    table["expected_sign"] = table["expected_sign"].astype("Int64")
    return table[VERDICT_COLUMNS]


FINDING_COLUMNS = ["measure", "finding"] + [
    f"{column}_{label}"
    for label in (BEYOND_FIT, TARGET_ACCURACY, SOURCE_ACCURACY)
    for column in ("tau", "p_holm", "verdict", "level")
]


def findings_table(verdict: pd.DataFrame) -> pd.DataFrame:
    """One row per measure: its finding and, per question (residual first), tau, Holm p, verdict and level."""
    rows = []
    for measure, part in verdict.groupby("measure", sort=False):
        row = {"measure": measure, "finding": part["finding"].iloc[0]}
        by_target = part.set_index("target")
        for label in (BEYOND_FIT, TARGET_ACCURACY, SOURCE_ACCURACY):
            for column in ("tau", "p_holm", "verdict", "level"):
                row[f"{column}_{label}"] = by_target[column].get(label, math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)
