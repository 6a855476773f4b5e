"""`xlgm study report SPEC_OR_DIR`: one self-contained HTML file and a markdown file about a study.

    OUT/report/report.html     figures embedded as base64 PNG, no outside files
    OUT/report/report.md       the same content; its figures are OUT/report/figures/*.png

Contents, in order: a warning when the models did not leave chance; the verdict, which asks first whether a measure
predicts transfer beyond the fit (a line counting the measures that predict transfer beyond the fit, track the fit
only, are inconclusive or excluded; then one row per measure: its finding and Kendall tau with the transfer
residual, the mean target accuracy and the source accuracy, each with its confidence interval, Holm-adjusted p and
the level it rests on, the direction the literature expects, and under it the reference, the measure's health and
the reason), read from OUT/analysis/verdict.csv, with the fit behind the residual (fit.csv), the tests within and
between configurations and each target language's tau for accuracy and residual (languages.csv: table and heatmap),
and a warning naming the units when one stage's units come from more than one kind of machine; the study's facts;
accuracies with 95% Wilson intervals (heatmap, per-language plot with the chance level, table);
the per-run table; a scatter per measure against the mean target accuracy (unhealthy measures greyed, with the
reason); a measure x language tau heatmap; the detailed correlation table with raw and adjusted p-values, the
strongest correlations marking what survives correction, granulated Psi and CMI K; measure health
(OUT/analysis/health.csv); training curves with the loss of a uniform prediction; the settings
(OUT/analysis/settings.json, else rebuilt from the study's database and spec); and, when `xlgm predict` has run, the
label-free predictor against its baselines. A file of OUT/analysis/ that the analysis did not write leaves a "not
computed" note in its place. Every string from the user (spec name, measure options, labels) is escaped in both
files. Every table states which tests its adjusted p-values adjust over, scrolls in its own box when wider than the
page, and the figures' smallest text is 8 pt at the size the page shows them.

Where each part lives:

    page.py         the page writer (HTML and markdown together), `build_report` section by section, `report_study`
    transfer.py     the verdict section: three answers per measure, levels, the residual's line, per language
    tables.py       the tables: health, correlation details, runs, accuracies, chance check
    figures.py      the matplotlib figures
    prediction.py   the section on accuracy predicted from unlabelled text
    settings.py     the settings section
    machines.py     the warning and table of units computed on more than one kind of machine
    inputs.py       what the report reads: OUT/analysis/ files and the study database's records
    format.py       how numbers, p-values, intervals and target names are written
"""

from xlgm.study.report.figures import Figure, distinct_colours, scatter_title
from xlgm.study.report.inputs import AnalysisFiles, StudyRecords, load_analysis_files, read_study_records
from xlgm.study.report.page import PNG_PREFIX, build_report, report_study
from xlgm.study.report.prediction import PredictionSection, prediction_section
from xlgm.study.report.tables import chance_check, exclusions
from xlgm.study.report.transfer import verdict_display_table

__all__ = [
    "PNG_PREFIX",
    "AnalysisFiles",
    "Figure",
    "PredictionSection",
    "StudyRecords",
    "build_report",
    "chance_check",
    "distinct_colours",
    "exclusions",
    "load_analysis_files",
    "prediction_section",
    "read_study_records",
    "report_study",
    "scatter_title",
    "verdict_display_table",
]
