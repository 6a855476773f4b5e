"""The report's figures, drawn with matplotlib's object API (`matplotlib.figure.Figure` on an Agg canvas: no
pyplot, no display): accuracy heatmap and intervals, a scatter per measure, the tau heatmap, training curves."""

from __future__ import annotations

import io
import json
import math
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from xlgm.analysis import acc_column
from xlgm.analysis.intervals import wilson_interval
from xlgm.study.analyze import StudyData
from xlgm.study.folders import run_dir
from xlgm.study.report.format import fmt, fmt_coefficient, fmt_pvalue, heading_case, is_missing, to_number
from xlgm.study.report.inputs import StudyRecords, chance_level, metric_name, task_num_labels
from xlgm.study.report.tables import hyperparameters

GREY = "#9a9a9a"


@dataclass
class Figure:
    key: str  # file stem
    title: str
    png: bytes


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def mpl_text(text: Any) -> str:
    """A user string as matplotlib text: a `$` would start mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def distinct_colours(n: int) -> list:
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
LINESTYLES = ("-", "--", ":", "-.")
# the smallest text of a figure, in points at its drawn size (the page shows a figure at 100%, one PNG pixel a
# CSS pixel): cell numbers, legends, tick labels
SMALL_FONT = 8


@dataclass(frozen=True)
class Style:
    """How one series is drawn: no two series of a figure share colour and marker, or colour and line style."""

    colour: Any
    marker: str
    linestyle: str


def series_styles(n: int) -> list[Style]:
    """n series told apart by colour and marker (or line style). The 11th to 20th colours are light shades of the
    first ten: they take other markers and line styles than their dark twins."""
    colours = distinct_colours(n)
    return [
        Style(colours[i], MARKERS[(i + 5 * (i // 10)) % len(MARKERS)], LINESTYLES[(i // 10) % len(LINESTYLES)])
        for i in range(n)
    ]


def run_styles(data: StudyData, run_ids: list[str]) -> dict[str, Style]:
    """A style per run: its configuration (objective and hyperparameters) picks the colour, its seed the marker and
    line style, so that the seeds of one configuration read as one family. Where that would repeat a combination
    (two runs of one configuration and seed, or more seeds than line styles), each run gets its own
    `series_styles` entry instead."""
    runs = data.runs.set_index("run_id") if "run_id" in data.runs else pd.DataFrame()
    configs, seeds = [], []
    for run_id in run_ids:
        row = runs.loc[run_id] if run_id in runs.index else pd.Series(dtype=object)
        configs.append(f"{row.get('objective', '')} {hyperparameters(data, run_id, row)}")
        seeds.append(str(row.get("seed", "")))
    config_index = {c: i for i, c in enumerate(sorted(set(configs)))}  # the same colours in every figure
    seed_index = {s: i for i, s in enumerate(sorted(set(seeds), key=lambda s: (len(s), s)))}  # s0 first
    pairs = [(config_index[c], seed_index[s]) for c, s in zip(configs, seeds)]
    if len(set(pairs)) < len(pairs) or len(seed_index) > len(LINESTYLES) or len(config_index) > 20:
        return dict(zip(run_ids, series_styles(len(run_ids))))
    colours = distinct_colours(len(config_index))
    return {
        run_id: Style(colours[c], MARKERS[s % len(MARKERS)], LINESTYLES[s]) for run_id, (c, s) in zip(run_ids, pairs)
    }


def accuracy_heatmap(data: StudyData, per_run: pd.DataFrame, labels: dict[str, str]) -> Figure:
    langs = data.languages
    values = per_run[[acc_column(lang) for lang in langs]].to_numpy(dtype=float)
    fig = new_figure(max(5.0, 0.55 * len(langs) + 2.5), max(2.5, 0.35 * len(per_run) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(langs)), [mpl_text(lang) for lang in langs])
    ax.set_yticks(range(len(per_run)), [mpl_text(labels.get(r, r)) for r in per_run["run_id"]], fontsize=8)
    if values.size <= 600:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=SMALL_FONT,
                    color="white" if v < np.nanmean(values) else "black",
                )
    metric = metric_name(data)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{heading_case(metric)} per run and language ({mpl_text(data.spec.evaluation.split)})", fontsize=10)
    return Figure("accuracy-heatmap", f"{heading_case(metric)}: run x language", png_bytes(fig))


def accuracy_intervals(data: StudyData, per_run: pd.DataFrame, labels: dict[str, str], records: StudyRecords) -> Figure:
    """Each run's accuracy per language with its 95% Wilson interval, and the chance level."""
    langs = data.languages
    chance, chance_text = chance_level(data)
    fig = new_figure(max(6.0, 0.5 * len(langs) + 3.5), 4.0)
    ax = fig.add_subplot()
    styles = run_styles(data, list(per_run["run_id"]))
    width = 0.7 / max(len(per_run), 1)
    # in the order of their labels: the seeds of a configuration stand side by side
    ordered = per_run.assign(_label=[labels.get(r, r) for r in per_run["run_id"]]).sort_values("_label", kind="stable")
    for i, (_, r) in enumerate(ordered.iterrows()):
        x = np.arange(len(langs)) - 0.35 + width * (i + 0.5)
        acc = np.array([to_number(r.get(acc_column(lang))) for lang in langs])
        rows = np.array([records.eval_rows.get(lang, 0) for lang in langs], dtype=float)
        ok = np.isfinite(acc) & (rows > 0)
        low, high = np.full_like(acc, np.nan), np.full_like(acc, np.nan)
        if ok.any():
            low[ok], high[ok] = wilson_interval(acc[ok] * rows[ok], rows[ok])
        ax.errorbar(
            x[ok],
            acc[ok],
            yerr=[acc[ok] - low[ok], high[ok] - acc[ok]],
            fmt=styles[r["run_id"]].marker,
            markersize=4,
            capsize=2,
            linewidth=1,
            color=styles[r["run_id"]].colour,
            label=mpl_text(labels.get(r["run_id"], r["run_id"])),
        )
    ax.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance ({chance_text})")
    ax.set_xticks(range(len(langs)), [mpl_text(lang) for lang in langs])
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title("Accuracy per language: each run's checkpoint, with 95% intervals", fontsize=10)
    ax.legend(fontsize=SMALL_FONT, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return Figure("accuracy-intervals", "Accuracy per language with 95% intervals and chance", png_bytes(fig))


def _undefined_reason(note: Any, measure: str) -> str:
    text = fmt(note).replace(": correlations undefined (NaN)", "")
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
    fig = new_figure(4.6, 3.8)
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
    styles = series_styles(len(names))
    for i, name in enumerate(names):
        mask = (groups == name).to_numpy()
        colour = GREY if excluded else styles[i].colour
        ax.errorbar(
            x[mask],
            y[mask],
            yerr=None if yerr is None else yerr[:, mask],
            fmt=styles[i].marker,
            markersize=4,
            capsize=2,
            linewidth=0.8,
            alpha=0.85,
            color=colour,
            label=mpl_text(name),
        )
    ok = np.isfinite(x) & np.isfinite(y)
    if not excluded and ok.sum() >= 2 and np.unique(x[ok]).size >= 2 and np.unique(y[ok]).size >= 2:
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(xs, slope * xs + intercept, color="black", linewidth=1, label="least squares")
    ax.axhline(chance_level(data)[0], color="black", linestyle="--", linewidth=0.8, label="chance")
    title = scatter_title(measure, corr, verdict, excluded)
    ax.set_title(mpl_text("\n".join(textwrap.wrap(title, 52))), fontsize=9, color=GREY if excluded else "black")
    ax.set_xlabel(mpl_text(measure))
    ax.set_ylabel("mean target accuracy" + (" (95% interval)" if yerr is not None else ""))
    ax.legend(fontsize=SMALL_FONT)
    return Figure(f"scatter-{measure}", f"{measure} vs mean target accuracy", png_bytes(fig))


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
            if is_missing(r.get("tau")):
                return f"{measure}: τ undefined ({fmt(r.get('reason')) or fmt(r.get('health')) or 'no value'})"
            return (
                f"{measure}: τ = {fmt_coefficient(r.get('tau'), r.get('ci_low'), r.get('ci_high'))}, "
                f"p Holm = {fmt_pvalue(r.get('p_holm'))}; {fmt(r.get('verdict'))}"
            )
    rows = corr[(corr["measure"] == measure) & (corr["target"] == "mean_target")]
    if not len(rows):
        return f"{measure}: τ not computed"
    r = rows.iloc[0]
    if is_missing(r.get("tau")):
        return f"{measure}: τ undefined: {_undefined_reason(r.get('note'), measure)}"
    tau = fmt_coefficient(r.get("tau"), r.get("tau_lo"), r.get("tau_hi"))
    return f"{measure}: τ = {tau} (p = {fmt_pvalue(r.get('tau_p'))}, unadjusted)"


def tau_heatmap(data: StudyData, corr: pd.DataFrame, excluded: dict[str, str] | None = None) -> Figure:
    """Kendall tau of every measure with every language's accuracy; an excluded or undefined row says why."""
    excluded = excluded or {}
    targets = [acc_column(lang) for lang in data.languages] + ["mean_target"]
    names = [mpl_text(lang) for lang in data.languages] + ["mean"]
    table = corr.pivot(index="measure", columns="target", values="tau").reindex(index=data.measures, columns=targets)
    values = table.to_numpy(dtype=float)
    fig = new_figure(max(6.0, 0.6 * len(targets) + 3.5), max(2.4, 0.4 * len(data.measures) + 1.4))
    ax = fig.add_subplot()
    shown = values.copy()
    for i, measure in enumerate(data.measures):
        if measure in excluded:
            shown[i, :] = np.nan
    image = ax.imshow(shown, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(targets)), names)
    ax.set_yticks(range(len(data.measures)), [mpl_text(m) for m in data.measures], fontsize=8)
    middle = (len(targets) - 1) / 2
    wrap = max(18, 7 * len(targets))

    def row_text(i: int, text: str) -> None:
        ax.text(
            middle,
            i,
            mpl_text("\n".join(textwrap.wrap(text, wrap))),
            ha="center",
            va="center",
            fontsize=SMALL_FONT,
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
                colour = "white" if abs(v) > 0.6 else "black"  # dark cells at both ends of the scale
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=SMALL_FONT, color=colour)
    fig.colorbar(image, ax=ax, label="Kendall τ")
    ax.set_title("Kendall τ: measure vs accuracy per language (unadjusted)", fontsize=10)
    return Figure("tau-heatmap", "Kendall τ: measure x language", png_bytes(fig))


