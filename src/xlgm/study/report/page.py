"""The report page: a writer that puts each section into HTML and markdown together, `build_report` (the
sections in order) and `report_study` (analyse, build, write OUT/report/)."""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from xlgm.analysis.report_table import top_correlations
from xlgm.core.files import write_text
from xlgm.study.analyze import StudyData, analysis_tables, load_study, resolve_study, unit_frame, write_tables
from xlgm.study.report.figures import (
    Figure,
    accuracy_heatmap,
    accuracy_intervals,
    measure_scatter,
    tau_heatmap,
    training_curves,
)
from xlgm.study.report.format import fmt, heading_case
from xlgm.study.report.inputs import (
    AnalysisFiles,
    StudyRecords,
    chance_level,
    evaluation_rows_text,
    load_analysis_files,
    metric_name,
    one_checkpoint_per_run,
    read_study_records,
    target_eval_rows,
    task_num_labels,
)
from xlgm.study.report.machines import write_mixed_machines
from xlgm.study.report.prediction import PredictionSection, prediction_section, prediction_tables
from xlgm.study.report.sensitivity import sensitivity_display_table, sensitivity_figure, stability_display_table
from xlgm.study.report.settings import settings_from_study, settings_sections
from xlgm.study.report.tables import (
    accuracy_table,
    chance_check,
    cmi_detail,
    correlation_detail,
    describe_once_a_run,
    exclusions,
    granulated_detail,
    health_table,
    once_a_run,
    run_labels,
    run_table,
    with_correlation_columns,
)
from xlgm.study.report.transfer import (
    VERDICT_TEXT_COLUMNS,
    VERDICT_WRAP_COLUMNS,
    between_only,
    fit_display_table,
    fit_sentence,
    language_display_table,
    language_heatmap,
    level_display_table,
    verdict_display_table,
    verdict_family,
    verdict_summary,
)

PNG_PREFIX = '<img src="data:image/png;base64,'


def _html_table(
    table: pd.DataFrame, css: str = "", text_columns: tuple[str, ...] = (), wrap_columns: tuple[str, ...] = ()
) -> str:
    """A table with one header row (the columns, each named) and no index; every cell escaped. `text_columns`
    leave the header row and go on a line of their own under each row, spanning the table, as `name: text`.
    The cells of `wrap_columns` (words, not numbers) may wrap where the table's CSS keeps the others on one line.
    The table scrolls inside its own box when it is wider than the page."""
    if isinstance(table.columns, pd.MultiIndex):
        raise ValueError("_html_table: flatten the columns first")
    text_columns = tuple(c for c in text_columns if c in table.columns)
    shown = table.drop(columns=list(text_columns))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    opening = ['<td class="words">' if c in wrap_columns else "<td>" for c in shown.columns]
    rows = []
    for (_, row), values in zip(table.iterrows(), shown.itertuples(index=False)):
        rows.append("<tr>" + "".join(f"{td}{html.escape(fmt(v))}</td>" for td, v in zip(opening, values)) + "</tr>\n")
        texts = [(c, fmt(row[c])) for c in text_columns if fmt(row[c]).strip()]
        if texts:
            told = " · ".join(f'<span class="key">{html.escape(c)}:</span> {html.escape(v)}' for c, v in texts)
            rows.append(f'<tr class="text"><td colspan="{len(shown.columns)}">{told}</td></tr>\n')
    return (
        f'<div class="scroll"><table class="{html.escape(css)}"><thead><tr>{head}</tr></thead><tbody>\n'
        f"{''.join(rows)}</tbody></table></div>"
    )


