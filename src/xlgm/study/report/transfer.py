"""The verdict section's tables and figure: does each measure predict transfer beyond the fit? Three answers per
measure (transfer residual, target accuracy, source accuracy), the level each decided answer rests on, the fit
behind the residual, and each target language's tau for accuracy and for residual."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from xlgm.analysis.verdict import (
    BETWEEN_ONLY,
    BEYOND_FIT,
    EXCLUDED,
    INCONCLUSIVE,
    QUESTIONS,
    SOURCE_ACCURACY,
    TARGET_ACCURACY,
    TRACKS_FIT,
)
from xlgm.study.report.figures import SMALL_FONT, Figure, mpl_text, new_figure, png_bytes
from xlgm.study.report.format import fmt, fmt_coefficient, fmt_count, fmt_pvalue, fmt_signed, is_missing, to_number

ANSWER_NAMES = {BEYOND_FIT: "beyond fit", TARGET_ACCURACY: "target acc", SOURCE_ACCURACY: "source acc (fit)"}
ALPHA = 0.05
# the verdict table's columns of free text: the page shows them on a line of their own under each measure's numbers,
# so that the numbers keep one line and the text the page's width
VERDICT_TEXT_COLUMNS = ("expected", "reference", "runs / checkpoints", "health", "reason")
# its columns of words, not numbers, that may wrap so that the table fits a 1280 px page
VERDICT_WRAP_COLUMNS = ("finding", *(f"level ({ANSWER_NAMES[t]})" for t in (BEYOND_FIT, TARGET_ACCURACY)))


def _expected_text(sign: Any) -> str:
    sign = to_number(sign)
    if sign > 0:
        return "+ (higher: better transfer)"
    if sign < 0:
        return "− (higher: worse transfer)"
    return "not declared"


def _get(row: Any, name: str) -> Any:
    return None if row is None else row.get(name)


def _joined(by_target: dict[str, Any], column: str) -> str:
    texts = {t: fmt(r.get(column)) for t, r in by_target.items() if fmt(r.get(column)).strip()}
    if len(texts) == len(by_target) and len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{ANSWER_NAMES.get(t, t)}: {v}" for t, v in texts.items())


def verdict_summary(verdict: pd.DataFrame) -> str:
    """One line: how many measures predict transfer beyond the fit, track the fit only, are inconclusive or
    excluded (verdict.csv's finding, one per measure)."""
    findings = verdict.groupby("measure", sort=False)["finding"].first().astype(str)
    beyond = findings[findings.str.startswith("predicts transfer beyond fit")]
    signs = ""
    if len(beyond):  # which way: a measure may predict transfer against the literature's direction
        agree = int(beyond.str.contains("(agrees with", regex=False).sum())
        disagree = int(beyond.str.contains("(disagrees with", regex=False).sum())
        signs = f" ({agree} as expected, {disagree} against the expected sign)"
    counts = findings.value_counts()
    n = len(findings)
    return (
        f"{n} measure{'s' if n != 1 else ''}: {len(beyond)} predict transfer beyond fit{signs}, "
        f"{int(counts.get(TRACKS_FIT, 0))} track fit only, {int(counts.get(INCONCLUSIVE, 0))} inconclusive, "
        f"{int(counts.get(EXCLUDED, 0))} excluded"
    )


def verdict_family(verdict: pd.DataFrame) -> str:
    """Which tests the verdict's adjusted p-values adjust over, and how that family differs from the correlation
    tables' (the same test, a larger adjusted p there)."""
    tests = int(pd.to_numeric(verdict["p_holm"], errors="coerce").notna().sum()) if "p_holm" in verdict else 0
    return (
        f"Holm adjusts over this table's {tests} tests (every measure's three answers, excluded measures included); "
        "the within-configuration p-values are Holm-adjusted over the same rows, as a family of their own. The "
        "correlation tables below adjust over all their tests, so the same test has a larger adjusted p-value there."
    )


def verdict_display_table(verdict: pd.DataFrame) -> pd.DataFrame:
    """One row per measure (verdict.csv's order): its finding, then tau with its run-level CI, Holm p and level
    for each of the three questions, beyond the fit first; expected direction, runs, health and reasons."""
    rows = []
    for measure, group in verdict.groupby("measure", sort=False):
        by = {str(r["target"]): r for _, r in group.iterrows()}
        first = next(iter(by.values()))
        row = {"measure": measure, "finding": fmt(first.get("finding"))}
        for target, name in ANSWER_NAMES.items():
            r = by.get(target)
            row[f"τ {name} [95% CI]"] = (
                "" if r is None else fmt_coefficient(r.get("tau"), r.get("ci_low"), r.get("ci_high"))
            )
            row[f"p Holm ({name})"] = fmt_pvalue(_get(r, "p_holm"))
            if target != SOURCE_ACCURACY:
                row[f"level ({name})"] = fmt(_get(r, "level"))
        row["expected"] = _expected_text(first.get("expected_sign"))
        row["reference"] = fmt(first.get("reference"))
        row["runs / checkpoints"] = f"{fmt_count(first.get('n_runs'))} / {fmt_count(first.get('n_checkpoints'))}"
        row["health"] = _joined(by, "health")
        row["reason"] = _joined(by, "reason")
        rows.append(row)
    return pd.DataFrame(rows)


def level_display_table(verdict: pd.DataFrame) -> pd.DataFrame:
    """Per healthy (measure, question): the run-level and two-level intervals, the within-configuration test
    (seeds of one configuration, Holm over the verdict's rows) and the between-configuration test (means)."""
    rows = []
    for _, r in verdict[verdict["verdict"].astype(str) != "excluded"].iterrows():
        rows.append(
            {
                "measure": r["measure"],
                "question": QUESTIONS.get(str(r["target"]), str(r["target"])),
                "τ [run-level CI]": fmt_coefficient(r.get("tau"), r.get("ci_low"), r.get("ci_high")),
                "two-level CI": fmt_coefficient(r.get("tau"), r.get("ci_low_2level"), r.get("ci_high_2level")),
                "τ within": fmt_signed(r.get("tau_within")),
                "p within (Holm)": fmt_pvalue(r.get("p_within_holm")),
                "τ between": fmt_signed(r.get("tau_between")),
                "p between": fmt_pvalue(r.get("p_between")),
                "configurations": fmt_count(r.get("n_configurations")),
                "level": fmt(r.get("level")),
            }
        )
    return pd.DataFrame(rows)


def between_only(verdict: pd.DataFrame) -> list[str]:
    """'measure (question)' for every decided answer that rests on between-configuration differences only."""
    rows = verdict[verdict["level"].astype(str) == BETWEEN_ONLY] if "level" in verdict.columns else verdict.iloc[:0]
    return [f"{r['measure']} ({ANSWER_NAMES.get(str(r['target']), r['target'])})" for _, r in rows.iterrows()]


SHAPE_NAMES = {1: "a straight line", 2: "a quadratic (degree 2)", 3: "a cubic (degree 3)"}


def fit_sentence(fit: pd.DataFrame | None, source: str) -> str:
    """How the residual's fit is made and how well it fits, from fit.csv's row for the mean target accuracy."""
    if fit is None or fit.empty:
        return "The fit behind the transfer residual was not computed."
    r = fit[fit["target"] == "mean_target"].iloc[0]
    degree = int(r["degree"]) if "degree" in r.index and pd.notna(r["degree"]) else 1
    shape = SHAPE_NAMES.get(degree, f"a polynomial of degree {degree}")
    return (
        f"The transfer residual is the mean target accuracy less its least-squares fit on {source} accuracy "
        f"across the study's {fmt_count(r['n'])} units. The fit is a polynomial of degree 1, 2 or 3, whichever "
        f"predicts held-out configurations best; here it is {shape}, R² {fmt(r['r2'])} (the straight line alone: "
        f"mean target = {fmt(r['intercept'])} + {fmt(r['slope'])} × {source} accuracy). Fitted without each "
        f"configuration in turn ({fmt_count(r['n_folds'])} folds) the held-out R² is {fmt(r['oof_r2'])}, and the "
        f"two residuals rank the units alike (τ {fmt_signed(r['tau_residual_oof'])}). In sample the residual is "
        f"uncorrelated with {source} accuracy by construction (Pearson {fmt_signed(r['pearson_source_residual'])}; "
        f"Kendall τ {fmt_signed(r['tau_source_residual'])}). Per target language the fit is chosen and made for "
        "that language. No partial rank correlation is reported: it would also remove the fit from the measure, "
        "which asks another question, and its permutation test (Freedman-Lane) is not exact when whole runs are "
        "permuted."
    )


def fit_display_table(fit: pd.DataFrame) -> pd.DataFrame:
    names = {
        "target": "target",
        "degree": "degree",
        "intercept": "intercept",
        "slope": "slope",
        "r2": "R²",
        "oof_r2": "R² out of fold",
        "n": "units",
        "n_folds": "folds",
        "tau_source_residual": "τ(source, residual)",
        "tau_residual_oof": "τ(residual, out-of-fold residual)",
    }
    fit = fit if "degree" in fit.columns else fit.assign(degree=1)
    table = fit[list(names)].rename(columns=names).copy()
    table["target"] = ["mean" if t == "mean_target" else str(t).removeprefix("acc_") for t in fit["target"]]
    return table


def language_display_table(languages: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "measure": languages["measure"],
            "language": languages["language"],
            "τ accuracy": [fmt_signed(v) for v in languages["tau_accuracy"]],
            "p Holm (accuracy)": [fmt_pvalue(v) for v in languages["p_accuracy_holm"]],
            "τ residual": [fmt_signed(v) for v in languages["tau_residual"]],
            "p Holm (residual)": [fmt_pvalue(v) for v in languages["p_residual_holm"]],
        }
    )


