"""`xlgm study report SPEC_OR_DIR`: one self-contained HTML file and a markdown file about a study.

    OUT/report/report.html     figures embedded as base64 PNG, no outside files
    OUT/report/report.md       the same content; its figures are OUT/report/figures/*.png

Contents: a run x language accuracy heatmap; for each measure a measure-vs-mean-target-accuracy scatter with its
least-squares line and Kendall tau in the title; a measure x language tau heatmap; training curves (loss vs step of
every run, from RUN/train_log.jsonl); the per-run table (objective, hyperparameters, seed, best held-out accuracy,
mean target accuracy, source accuracy, measures) and the strongest correlations; and, when `xlgm predict` has
run, the label-free predictor's errors against its baselines with a predicted-vs-actual scatter per language. Figures are drawn with
matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas): no pyplot, no display needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xlgm.analysis import acc_column
from xlgm.study.analyze import StudyData, analysis_tables, load_study, resolve_study, unit_frame, write_tables

PNG_PREFIX = '<img src="data:image/png;base64,'


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


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


# ------------------------------------------------------------------------------------------------------------
# Tables
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


def run_table(data: StudyData, per_run: pd.DataFrame) -> pd.DataFrame:
    """One row per run: id, objective, hyperparameters, seed, best held-out accuracy, accuracies, measures."""
    spec = data.spec
    best_dev = data.checkpoints.groupby("run_id")["dev_accuracy"].max() if not data.checkpoints.empty else {}
    rows = []
    for _, r in per_run.iterrows():
        row = {"run": r["run_id"], "objective": r.get("objective"),
               "hyperparameters": hyperparameters(data, r["run_id"], r),
               "seed": r.get("seed"), "step": r.get("step"),
               "best held-out acc": best_dev.get(r["run_id"], np.nan) if len(best_dev) else np.nan,
               "mean target acc": r.get("mean_target"),
               f"{spec.source_language} acc": r.get(acc_column(spec.source_language))}
        for m in data.measures:
            row[m] = r.get(m)
        rows.append(row)
    return pd.DataFrame(rows)


def _per_run(data: StudyData) -> pd.DataFrame:
    """One checkpoint per run (the analysis' run_reduce; `last` when the best checkpoint was not measured)."""
    from xlgm.analysis.frame import select_unit

    base = data.frame
    try:
        return select_unit(base, "run", data.spec.analysis.run_reduce)
    except Exception:  # noqa: BLE001 - e.g. `best` not among the measured checkpoints
        return select_unit(base, "run", "last")


# ------------------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------------------


def accuracy_heatmap(data: StudyData, per_run: pd.DataFrame, labels: dict[str, str]) -> Figure:
    langs = data.languages
    values = per_run[[acc_column(lang) for lang in langs]].to_numpy(dtype=float)
    fig = _figure(max(5.0, 0.55 * len(langs) + 2.5), max(2.5, 0.35 * len(per_run) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(per_run)), [labels.get(r, r) for r in per_run["run_id"]], fontsize=8)
    if values.size <= 600:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < np.nanmean(values) else "black")
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(f"Accuracy per run and language ({data.spec.evaluation.split})", fontsize=10)
    return Figure("accuracy-heatmap", "Accuracy: run x language", _png(fig))


def measure_scatter(data: StudyData, rows: pd.DataFrame, measure: str, corr: pd.DataFrame) -> Figure:
    fig = _figure(4.6, 3.6)
    ax = fig.add_subplot()
    x = pd.to_numeric(rows[measure], errors="coerce").to_numpy(dtype=float)
    y = rows["mean_target"].to_numpy(dtype=float)
    groups = rows["objective"].astype(str) if "objective" in rows else pd.Series(["runs"] * len(rows))
    for name in dict.fromkeys(groups):
        mask = (groups == name).to_numpy()
        ax.scatter(x[mask], y[mask], s=22, label=name, alpha=0.8)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() >= 2 and np.unique(x[ok]).size >= 2:
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(xs, slope * xs + intercept, color="black", linewidth=1, label="least squares")
    row = corr[(corr["measure"] == measure) & (corr["target"] == "mean_target")]
    tau = float(row["tau"].iloc[0]) if len(row) else math.nan
    p = float(row["tau_p"].iloc[0]) if len(row) else math.nan
    ax.set_title(f"{measure}: τ = {tau:+.2f} (p = {p:.2g})" if np.isfinite(tau) else f"{measure}: τ = n/a",
                 fontsize=10)
    ax.set_xlabel(measure)
    ax.set_ylabel("mean target accuracy")
    ax.legend(fontsize=7)
    return Figure(f"scatter-{measure}", f"{measure} vs mean target accuracy", _png(fig))