def _html_facts(facts: list[tuple[str, str]], css: str = "facts") -> str:
    """A key-value table: each row headed by its key, no header row."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>\n" for k, v in facts)
    return f'<div class="scroll"><table class="{html.escape(css)}"><tbody>\n{body}</tbody></table></div>'


def _html_image(fig: Figure) -> str:
    """A figure embedded as a base64 PNG, with its caption."""
    data64 = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure>{PNG_PREFIX}{data64}" alt="{html.escape(fig.title)}">'
        f"<figcaption>{html.escape(fig.title)}</figcaption></figure>"
    )


def _md_text(text: Any) -> str:
    """A user string as markdown text: HTML escaped, on one line."""
    return html.escape(" ".join(str(text).split()), quote=False)


def _md_table(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return _md_text(fmt(v)).replace("|", "\\|")

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
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1.5em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; } p { max-width: 120ch; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.facts th { text-align: left; }
table.verdict td, table.runs td, table.accuracy td { white-space: nowrap; }
table.verdict td.words { white-space: normal; min-width: 7em; text-align: left; }
table.verdict tr.text td { white-space: normal; text-align: left; color: #444; border-top: none; padding-bottom: 6px; }
table.verdict tr:not(.text) td { border-bottom: none; }
.key { font-weight: 600; color: #222; }
.summary { font-weight: 600; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } .figs figure { margin: 0; }
figcaption { font-size: 0.8em; color: #555; } .note { color: #a50; font-size: 0.9em; }
.warning { border: 2px solid #c33; background: #fdecea; padding: 0.6em 1em; margin: 1em 0; font-weight: 600; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.8em; overflow-x: auto; }
figure { margin: 0.5em 0; max-width: 100%; } img { max-width: 100%; }
"""


class Page:
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

    def summary(self, text: str) -> None:
        """A line in bold: what a section comes to."""
        self.html.append(f'<p class="summary">{html.escape(text)}</p>')
        self.md += [f"**{_md_text(text)}**", ""]

    def table(
        self,
        table: pd.DataFrame,
        css: str,
        details: str | None = None,
        text_columns: tuple[str, ...] = (),
        wrap_columns: tuple[str, ...] = (),
    ) -> None:
        """The table in both files; `text_columns` go under each row in HTML (`_html_table`), in the table in
        markdown."""
        block = _html_table(table, css, text_columns, wrap_columns)
        if details:
            block = f"<details><summary>{html.escape(details)}</summary>{block}</details>"
        self.html.append(block)
        self.md += [_md_table(table), ""]

    def facts(self, facts: list[tuple[str, str]]) -> None:
        self.html.append(_html_facts(facts))
        self.md += [_md_table(pd.DataFrame(facts, columns=["item", "value"])), ""]

    def figures(self, figures: list[Figure]) -> None:
        if len(figures) > 1:
            self.html += ['<div class="figs">', *[_html_image(f) for f in figures], "</div>"]
        else:
            self.html += [_html_image(f) for f in figures]
        self.md += [_md_image(f) for f in figures] + [""]

    def preformatted(self, text: str, summary: str) -> None:
        escaped = html.escape(text)
        self.html.append(f"<details><summary>{html.escape(summary)}</summary><pre>{escaped}</pre></details>")
        # an HTML block in markdown: shown preformatted, its entities decoded for display, nothing raw
        self.md += [f"{_md_text(summary)}:", "", f"<pre>{escaped}</pre>", ""]

    def document(self, title: str) -> str:
        """The HTML page: head with the title and style sheet, then the sections."""
        head = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>"
        )
        return "\n".join([head, *self.html, "</body></html>"])


RECONCILE = (
    "How the three criteria differ: Kendall τ ranks all units together; granulated Ψ averages τ within "
    "groups of units that differ in one hyperparameter only; CMI K (Jiang et al. 2020) is the smallest "
    "conditional mutual information between the measure's and the accuracy's pair orderings over the "
    "conditioning sets of hyperparameters. A measure can rank units well (high |τ|) yet have K near 0: "
    "its ranking then follows the hyperparameters it was conditioned on, not generalization within them."
)


@dataclass
class ReportInputs:
    """What every section of the report reads, gathered once."""

    data: StudyData
    tables: dict[str, pd.DataFrame]  # analysis_tables of the study
    analysis: AnalysisFiles
    records: StudyRecords
    corr: pd.DataFrame  # correlations.csv of the analysis, else the correlation table just computed
    excluded: dict[str, str]  # measure -> why it is kept out of the findings
    per_run: pd.DataFrame  # one checkpoint per run
    labels: dict[str, str]  # run_id -> short label
    rows: pd.DataFrame  # the units of correlation


