"""The report's section on accuracy predicted from unlabelled text (OUT/prediction/, written by `xlgm predict`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xlgm.analysis.intervals import wilson_interval
from xlgm.study.report.figures import SMALL_FONT, Figure, mpl_text, new_figure, png_bytes, series_styles
from xlgm.study.report.format import fmt, interval_text


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
    errors["actual"] = [interval_text(a, eval_rows.get(lang)) for lang, a in zip(errors["language"], errors["actual"])]
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
    fig = new_figure(5.8, 4.6)
    ax = fig.add_subplot()
    languages = list(dict.fromkeys(cv["language"]))
    styles = series_styles(len(languages))
    for i, lang in enumerate(languages):
        rows = cv[cv["language"] == lang]
        acc = rows["accuracy"].to_numpy(dtype=float)
        n = eval_rows.get(lang)
        xerr = None
        if n:
            low, high = wilson_interval(acc * n, n)
            xerr = [acc - low, high - acc]
        if xerr is not None:  # light: with a point per checkpoint, dark bars would hide the points
            ax.errorbar(
                acc, rows["predicted"], xerr=xerr, fmt="none", elinewidth=0.5, alpha=0.15, color=styles[i].colour
            )
        ax.scatter(
            acc,
            rows["predicted"],
            s=18,
            marker=styles[i].marker,
            alpha=0.85,
            color=styles[i].colour,
            label=mpl_text(lang),
        )
    lo = float(min(cv["accuracy"].min(), cv["predicted"].min())) - 0.02
    hi = float(max(cv["accuracy"].max(), cv["predicted"].max())) + 0.02
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="y = x (exact prediction)")
    ax.annotate(
        "y = x",
        (hi, hi),
        xytext=(-6, 2),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=SMALL_FONT,
    )
    mae = summary.get("schemes", {}).get("leave-one-language-out", {}).get("mae", {})
    ax.set_title(
        f"Leave-one-language-out: MAE {fmt(mae.get('predicted'))} (same as source {fmt(mae.get('same_as_source'))})",
        fontsize=9,
    )
    ax.set_xlabel("actual accuracy (95% interval)")
    ax.set_ylabel("predicted from unlabelled text")
    ax.legend(fontsize=SMALL_FONT, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return PredictionSection(summary, errors, Figure("prediction", "Predicted vs actual accuracy", png_bytes(fig)))


def prediction_tables(section: PredictionSection) -> tuple[str, pd.DataFrame]:
    s = section.summary
    rows = []
    for scheme, r in s.get("schemes", {}).items():
        if "skipped" in r:
            rows.append((scheme, "", "", "", "", "", "", r["skipped"]))
        else:
            m = r.get("mae", {})
            rows.append(
                (
                    scheme,
                    m.get("predicted"),
                    m.get("predicted_source_anchor", math.nan),
                    m.get("same_as_source"),
                    m.get("language_gap", math.nan),
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
            "MAE language gap",
            "MAE other languages",
            "ratio",
            "rows",
        ],
    )
    intro = (
        "Accuracy per (checkpoint, language) predicted from unlabelled target text: a ridge regression on "
        f"label-free measures ({', '.join(s.get('features', []))}) of the gap to the source accuracy, anchored "
        "on what the scheme leaves labelled: the checkpoint's own other languages (leave one language out), or "
        "the other models' rows of the same language (leave one run or one configuration out: the model itself "
        "has no target labels). Rivals: 'same as source' (the source accuracy), 'language gap' (the source "
        "accuracy minus the language's mean gap in the other models: no target labels of the model), 'source "
        "anchor only' (the regression without any anchor), and 'other languages' (the mean accuracy of the "
        "model's other target languages: it needs the model's own target labels, so it is no rival for a "
        "model without them). ratio = MAE / MAE same as source. An error below the 95% half-width of one "
        "accuracy is within the sampling noise of the labelled target itself."
    )
    return intro, table