def language_heatmap(languages: pd.DataFrame, measures: list[str], excluded: dict[str, str]) -> Figure:
    """Two panels, one above the other, measure x target language: Kendall tau with the language's accuracy and
    with its residual; * marks a Holm-adjusted p <= 0.05 (family: every measure x language of that panel); excluded
    measures blank. Stacked rather than side by side so that the figure fits the page at full size (its text
    stays SMALL_FONT at the size shown)."""
    langs = list(dict.fromkeys(languages["language"].astype(str)))
    panel_height = max(1.6, 0.26 * len(measures) + 0.9)
    fig = new_figure(max(6.0, 0.55 * len(langs) + 3.5), 2 * panel_height)
    axes = fig.subplots(2, 1, sharex=True)
    image = None
    for ax, kind, title in zip(axes, ("accuracy", "residual"), ("accuracy", "transfer residual")):
        table = languages.pivot(index="measure", columns="language", values=f"tau_{kind}")
        p = languages.pivot(index="measure", columns="language", values=f"p_{kind}_holm")
        values = table.reindex(index=measures, columns=langs).to_numpy(dtype=float, copy=True)
        adjusted = p.reindex(index=measures, columns=langs).to_numpy(dtype=float)
        for i, measure in enumerate(measures):
            if measure in excluded:
                values[i, :] = np.nan
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(langs)), [mpl_text(lang) for lang in langs], fontsize=SMALL_FONT)
        ax.set_yticks(range(len(measures)), [mpl_text(m) for m in measures], fontsize=SMALL_FONT)
        for i in range(len(measures)):
            for j in range(len(langs)):
                v = values[i, j]
                if np.isfinite(v):
                    star = "*" if not is_missing(adjusted[i, j]) and adjusted[i, j] <= ALPHA else ""
                    colour = "white" if abs(v) > 0.6 else "black"  # dark cells at both ends of the scale
                    ax.text(j, i, f"{v:+.2f}{star}", ha="center", va="center", fontsize=SMALL_FONT, color=colour)
        ax.set_title(f"τ with each language's {title}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="Kendall τ")
    title = "Kendall τ per target language: accuracy and transfer residual (* Holm p ≤ 0.05)"
    return Figure("language-heatmap", title, png_bytes(fig))
