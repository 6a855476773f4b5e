"""The verdict: does each measure go with cross-lingual transfer the way the literature expects?

One row per (measure, target), target in

    mean_accuracy   the mean zero-shot accuracy over the target languages (``mean_target`` of the frame)
    mean_gap        the mean transfer gap, source accuracy - target accuracy (``mean_gap``)

with Kendall's tau, its run-level 95% interval and permutation p-value (`xlgm.analysis.correlation` with runs),
the p-value adjusted over the verdict's family, granulated Psi and CMI K (Jiang et al. 2020) when the study has
hyperparameter axes, the expected sign (the measure's registered direction vs accuracy; its negative vs the gap)
and the measure's health (`xlgm.analysis.health`). The verdict of a row is

    excluded      the measure is unhealthy (not converged, saturated, constant, NaN, health unknown): its
                  correlation would describe the estimator's failure, not the measure;
    inconclusive  tau undefined, the interval reaches 0 (lo <= 0 <= hi), the Holm-adjusted p > alpha, or no
                  expected direction to compare with;
    agrees        otherwise, when sign(tau) is the expected sign;
    disagrees     otherwise, when it is the opposite.

Family. Holm and Benjamini-Hochberg adjust over every row of the verdict table that has a p-value, excluded
measures included (adding tests only raises the adjusted p-values: conservative). The decision uses Holm's
family-wise adjustment, since each row is read as a claim about one measure.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from xlgm.analysis.frame import MEAN_GAP, MEAN_TARGET
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
    "n_runs",
    "n_checkpoints",
    "psi",
    "cmi_k",
    "expected_sign",
    "reference",
    "verdict",
    "health",
    "reason",
]
VERDICT_TARGETS = {"mean_accuracy": MEAN_TARGET, "mean_gap": MEAN_GAP}
VERDICTS = ("agrees", "disagrees", "inconclusive", "excluded")


def _lookup(table: pd.DataFrame | None, measure: str, target: str, column: str) -> float:
    if table is None or table.empty or column not in table.columns:
        return math.nan
    row = table[(table["measure"] == measure) & (table["target"] == target)]
    return float(row[column].iloc[0]) if len(row) and pd.notna(row[column].iloc[0]) else math.nan


def _note(table: pd.DataFrame, measure: str, target: str) -> str:
    if "note" not in table.columns:
        return ""
    row = table[(table["measure"] == measure) & (table["target"] == target)]
    return str(row["note"].iloc[0]) if len(row) and isinstance(row["note"].iloc[0], str) else ""


def _decide(
    tau: float, lo: float, hi: float, p_holm: float, p_min: float, expected: int | None, alpha: float, note: str = ""
) -> tuple[str, str]:
    if not math.isfinite(tau):
        return "inconclusive", "tau undefined" + (f": {note}" if note else "")
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
    if reasons:
        return "inconclusive", "; ".join(reasons)
    if expected is None:
        return "inconclusive", "no expected direction declared for this measure"
    if np.sign(tau) == expected:
        return "agrees", ""
    return "disagrees", f"tau {tau:+.2f}, the literature expects {'> 0' if expected > 0 else '< 0'}"


def verdict_table(
    correlations: pd.DataFrame,
    health: pd.DataFrame,
    directions: Mapping[str, tuple[int | None, str]],
    *,
    granulated: pd.DataFrame | None = None,
    cmi: pd.DataFrame | None = None,
    measures: list[str] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The verdict table (columns `VERDICT_COLUMNS`; module docstring for the rules).

    Args:
        correlations: a correlation table (`xlgm.analysis.report_table.correlation_table` with runs) holding the
            rows of targets ``mean_target`` and ``mean_gap``: tau, tau_lo, tau_hi, tau_p, n_runs, n_checkpoints
            (and p_min when present).
        health: `xlgm.analysis.health.measure_health` of the same measures.
        directions: measure -> (expected sign vs accuracy: +1, -1 or None; its citation).
        granulated, cmi: tables with measure, target and ``psi`` / ``k`` columns (targets named as in the frame),
            or None.
        measures: the measures, in order (default: those of `correlations`).
        alpha: the level of the decision.
    """
    names = list(measures) if measures is not None else list(dict.fromkeys(correlations["measure"]))
    healthy = dict(zip(health["measure"], health["healthy"].astype(bool)))
    reason_of = dict(zip(health["measure"], health["reason"]))
    rows = []
    for measure in names:
        sign, citation = directions.get(measure, (None, ""))
        for label, column in VERDICT_TARGETS.items():
            expected = None if sign is None else (int(sign) if column == MEAN_TARGET else -int(sign))
            get = functools.partial(_lookup, correlations, measure, column)
            n_runs, n_ckpt = get("n_runs"), get("n_checkpoints")
            rows.append(
                {
                    "measure": measure,
                    "target": label,
                    "tau": get("tau"),
                    "ci_low": get("tau_lo"),
                    "ci_high": get("tau_hi"),
                    "p_raw": get("tau_p"),
                    "p_min": get("p_min"),
                    "n_runs": int(n_runs) if math.isfinite(n_runs) else 0,
                    "n_checkpoints": int(n_ckpt) if math.isfinite(n_ckpt) else 0,
                    "psi": _lookup(granulated, measure, column, "psi"),
                    "cmi_k": _lookup(cmi, measure, column, "k"),
                    "expected_sign": expected,
                    "reference": citation,
                    "note": _note(correlations, measure, column),
                    "health": "healthy" if healthy.get(measure, False) else (reason_of.get(measure) or "no health"),
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    table["p_holm"] = holm(table["p_raw"].to_numpy(dtype=float))
    table["p_bh"] = benjamini_hochberg(table["p_raw"].to_numpy(dtype=float))
    verdicts, reasons = [], []
    for row in table.itertuples(index=False):
        if row.health != "healthy":
            verdicts.append("excluded")
            reasons.append(f"unhealthy measure: {row.health}")
            continue
        verdict, reason = _decide(
            row.tau,
            row.ci_low,
            row.ci_high,
            row.p_holm,
            row.p_min,
            None if pd.isna(row.expected_sign) else int(row.expected_sign),
            alpha,
            row.note,
        )
        verdicts.append(verdict)
        reasons.append(reason)
    table["verdict"] = verdicts
    table["reason"] = reasons
    table["expected_sign"] = table["expected_sign"].astype("Int64")
    return table[VERDICT_COLUMNS]