@dataclass
class ReportFigures:
    heatmap: Figure
    intervals: Figure | None  # None when the number of evaluated rows is unknown
    scatters: list[Figure]
    tau: Figure
    curves: Figure
    languages: Figure | None = None  # per target language: tau with accuracy and with residual
    sensitivity: Figure | None = None  # tau against each swept setting of the measures

    def accuracy(self) -> list[Figure]:
        return [self.heatmap] + ([self.intervals] if self.intervals else [])

    def all(self) -> list[Figure]:
        return (
            ([self.languages] if self.languages else [])
            + self.accuracy()
            + self.scatters
            + [self.tau]
            + ([self.sensitivity] if self.sensitivity else [])
            + [self.curves]
        )


def gather_inputs(
    data: StudyData, tables: dict[str, pd.DataFrame], analysis: AnalysisFiles, records: StudyRecords
) -> ReportInputs:
    corr = analysis.correlations if analysis.correlations is not None else tables["correlations"]
    corr = describe_once_a_run(corr, once_a_run(data))
    return ReportInputs(
        data,
        tables,
        analysis,
        records,
        corr,
        exclusions(analysis),
        one_checkpoint_per_run(data),
        run_labels(data, data.runs),
        unit_frame(data),
    )


def draw_figures(inputs: ReportInputs) -> ReportFigures:
    data, records = inputs.data, inputs.records
    target_rows = target_eval_rows(data, records)
    verdict = inputs.analysis.verdict
    return ReportFigures(
        heatmap=accuracy_heatmap(data, inputs.per_run, inputs.labels),
        intervals=accuracy_intervals(data, inputs.per_run, inputs.labels, records) if records.eval_rows else None,
        scatters=[
            measure_scatter(data, inputs.rows, m, inputs.corr, verdict, inputs.excluded.get(m), target_rows)
            for m in data.measures
        ],
        tau=tau_heatmap(data, inputs.corr, inputs.excluded),
        curves=training_curves(data, inputs.labels),
        languages=(
            language_heatmap(inputs.tables["languages"], data.measures, inputs.excluded)
            if not inputs.tables.get("languages", pd.DataFrame()).empty
            else None
        ),
        sensitivity=sensitivity_figure(inputs.tables.get("sensitivity", pd.DataFrame())),
    )


