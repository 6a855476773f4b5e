"""The report's sensitivity section: how each verdict moves with a measure's settings (a study spec's sweeps).

The figure has a row of panels per swept axis (the data size, then each swept option) and a column per answer
(transfer beyond the fit, target accuracy): Kendall τ with its run-level interval against the axis's value, one
line per measure and setting of its other axes, on a log axis; a filled marker is a decided verdict (agrees or
disagrees), a hollow one is not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from xlgm.analysis.sensitivity import ROWS, SETTING, option_columns
from xlgm.analysis.verdict import BEYOND_FIT, QUESTIONS, TARGET_ACCURACY
from xlgm.study.report.figures import Figure, mpl_text, new_figure, png_bytes, series_styles

ANSWERS = (BEYOND_FIT, TARGET_ACCURACY)
DECIDED = ("agrees", "disagrees")


def value_text(value: object) -> str:
    if pd.isna(value):
        return ""
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def curves(table: pd.DataFrame, axis: str) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows sorted by `axis`) for each measure and setting of its other axes at which `axis` takes two
    values or more (a curve to draw)."""
    others = [c for c in [ROWS, *option_columns(table)] if c != axis]
    out = []
    keyed = table.assign(**{c: table[c].map(value_text) for c in others})
    for (measure, *values), part in keyed.groupby(["measure", *others], sort=False, dropna=False):
        points = part[pd.to_numeric(part[axis], errors="coerce") > 0]
        if points[axis].nunique() < 2:
            continue
        fixed = ", ".join(f"{'rows' if c == ROWS else c} {v}" for c, v in zip(others, values) if v != "")
        label = f"{measure} ({fixed})" if fixed else str(measure)
        out.append((label, points.sort_values(axis, key=lambda c: pd.to_numeric(c))))
    return out


def sensitivity_figure(table: pd.DataFrame) -> Figure | None:
    """τ with its interval against each swept axis; None when no setting varies (nothing to draw)."""
    if table is None or table.empty:
        return None
    axes = [a for a in [ROWS, *option_columns(table)] if curves(table[table["target"] == BEYOND_FIT], a)]
    if not axes:
        return None
    fig = new_figure(11.0, 3.4 * len(axes) + 0.6)
    grid = fig.subplots(len(axes), len(ANSWERS), squeeze=False, sharey=True)
    for i, axis in enumerate(axes):
        for j, answer in enumerate(ANSWERS):
            ax = grid[i][j]
            lines = curves(table[table["target"] == answer], axis)
            for style, (label, points) in zip(series_styles(len(lines)), lines):
                x = pd.to_numeric(points[axis]).to_numpy(dtype=float)
                tau = points["tau"].to_numpy(dtype=float)
                low = tau - points["ci_low"].to_numpy(dtype=float)
                high = points["ci_high"].to_numpy(dtype=float) - tau
                ax.errorbar(
                    x,
                    tau,
                    yerr=[low, high],
                    color=style.colour,
                    linestyle=style.linestyle,
                    capsize=3,
                    label=mpl_text(label),
                )
                decided = points["verdict"].isin(DECIDED).to_numpy()
                ax.scatter(x[decided], tau[decided], color=style.colour, marker=style.marker, zorder=3)
                ax.scatter(
                    x[~decided],
                    tau[~decided],
                    facecolors="white",
                    edgecolors=style.colour,
                    marker=style.marker,
                    zorder=3,
                )
            ax.axhline(0, color="#9a9a9a", linewidth=0.8)
            if not any(np.isfinite(p["tau"].to_numpy(dtype=float)).any() for _, p in lines):
                ax.text(0.5, 0.5, "τ undefined at every setting", transform=ax.transAxes, ha="center", fontsize=8)
                ax.set_xticks([])
                lines = []
            else:
                ax.set_xscale("log", base=2 if axis == ROWS else 10)
            ax.set_ylim(-1.05, 1.05)
            ax.set_xlabel("rows the measure sees" if axis == ROWS else mpl_text(axis))
            ax.set_ylabel("Kendall τ")
            ax.set_title(mpl_text(QUESTIONS[answer]), fontsize=10)
            if axis == ROWS and lines:
                ticks = sorted({float(v) for _, p in lines for v in pd.to_numeric(p[axis])})
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            if j == len(ANSWERS) - 1 and lines:
                ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Kendall τ (run-level 95% CI) at each setting; filled: a decided verdict", fontsize=10)
    return Figure("sensitivity", "Sensitivity to the measures' settings", png_bytes(fig))


def sensitivity_display_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: its axes, τ [CI] and verdict for each answer, and its spreads."""
    rows = []
    options = option_columns(table)
    for _, part in table.groupby(SETTING, sort=False):
        first = part.iloc[0]
        row = {"measure": first["measure"], "rows": "all" if pd.isna(first[ROWS]) else f"{first[ROWS]:g}"}
        row.update({c: value_text(first[c]) for c in options})
        by_target = part.set_index("target")
        for answer in ANSWERS:
            if answer in by_target.index:
                r = by_target.loc[answer]
                ci = f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if not math.isnan(r["ci_low"]) else ""
                row[f"τ {answer}"] = f"{r['tau']:+.2f} {ci} {r['verdict']}" if np.isfinite(r["tau"]) else r["verdict"]
        for spread in ("seed_share", "draw_share"):
            row[spread] = "" if pd.isna(first[spread]) else f"{first[spread]:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def stability_display_table(stability: pd.DataFrame) -> pd.DataFrame:
    """One row per swept measure and answer: its settings, verdicts, whether it holds, and τ's range."""
    return pd.DataFrame(
        {
            "measure": stability["measure"],
            "answer": stability["target"],
            "settings": stability["settings"],
            "verdicts": stability["verdicts"],
            "holds?": stability["holds"],
            "τ range": [
                f"{lo:+.2f} ({a}) to {hi:+.2f} ({b})" if np.isfinite(lo) else ""
                for lo, hi, a, b in zip(
                    stability["tau_min"], stability["tau_max"], stability["at_min"], stability["at_max"]
                )
            ],
        }
    )