def tau_heatmap(data: StudyData, corr: pd.DataFrame) -> Figure:
    targets = [acc_column(lang) for lang in data.languages] + ["mean_target"]
    names = [lang for lang in data.languages] + ["mean"]
    table = corr.pivot(index="measure", columns="target", values="tau").reindex(index=data.measures,
                                                                             columns=targets)
    values = table.to_numpy(dtype=float)
    fig = _figure(max(6.0, 0.55 * len(targets) + 3.5), max(2.4, 0.4 * len(data.measures) + 1.4))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(targets)), names)
    ax.set_yticks(range(len(data.measures)), data.measures, fontsize=8)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="Kendall τ")
    ax.set_title("Kendall τ: measure vs accuracy per language", fontsize=10)
    return Figure("tau-heatmap", "Kendall τ: measure x language", _png(fig))


def training_curves(data: StudyData, labels: dict[str, str]) -> Figure:
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot()
    plotted = 0
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
            steps, losses = zip(*points)
            ax.plot(steps, losses, marker="." if len(points) < 30 else None, linewidth=1,
                    label=labels.get(run_id, run_id))
            plotted += 1
    if not plotted:
        ax.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax.transAxes)
    elif plotted <= 12:
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training curves")
    return Figure("training-curves", "Training loss", _png(fig))


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