def study_facts(inputs: ReportInputs) -> list[tuple[str, str]]:
    """The 'About this study' rows."""
    data, spec = inputs.data, inputs.data.spec
    unit = spec.analysis.unit + (
        f", {spec.analysis.run_reduce} checkpoint of each run" if spec.analysis.unit == "run" else ""
    )
    eval_rows = inputs.records.eval_rows
    return [
        ("study", f"{spec.name} ({spec.study_id})"),
        ("task", spec.task),
        ("evaluation metric", f"{metric_name(data)} on {spec.evaluation.split}"),
        ("model", spec.model),
        ("source language", spec.source_language),
        ("target languages", " ".join(spec.target_languages)),
        ("runs", str(inputs.per_run["run_id"].nunique())),
        ("checkpoints", str(len(data.frame))),
        ("unit of correlation", unit),
        ("axes", ", ".join(data.axes) or "(none)"),
        ("units done", f"{data.units_done} of {data.units_total}"),
        (f"chance {metric_name(data)}", chance_level(data)[1]),
        ("evaluation rows a language", evaluation_rows_text(data, eval_rows)),
        ("generated", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]


def write_title(page: Page, inputs: ReportInputs) -> None:
    """The title, and a warning when the models did not leave chance."""
    data = inputs.data
    page.heading(f"Study {data.spec.name}", 1)
    metric = metric_name(data)
    if metric != "accuracy":
        page.paragraph(
            f"This study's evaluation metric is {metric}: every accuracy in this report (per language, mean "
            f"target, source, and the residuals made of them) is the {metric} of the task."
        )
    check = chance_check(data, inputs.rows, inputs.records)
    if check is not None and check.warn:
        page.warning(check.message(data.spec.source_language))


VERDICT_INTRO = (
    "Does each measure predict transfer beyond the fit? A better-fitted model is better in every language, so a "
    "measure that only tracks the fit correlates with target accuracy (and with the transfer gap, whenever "
    "target accuracy rises more slowly than source accuracy) without saying anything about transfer. Each "
    "measure gets three answers, one per column group: Kendall τ with the transfer residual (beyond fit: the "
    "part of mean target accuracy that source accuracy does not predict), with the mean target accuracy, and "
    "with the source accuracy (the fit); each with its 95% run-level bootstrap interval and its p-value from "
    "permuting whole runs (a measure taken once a run: a plain permutation of its run values), Holm-adjusted "
    "(see below). An answer is decided when the adjusted p ≤ 0.05 and the interval excludes 0. "
    "Finding: 'predicts transfer beyond fit' when the residual answer is decided; 'tracks fit; does not predict "
    "transfer beyond fit' when only the fit is; excluded when the measure is unhealthy. Level: 'within "
    "configurations' when seeds of the same hyperparameters, permuted only among themselves, show it too; "
    "'between configurations only' when they do not."
)


def write_verdict(page: Page, inputs: ReportInputs, figures: ReportFigures) -> None:
    """A line that counts the findings, the verdict table, what it shows and which tests its p-values adjust over,
    then the residual's line, the levels and the answers per target language."""
    verdict = inputs.analysis.verdict
    page.heading("Verdict: does it predict transfer beyond the fit?")
    if verdict is None or verdict.empty:
        page.paragraph(
            "Verdict not computed: OUT/analysis/verdict.csv was not written by this analysis. The tables "
            "below are not corrected for multiple testing and do not check measure health.",
            "note",
        )
        return
    page.summary(verdict_summary(verdict))
    page.table(
        verdict_display_table(verdict), "verdict", text_columns=VERDICT_TEXT_COLUMNS, wrap_columns=VERDICT_WRAP_COLUMNS
    )
    page.paragraph(VERDICT_INTRO + " " + verdict_family(verdict))
    once = [m for m in once_a_run(inputs.data) if m in set(verdict["measure"].astype(str))]
    if once:
        page.paragraph(
            f"Taken once a run, at each run's best checkpoint: {', '.join(once)}. Their τ rests on one checkpoint "
            "per run; the others' on every measured checkpoint.",
            "note",
        )
    absent = [m for m in inputs.data.measures if m not in set(verdict["measure"].astype(str))]
    if absent:
        page.paragraph(f"Not in the verdict: {', '.join(absent)}.", "note")
    rests = between_only(verdict)
    if rests:
        page.paragraph(
            "These decided answers rest on differences between configurations only (seeds of one configuration "
            f"do not show them): {', '.join(rests)}.",
            "note",
        )
    source = inputs.data.spec.source_language
    page.heading("The fit and the residual", 3)
    fit = inputs.tables.get("fit")
    page.paragraph(fit_sentence(fit, source))
    if fit is not None and not fit.empty:
        page.table(fit_display_table(fit), "fit", details="the fit per target")
    page.heading("Levels: within and between configurations", 3)
    page.paragraph(
        "p within: seeds of one configuration permuted among themselves, Holm-adjusted over the verdict's rows (a "
        "family of its own); p between: the configurations' means, unadjusted, one test per row (with C "
        "configurations it cannot go below 2/C!)."
    )
    page.table(level_display_table(verdict), "levels")
    languages = inputs.tables.get("languages")
    if languages is not None and not languages.empty and figures.languages is not None:
        page.heading("Per target language", 3)
        page.paragraph(
            "Kendall τ of each measure with each target language's accuracy and with its transfer residual "
            "(that language's accuracy less its own line on source accuracy), p from permuting runs, Holm-adjusted "
            "over every measure x language of the same kind (accuracy, residual)."
        )
        page.figures([figures.languages])
        page.table(language_display_table(languages), "languages", details="τ per language")


def write_accuracy_and_runs(page: Page, inputs: ReportInputs, figures: ReportFigures) -> None:
    data, records = inputs.data, inputs.records
    metric = metric_name(data)
    page.heading(f"{heading_case(metric)} per run and language")
    if records.eval_rows:
        page.paragraph(
            "Accuracies carry 95% Wilson intervals from the number of evaluated rows; a mean target "
            "accuracy's interval uses one language's rows (the target sets are translations of the same "
            "rows, so their errors are not independent). The dashed line is chance."
        )
    elif metric != "accuracy":
        page.paragraph(
            f"No intervals: {metric} is over words or entities, not the evaluated sentences the study counts; "
            "`xlgm evaluate` gives a checkpoint's intervals.",
            "note",
        )
    else:
        page.paragraph("Accuracy intervals not computed: the number of evaluated rows is unknown.", "note")
    page.figures(figures.accuracy())
    page.table(accuracy_table(data, inputs.per_run, inputs.labels, records), "accuracy", details="accuracy table")

    page.heading("Runs")
    page.table(run_table(data, inputs.per_run, records), "runs")


def write_measure_figures(page: Page, inputs: ReportInputs, figures: ReportFigures) -> None:
    page.heading("Measures vs mean target accuracy")
    if inputs.excluded:
        page.paragraph(
            "Greyed: measures excluded from the findings ("
            + "; ".join(f"{m}: {why}" for m, why in inputs.excluded.items())
            + ").",
            "note",
        )
    page.figures(figures.scatters)

    page.heading("Correlation with each language")
    page.figures([figures.tau])
    if figures.sensitivity is not None:
        write_sensitivity(page, inputs, figures.sensitivity)


def write_sensitivity(page: Page, inputs: ReportInputs, figure: Figure) -> None:
    page.heading("Sensitivity to the measures' settings")
    page.paragraph(
        "The spec sweeps some measures' data size or options. The verdict above judges each measure once, at its "
        "first entry's largest data size; here every setting is judged as a measure of its own, with Holm over all "
        "the settings' tests (a larger family than the verdict's, so larger adjusted p-values for the same test). "
        "τ with its run-level interval at each setting, against the transfer residual and the mean target "
        "accuracy. seed_share and draw_share: the spread of a setting's run values across the seeds of a "
        "configuration, and over the measure's own random draws, as shares of its spread over all runs "
        "(analysis/sensitivity.csv)."
    )
    page.figures([figure])
    page.table(sensitivity_display_table(inputs.tables["sensitivity"]), "sensitivity", details="τ at each setting")
    stability = inputs.tables.get("stability", pd.DataFrame())
    if not stability.empty:
        page.paragraph(
            "Does each answer hold at every setting? 'holds': the same verdict at every setting of the measure; "
            "'flips': not (analysis/stability.csv)."
        )
        page.table(stability_display_table(stability), "stability")


def write_correlations(page: Page, inputs: ReportInputs) -> None:
    """The correlations with the mean targets, the strongest correlations, granulated Ψ and CMI K."""
    corr, tables = inputs.corr, inputs.tables
    page.heading("Correlations with the mean targets")
    adjusted = "p_holm" in corr.columns
    if not adjusted:
        page.paragraph(
            "Adjusted p-values not computed (no p_holm/p_bh in OUT/analysis/correlations.csv): the "
            "p-values below are raw, one per test, uncorrected for the number of tests.",
            "note",
        )
    else:
        tests = int(pd.to_numeric(corr["tau_p"], errors="coerce").notna().sum())
        page.paragraph(
            f"Holm and BH adjust over all {tests} tests of the correlation table (every measure against each "
            "language's accuracy and gap and the two means, OUT/analysis/correlations.csv), not only the rows "
            "shown: a larger family than the verdict's, so larger adjusted p-values for the same test."
        )
    page.table(correlation_detail(corr), "correlations")

    page.heading("Strongest correlations")
    top = top_correlations(corr, inputs.data.spec.analysis.top)
    page.paragraph(
        f"The {len(top)} largest |τ| of {len(corr)} tests (measure x target). "
        + (
            "✓ marks a test whose adjusted p-value stays below 0.05 (Holm: family-wise; BH: false discovery rate; "
            "both over every test of the correlation table, as above)."
            if adjusted
            else "Uncorrected: with this many tests, some of the largest |τ| are expected by chance."
        )
    )
    page.table(correlation_detail(with_correlation_columns(top, corr), targets=()), "top")

    page.heading("Granulated Kendall Ψ and CMI K")
    page.paragraph(RECONCILE)
    psi = granulated_detail(describe_once_a_run(tables.get("granulated"), once_a_run(inputs.data)))
    if psi.empty:
        page.paragraph("Granulated Ψ not computed (no hyperparameter axis varies).", "note")
    else:
        page.table(psi, "granulated")
    cmi = cmi_detail(tables.get("cmi"))
    if cmi.empty:
        page.paragraph("CMI K not computed (no hyperparameter axis varies).", "note")
    else:
        page.table(cmi, "cmi")


def write_groups(page: Page, inputs: ReportInputs) -> None:
    groups = inputs.tables.get("groups")
    if groups is None or groups.empty:
        return
    page.heading("Groups of seeds")
    page.paragraph(
        "Measures of a group of runs that differ only in their seed, at each run's best checkpoint, beside "
        "the group's mean accuracy; Kendall τ over the groups with its exact p-value. With one group per "
        "configuration there are few points: a finding needs at least 4 groups and p < 0.05."
    )
    shown = groups.drop(columns=["group_id", "run_ids"]).rename(
        columns={"mean_target": "mean target acc", "source_accuracy": f"{inputs.data.spec.source_language} acc"}
    )
    page.table(shown, "groups")
    page.table(inputs.tables["group_correlations"], "group-correlations")


def write_health_and_curves(page: Page, inputs: ReportInputs, figures: ReportFigures) -> None:
    page.heading("Measure health")
    if inputs.analysis.health is not None:
        page.table(health_table(inputs.analysis.health), "health")
    else:
        page.paragraph("Measure health not computed: OUT/analysis/health.csv was not written by this analysis.", "note")

    labels = task_num_labels(inputs.data)
    page.heading("Training curves")
    page.paragraph(
        f"The dashed line is the loss of a uniform prediction, ln {labels} = "
        f"{math.log(labels):.3f}: a loss near it means the model barely left chance."
    )
    page.figures([figures.curves])


def write_settings(page: Page, inputs: ReportInputs) -> None:
    page.heading("Settings")
    if inputs.analysis.settings is not None:
        settings = inputs.analysis.settings
    else:
        page.paragraph(
            "OUT/analysis/settings.json not found: the settings below are rebuilt from the study's "
            "spec, its runs' recorded configs and study.sqlite.",
            "note",
        )
        settings = settings_from_study(inputs.data, inputs.records)
    spec_text, sections = settings_sections(settings)
    if spec_text is not None:
        page.preformatted(spec_text, "spec")
    for title, table in sections:
        page.heading(title, 3)
        page.table(table, "settings")


def write_prediction(page: Page, prediction: PredictionSection) -> None:
    intro, table = prediction_tables(prediction)
    page.heading("Predicted accuracy from unlabelled text")
    page.paragraph(intro)
    page.table(table, "prediction")
    page.figures([prediction.figure])
    page.table(prediction.errors, "prediction-errors")


def build_report(
    data: StudyData,
    tables: dict[str, pd.DataFrame],
    prediction: PredictionSection | None = None,
    analysis: AnalysisFiles | None = None,
    records: StudyRecords | None = None,
) -> tuple[str, str, list[Figure]]:
    """(html, markdown, figures) of a study: its sections in the order of the package docstring."""
    inputs = gather_inputs(data, tables, analysis or AnalysisFiles(), records or StudyRecords())
    figures = draw_figures(inputs)
    page = Page()
    write_title(page, inputs)
    write_verdict(page, inputs, figures)
    write_mixed_machines(page, data)  # in the verdict section: its numbers may come from more than one machine
    page.heading("About this study")
    page.facts(study_facts(inputs))
    for note in data.notes:
        page.paragraph(note, "note")
    write_accuracy_and_runs(page, inputs, figures)
    write_measure_figures(page, inputs, figures)
    write_correlations(page, inputs)
    write_groups(page, inputs)
    write_health_and_curves(page, inputs, figures)
    write_settings(page, inputs)
    drawn = figures.all()
    if prediction is not None:
        drawn.append(prediction.figure)
        write_prediction(page, prediction)
    return page.document(f"xlgm study {data.spec.name}"), "\n".join(page.md), drawn


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