def training_curves(data: StudyData, labels: dict[str, str]) -> Figure:
    """Training loss per run, and the loss of a uniform prediction (ln of the number of labels)."""
    fig = new_figure(7.2, 3.8)
    ax = fig.add_subplot()
    series = []
    for run_id in data.runs["run_id"]:
        path = run_dir(data.out, run_id) / "train_log.jsonl"
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
    series.sort(key=lambda s: labels.get(s[0], s[0]))  # a configuration's seeds side by side in the legend
    styles = run_styles(data, [run_id for run_id, _ in series])
    for run_id, points in series:
        steps, losses = zip(*points)
        style = styles[run_id]
        ax.plot(
            steps,
            losses,
            marker=style.marker if len(points) < 30 else None,
            markersize=3,
            linestyle=style.linestyle,
            linewidth=1.2,
            color=style.colour,
            label=mpl_text(labels.get(run_id, run_id)),
        )
        if len(series) > 20:  # more runs than a legend can tell apart: label the line ends
            ax.annotate(
                mpl_text(labels.get(run_id, run_id)),
                (steps[-1], losses[-1]),
                fontsize=SMALL_FONT,
                color=style.colour,
                xytext=(2, 0),
                textcoords="offset points",
                va="center",
            )
    num_labels = task_num_labels(data)
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
        fontsize=SMALL_FONT,
    )
    if not series:
        ax.text(0.5, 0.75, "no training log", ha="center", va="center", transform=ax.transAxes)
    if len(series) <= 20:
        ax.legend(fontsize=SMALL_FONT, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training curves")
    return Figure("training-curves", "Training loss", png_bytes(fig))