def _html_table(table: pd.DataFrame, css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>\n"
                   for row in table.itertuples(index=False))
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def _md_table(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(str(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } .figs figure { margin: 0; }
figcaption { font-size: 0.8em; color: #555; } .note { color: #a50; font-size: 0.9em; }
img { max-width: 100%; }
"""


# ------------------------------------------------------------------------------------------------------------
# Prediction from unlabelled text (OUT/prediction, written by `xlgm predict`)
# ------------------------------------------------------------------------------------------------------------


@dataclass
class PredictionSection:
    summary: dict
    errors: pd.DataFrame  # per language: actual, predicted, the errors of the predictor and both baselines
    figure: Figure


def prediction_section(folder: Path) -> PredictionSection | None:
    """Predicted vs actual accuracy per language (leave-one-language-out), if `xlgm predict` has run."""
    cv_path, summary_path = folder / "prediction" / "cv.csv", folder / "prediction" / "summary.json"
    if not (cv_path.is_file() and summary_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text())
    cv = pd.read_csv(cv_path)
    cv = cv[cv["scheme"] == "leave-one-language-out"]
    if cv.empty:
        return None
    errors = (cv.groupby("language", sort=False)
              .agg(actual=("accuracy", "mean"), predicted=("predicted", "mean"), mae=("error", "mean"),
                   mae_same_as_source=("error_source", "mean"), mae_other_languages=("error_other_languages", "mean"),
                   rows=("error", "size")).reset_index())
    fig = _figure(5.2, 4.2)
    ax = fig.add_subplot()
    for lang, rows in cv.groupby("language", sort=False):
        ax.scatter(rows["accuracy"], rows["predicted"], s=16, alpha=0.8, label=lang)
    lo = float(min(cv["accuracy"].min(), cv["predicted"].min())) - 0.02
    hi = float(max(cv["accuracy"].max(), cv["predicted"].max())) + 0.02
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    mae = summary["schemes"]["leave-one-language-out"]["mae"]
    ax.set_title(f"Leave-one-language-out: MAE {mae['predicted']:.3f} (same as source {mae['same_as_source']:.3f})",
                 fontsize=9)
    ax.set_xlabel("actual accuracy")
    ax.set_ylabel("predicted from unlabelled text")
    ax.legend(fontsize=6, ncol=2)
    return PredictionSection(summary, errors, Figure("prediction", "Predicted vs actual accuracy", _png(fig)))


def _prediction_html(section: PredictionSection, img) -> tuple[list[str], pd.DataFrame]:
    s = section.summary
    rows = []
    for scheme, r in s["schemes"].items():
        if "skipped" in r:
            rows.append((scheme, "", "", "", "", "", r["skipped"]))
        else:
            m = r["mae"]
            rows.append((scheme, m["predicted"], m.get("predicted_source_anchor", float("nan")),
                         m["same_as_source"], m["other_languages"], r["ratio_to_same_as_source"], m["rows"]))
    table = pd.DataFrame(rows, columns=["scheme", "MAE", "MAE source anchor only", "MAE same as source",
                                        "MAE other languages", "ratio", "rows"])
    intro = ("Accuracy per (checkpoint, language) predicted from unlabelled target text: a ridge regression on "
             f"label-free measures ({', '.join(s['features'])}) of the gap to the source accuracy, plus the "
             "checkpoint's offset estimated from its other labelled languages where the scheme leaves any "
             "(leave-one-run-out leaves none: the source alone anchors). Each language's predictions come from "
             "a model fitted and anchored without that language's rows. 'Source anchor only' is the same "
             "model without the offsets; ratio = MAE / MAE same as source.")
    return [f"<p>{html.escape(intro)}</p>", _html_table(table, "prediction"), img(section.figure),
            _html_table(section.errors, "prediction-errors")], table


def build_report(data: StudyData, tables: dict[str, pd.DataFrame],
                 prediction: PredictionSection | None = None) -> tuple[str, str, list[Figure]]:
    """(html, markdown, figures) of a study."""
    spec = data.spec
    corr = tables["correlations"]
    per_run = _per_run(data)
    labels = run_labels(data, data.runs)
    rows = unit_frame(data)
    figures = [accuracy_heatmap(data, per_run, labels)]
    scatters = [measure_scatter(data, rows, m, corr) for m in data.measures]
    tau = tau_heatmap(data, corr)
    curves = training_curves(data, labels)
    figures += scatters + [tau, curves]
    runs_table = run_table(data, per_run)
    top = tables["top"]
    unit = spec.analysis.unit + (f", {spec.analysis.run_reduce} checkpoint of each run" if spec.analysis.unit == "run"
                                 else "")
    facts = [("study", f"{spec.name} ({spec.study_id})"), ("task", spec.task), ("model", spec.model),
             ("source language", spec.source_language), ("target languages", " ".join(spec.target_languages)),
             ("runs", str(per_run["run_id"].nunique())), ("checkpoints", str(len(data.frame))),
             ("unit of correlation", unit), ("axes", ", ".join(data.axes) or "(none)"),
             ("units done", f"{data.units_done} of {data.units_total}"),
             ("generated", time.strftime("%Y-%m-%d %H:%M:%S"))]

    def img(fig: Figure) -> str:
        data64 = base64.b64encode(fig.png).decode("ascii")
        return (f'<figure>{PNG_PREFIX}{data64}" alt="{html.escape(fig.title)}">'
                f"<figcaption>{html.escape(fig.title)}</figcaption></figure>")

    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in data.notes)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>xlgm study {html.escape(spec.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Study {html.escape(spec.name)}</h1>", notes,
             _html_table(pd.DataFrame(facts, columns=["", ""]), "facts"),
             "<h2>Accuracy per run and language</h2>", img(figures[0]),
             "<h2>Runs</h2>", _html_table(runs_table, "runs"),
             "<h2>Measures vs mean target accuracy</h2>", '<div class="figs">', *[img(f) for f in scatters], "</div>",
             "<h2>Correlation with each language</h2>", img(tau),
             "<h2>Strongest correlations</h2>", _html_table(top, "top"),
             "<h2>Training curves</h2>", img(curves)]
    md_prediction: list[str] = []
    if prediction is not None:
        figures.append(prediction.figure)
        html_parts, table = _prediction_html(prediction, img)
        parts += ["<h2>Predicted accuracy from unlabelled text</h2>", *html_parts]
        md_prediction = ["## Predicted accuracy from unlabelled text", "", _md_table(table), "",
                         f"![{prediction.figure.title}](figures/{prediction.figure.key}.png)", "",
                         _md_table(prediction.errors), ""]
    parts.append("</body></html>")
    md = [f"# Study {spec.name}", ""] + [f"> {n}" for n in data.notes] + [""]
    md += [_md_table(pd.DataFrame(facts, columns=["", ""])), "",
           "## Accuracy per run and language", "", f"![{figures[0].title}](figures/{figures[0].key}.png)", "",
           "## Runs", "", _md_table(runs_table), "", "## Measures vs mean target accuracy", ""]
    md += [f"![{f.title}](figures/{f.key}.png)" for f in scatters]
    md += ["", "## Correlation with each language", "", f"![{tau.title}](figures/{tau.key}.png)", "",
           "## Strongest correlations", "", _md_table(top), "", "## Training curves", "",
           f"![{curves.title}](figures/{curves.key}.png)", ""] + md_prediction
    return "\n".join(parts), "\n".join(md), figures


def report_study(target: str | Path, out: str | Path | None = None, echo: bool = True) -> Path:
    """Analyse (writing OUT/analysis/ too) and write OUT/report/report.html and report.md; returns the HTML path."""
    spec, folder = resolve_study(target, out)
    data = load_study(spec, folder)
    tables = analysis_tables(data)
    write_tables(data, tables)
    page, markdown, figures = build_report(data, tables, prediction_section(folder))
    report_dir = folder / "report"
    (report_dir / "figures").mkdir(parents=True, exist_ok=True)
    for fig in figures:
        (report_dir / "figures" / f"{fig.key}.png").write_bytes(fig.png)
    (report_dir / "report.html").write_text(page, encoding="utf-8")
    (report_dir / "report.md").write_text(markdown, encoding="utf-8")
    if echo:
        print(f"report: {report_dir / 'report.html'} ({len(figures)} figures); markdown: {report_dir / 'report.md'}")
    return report_dir / "report.html"
