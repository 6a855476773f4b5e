"""`xlgm study analyze` and `xlgm study report` on the tiny study."""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from report_testlib import HEALTH_ROWS, SETTINGS, VERDICT_ROWS, parse_tables, table_dicts, write_analysis
from scipy.stats import binomtest
from study_testlib import CHECKPOINTS, RUNS

from xlgm.core.errors import XlgmError
from xlgm.study.analyze import analysis_tables, auto_axes, load_study, resolve_study, unit_frame
from xlgm.study.cli import main
from xlgm.study.report import (
    PNG_PREFIX,
    AnalysisFiles,
    StudyRecords,
    build_report,
    chance_check,
    distinct_colours,
    exclusions,
    load_analysis_files,
    read_study_records,
    scatter_title,
)
from xlgm.study.report.figures import run_styles, series_styles
from xlgm.study.report.transfer import verdict_summary

MEASURES = ["margin", "frobenius-distance"]


def test_analyze_writes_tables(tiny_study, capsys):
    assert main(["analyze", str(tiny_study)]) == 0
    out = capsys.readouterr().out
    assert "margin" in out and "tau" in out and "tables:" in out
    folder = tiny_study / "analysis"
    frame = pd.read_csv(folder / "frame.csv")
    assert len(frame) == RUNS * CHECKPOINTS
    assert {"acc_en", "acc_de", "mean_target", "gap_de", "mean_gap", *MEASURES} <= set(frame.columns)
    corr = pd.read_csv(folder / "correlations.csv")
    # every measure against acc_en, acc_de, mean_target, gap_de, mean_gap, resid_de, transfer_residual(_oof)
    assert len(corr) == len(MEASURES) * 8 and set(corr["measure"]) == set(MEASURES)
    assert {"tau", "tau_p", "tau_lo", "tau_hi", "spearman", "pearson_p"} <= set(corr.columns)
    residual = corr["target"].isin(["resid_de", "transfer_residual", "transfer_residual_oof"])
    assert (corr.loc[~residual, "n"] == RUNS * CHECKPOINTS).all()
    # the tiny study's English accuracy is the same everywhere: no line on it, so no residual
    assert (corr.loc[residual, "n"] == 0).all() and corr.loc[residual, "note"].str.contains("only 0").all()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["axes"] == ["objective"]  # rho only restates the objective in this grid
    assert summary["units_done"] == summary["units_total"]
    granulated = json.loads((folder / "granulated.json").read_text())
    assert {r["measure"] for r in granulated} == set(MEASURES) and "psi" in granulated[0]
    cmi = pd.read_csv(folder / "cmi.csv")
    assert list(cmi["measure"]) == MEASURES and "k" in cmi.columns
    assert len(pd.read_csv(folder / "top.csv")) == 10


def test_report_renders_every_figure(tiny_study, capsys):
    assert main(["report", str(tiny_study)]) == 0
    html = (tiny_study / "report" / "report.html").read_text()
    # per-language tau heatmap (accuracy and residual) + accuracy heatmap + accuracy intervals + one scatter per
    # measure + tau heatmap + training curves, all embedded
    assert html.count(PNG_PREFIX) == 1 + 2 + len(MEASURES) + 1 + 1
    assert 'src="http' not in html and "<link" not in html
    for measure in MEASURES:
        assert f"{measure} vs mean target accuracy" in html
    runs_table = html.split('<table class="runs">', 1)[1].split("</table>", 1)[0]
    assert runs_table.count("<tr>") == 1 + RUNS  # header + one row per run
    assert "adamw" in runs_table and "sam" in runs_table and "best held-out acc" in runs_table
    markdown = (tiny_study / "report" / "report.md").read_text()
    assert markdown.count("![") == 5 + len(MEASURES)
    for line in markdown.splitlines():
        if line.startswith("!["):
            assert (tiny_study / "report" / line.split("](", 1)[1].rstrip(")")).is_file()


def test_auto_axes_leave_out_what_another_axis_determines():
    nan = math.nan
    runs = pd.DataFrame(
        {
            "run_id": list("abcdefgh"),
            "objective": ["adamw"] * 2 + ["sam"] * 4 + ["fisher"] * 2,
            "seed": [0, 1] * 4,
            "rho": [nan, nan, 0.01, 0.01, 0.05, 0.05, nan, nan],
            "lam": [nan] * 6 + [0.1, 0.1],
            "lr": [2e-5] * 8,
        }
    )
    assert auto_axes(runs) == ["objective", "seed", "rho"]  # lam only restates fisher; lr does not vary
    assert auto_axes(runs[runs.objective != "sam"]) == ["objective", "seed"]


# ------------------------------------------------------------------------------------------------------------
# The report's content, from the tiny study and synthetic OUT/analysis files (report_testlib)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_parts(tiny_study):
    """(data, tables, records) of the tiny study, read once."""
    data = load_study(*resolve_study(tiny_study))
    return data, analysis_tables(data), read_study_records(data)


def render(study_parts, analysis_folder: Path | None = None, spec_name: str | None = None):
    data, tables, records = study_parts
    if spec_name is not None:
        data = dataclasses.replace(data, spec=dataclasses.replace(data.spec, name=spec_name), notes=list(data.notes))
    analysis = load_analysis_files(analysis_folder) if analysis_folder is not None else AnalysisFiles()
    page, markdown, _ = build_report(data, tables, None, analysis, records)
    return page, markdown


def test_verdict_table_comes_first_and_matches_the_csv(study_parts, tmp_path):
    page, markdown = render(study_parts, write_analysis(tmp_path))
    parsed = parse_tables(page)
    assert parsed.headings[0] == "Verdict: does it predict transfer beyond the fit?"
    assert parsed.order[1] == "table:verdict" and parsed.tables[0][0] == "verdict"  # the first table of the page
    rows = table_dicts(parsed.tables[0][1])
    assert [r["measure"] for r in rows] == ["margin", "frobenius-distance"]  # verdict.csv's order, one per measure
    margin, frobenius = rows
    assert margin == {
        "measure": "margin",
        "finding": "tracks fit; does not predict transfer beyond fit",
        "τ beyond fit [95% CI]": "-0.20 [-0.61, +0.33]",
        "p Holm (beyond fit)": "1.000",
        "level (beyond fit)": "",
        "τ target acc [95% CI]": "+0.58 [+0.14, +0.90]",
        "p Holm (target acc)": "0.009",
        "level (target acc)": "between configurations only",
        "τ source acc (fit) [95% CI]": "+0.61 [+0.20, +0.90]",
        "p Holm (source acc (fit))": "0.009",
        "expected": "+ (higher: better transfer)",
        "reference": "Bassi et al. 2024",
        "runs / checkpoints": "2 / 4",
        "health": "healthy",
        "reason": "beyond fit: CI spans 0",
    }
    assert frobenius["τ target acc [95% CI]"] == "n/a" and frobenius["finding"] == "excluded"
    assert frobenius["τ beyond fit [95% CI]"] == "n/a" and frobenius["health"] == "constant across units"
    assert frobenius["expected"] == "− (higher: worse transfer)"
    # the answers resting on between-configuration differences only are named
    assert "rest on differences between configurations only" in page
    assert "margin (target acc), margin (source acc (fit))" in page
    levels = table_dicts(next(rows for css, rows in parsed.tables if css == "levels"))
    assert [r["measure"] for r in levels] == ["margin"] * 3  # the excluded measure has no levels
    assert levels[1]["level"] == "between configurations only" and levels[1]["τ within"] == "+0.10"
    # the residual's fit, its shape named, and the per-language tables of the analysis just computed
    assert "The transfer residual is the mean target accuracy less its least-squares fit" in page
    assert {"fit", "languages"} <= {css for css, _ in parsed.tables}
    fit_rows = table_dicts(next(rows for css, rows in parsed.tables if css == "fit"))
    shapes = {"1": "a straight line", "2": "a quadratic (degree 2)", "3": "a cubic (degree 3)"}
    assert f"here it is {shapes[fit_rows[0]['degree']]}, R²" in page and fit_rows[0]["target"] == "mean"
    assert "Kendall τ per target language" in page
    # markdown: the verdict table is the first table, before the study's facts
    lines = markdown.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("| "))
    assert lines[first_table].startswith("| measure | finding | τ beyond fit [95% CI]")
    assert first_table < lines.index("## About this study")
    assert lines[first_table + 2].startswith(
        "| margin | tracks fit; does not predict transfer beyond fit | -0.20 [-0.61, +0.33] | 1.000 |  | +0.58"
    )
    # the excluded measure is said to be greyed, health and CMI/Psi tables are there
    assert "Greyed: measures excluded from the findings (frobenius-distance: constant across units)" in page
    health = table_dicts(next(rows for css, rows in parsed.tables if css == "health"))
    assert [(h["measure"], h["healthy"], h["reason"]) for h in health] == [
        ("margin", "yes", ""),
        ("frobenius-distance", "no", "constant across units"),
    ]
    assert {"cmi", "granulated", "correlations", "top"} <= {css for css, _ in parsed.tables}


def test_missing_analysis_files_leave_not_computed_notes(study_parts, tiny_study):
    page, markdown = render(study_parts)
    # (adjusted p-values are part of the correlation table itself now, so they are never missing here)
    for text in ("Verdict not computed", "Measure health not computed", "settings.json not found"):
        assert text in page and text in markdown
    parsed = parse_tables(page)
    assert "verdict" not in {css for css, _ in parsed.tables} and "health" not in {css for css, _ in parsed.tables}
    # the settings rebuilt from the study: spec, measure options, rows, versions, wall time
    settings = {r["setting"]: r["value"] for css, rows in parsed.tables if css == "settings" for r in table_dicts(rows)}
    assert settings["eval rows en (test)"] == "8" and settings["eval rows de (test)"] == "8"
    assert settings["train rows"] == "29" and settings["held-out rows (checkpoint selection)"] == "3"
    assert settings["measure examples"] == "16 (en dev)" and settings["margin.seed"] == "0"
    assert settings["torch (training)"] and settings["scipy (report)"]
    assert settings["total"].endswith("min)")
    assert "name: tiny" in page and "max_examples: 8" in page  # the spec as YAML


def test_settings_json_is_rendered(study_parts, tmp_path):
    page, markdown = render(study_parts, write_analysis(tmp_path))
    assert "settings.json not found" not in page
    parsed = parse_tables(page)
    settings = {r["setting"]: r["value"] for css, rows in parsed.tables if css == "settings" for r in table_dicts(rows)}
    assert settings == {
        "margin": "(none)",
        "frobenius-distance.per_layer": "False",
        "train_rows": "29",
        "eval_rows.en": "8",
        "eval_rows.de": "8",
        "measure_examples": "16",
        "torch": "2.13.0",
        "transformers": "5.24.0",
        "training_seconds": "0.400",
        "evaluation_seconds": "0.100",
        "measure_seconds": "0.050",
    }
    for title in ("measures", "data sizes", "versions", "wall time"):
        assert f"<h3>{title}</h3>" in page and f"### {title}" in markdown
    assert "<pre>name: tiny\ntask: xnli" in page


def test_wilson_intervals_in_tables_equal_scipy(study_parts):
    data, _, records = study_parts
    assert records.eval_rows == {"en": 8, "de": 8}
    page, _ = render(study_parts)
    parsed = parse_tables(page)
    runs = table_dicts(next(rows for css, rows in parsed.tables if css == "runs"))
    accuracy = table_dicts(next(rows for css, rows in parsed.tables if css == "accuracy"))
    cells = [(r["en acc"], 8) for r in runs] + [(r["mean target acc"], 8) for r in runs]
    cells += [(r["best held-out acc"], 3) for r in runs] + [(r[lang], 8) for r in accuracy for lang in ("en", "de")]
    assert len(cells) == 5 * len(runs)
    for text, n in cells:
        value, interval = text.split(" [")
        low, high = (float(v) for v in interval.rstrip("]").split(", "))
        ci = binomtest(round(float(value) * n), n).proportion_ci(method="wilson")
        assert (low, high) == (round(ci.low, 2), round(ci.high, 2)), text


def test_chance_warning(study_parts):
    data, _, records = study_parts
    page, markdown = render(study_parts)
    # the tiny models sit at 3 of 8 rows: every unit's interval includes 1/3
    warning = page.split('<div class="warning">', 1)[1].split("</div>", 1)[0]
    assert "at 4 of 4 units" in warning and "training progress, not generalization" in warning
    assert page.index('<div class="warning">') < page.index(
        "<h2>Verdict: does it predict transfer beyond the fit?</h2>"
    )
    assert "> **Warning:** The models barely left chance" in markdown
    rows = unit_frame(data)
    trained = chance_check(data, rows.assign(acc_en=0.9, mean_target=0.8), StudyRecords({"en": 500, "de": 500}))
    assert (trained.near_source, trained.near_target, trained.units, trained.warn) == (0, 0, 4, False)
    # 0.40 on 100 rows: [0.31, 0.50] includes 1/3; 0.45: [0.36, 0.55] does not
    mixed = chance_check(
        data, rows.assign(acc_en=[0.40, 0.40, 0.40, 0.45], mean_target=0.45), StudyRecords({"en": 100, "de": 100})
    )
    assert (mixed.near_source, mixed.near_target, mixed.warn) == (3, 0, True)


SCRIPT = '<script>alert("x")</script>'


def test_every_user_string_is_escaped(study_parts, tmp_path):
    settings = dict(SETTINGS, measures={"margin": {"label": SCRIPT}})
    verdict = [dict(r) for r in VERDICT_ROWS]
    verdict[0]["reference"] = "<img src=x onerror=alert(1)>"
    health = [list(r) for r in HEALTH_ROWS]
    health[1][7] = "<b>constant</b> | across"
    page, markdown = render(study_parts, write_analysis(tmp_path, verdict, health, settings), spec_name=SCRIPT)
    for text in (page, markdown):
        assert "<script" not in text.lower() and "<img src=x" not in text and "<b>constant" not in text
        assert "&lt;script&gt;alert" in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert f"<h1>Study {html.escape(SCRIPT)}</h1>" in page
    assert f"<title>xlgm study {html.escape(SCRIPT)}</title>" in page
    assert markdown.startswith(f"# Study {html.escape(SCRIPT, quote=False)}\n")
    assert "&lt;b&gt;constant&lt;/b&gt; \\| across" in markdown  # a pipe in a cell does not split the row


def test_no_empty_header_rows(study_parts, tmp_path):
    for folder in (None, write_analysis(tmp_path)):
        page, markdown = render(study_parts, folder)
        parsed = parse_tables(page)
        assert parsed.tables
        for css, rows in parsed.tables:
            for row in rows:
                if row and all(tag == "th" for tag, _ in row):
                    assert all(text for _, text in row), (css, row)
        header_rows = [
            line
            for i, line in enumerate(markdown.splitlines()[:-1])
            if line.startswith("| ") and markdown.splitlines()[i + 1].startswith("|---")
        ]
        assert header_rows
        for line in header_rows:
            assert all(cell.strip() for cell in line.strip("|").split(" | ")), line


def test_scatter_titles_explain_exclusion_and_undefined_tau(study_parts, tmp_path):
    _, tables, _ = study_parts
    corr = tables["correlations"]
    analysis = load_analysis_files(write_analysis(tmp_path))
    assert exclusions(analysis) == {"frobenius-distance": "constant across units"}
    assert (
        scatter_title("frobenius-distance", corr, analysis.verdict, "constant across units")
        == "frobenius-distance: excluded (constant across units)"
    )
    assert scatter_title("margin", corr, analysis.verdict) == "margin: τ = +0.58 [+0.14, +0.90], p Holm = 0.009; agrees"
    # without a verdict: the tiny study's accuracies are all 3/8, so tau is undefined, and the title says why
    assert scatter_title("margin", corr) == "margin: τ undefined: the mean target accuracy is constant across units"


def test_colours_tell_fifteen_languages_apart():
    for n in (4, 15, 25):
        colours = distinct_colours(n)
        assert len(colours) == n and len(set(colours)) == n
        styles = series_styles(n)
        assert len({(s.colour, s.marker) for s in styles}) == n
    # the 11th to 20th colours are light twins of the first ten: they differ from their twin in marker and line style
    styles = series_styles(15)
    for i in range(5):
        assert styles[i].marker != styles[i + 10].marker and styles[i].linestyle != styles[i + 10].linestyle


def test_every_text_of_every_figure_is_at_least_8_pt(study_parts, tmp_path, monkeypatch):
    from matplotlib.text import Text

    from xlgm.study.report import figures, transfer

    drawn = []

    def keep(fig):
        drawn.append(fig)
        return real_png(fig)  # drawn: the tick labels exist

    real_png = figures.png_bytes
    monkeypatch.setattr(figures, "png_bytes", keep)
    monkeypatch.setattr(transfer, "png_bytes", keep)  # the verdict section's per-language heatmap
    render(study_parts, write_analysis(tmp_path))
    assert len(drawn) == 1 + 2 + len(MEASURES) + 1 + 1
    sizes = [t.get_fontsize() for fig in drawn for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert len(sizes) > 100 and min(sizes) >= 8


def fake_study(objectives: list[str], seeds: list[int]) -> SimpleNamespace:
    """What run_styles reads of a study: its runs (objective, seed) and their configs."""
    runs = pd.DataFrame([{"run_id": f"{o}-{s}", "objective": o, "seed": s} for o in objectives for s in seeds])
    return SimpleNamespace(runs=runs, configs={}, axes=["objective", "seed"])


def test_run_styles_colour_a_configuration_and_mark_its_seeds():
    data = fake_study(["adamw", "sam", "fisher", "mvr", "sam2"], [0, 1, 2])
    run_ids = list(reversed(data.runs["run_id"]))  # the styles follow the runs, not the order they come in
    styles = run_styles(data, run_ids)
    assert len({(s.colour, s.marker) for s in styles.values()}) == 15
    assert len({(s.colour, s.linestyle) for s in styles.values()}) == 15
    assert len({styles[f"{o}-0"].colour for o in ("adamw", "sam", "fisher", "mvr", "sam2")}) == 5
    assert {styles[f"sam-{s}"].colour for s in (0, 1, 2)} == {styles["sam-0"].colour}
    assert [styles[f"mvr-{s}"].linestyle for s in (0, 1, 2)] == ["-", "--", ":"]  # seed 0 solid, in every config
    # more seeds than line styles, or more configurations than colours: each run its own colour and marker
    for many in (fake_study(["adamw", "sam"], list(range(6))), fake_study([f"o{i}" for i in range(25)], [0])):
        styles = run_styles(many, list(many.runs["run_id"]))
        assert len({(s.colour, s.marker) for s in styles.values()}) == len(many.runs)


def test_verdict_summary_text_rows_and_adjustment_families(study_parts, tmp_path):
    _, tables, _ = study_parts
    page, markdown = render(study_parts, write_analysis(tmp_path))
    summary = "2 measures: 0 predict transfer beyond fit, 1 track fit only, 0 inconclusive, 1 excluded"
    heading = "<h2>Verdict: does it predict transfer beyond the fit?</h2>"
    assert f'{heading}\n<p class="summary">{summary}</p>' in page and f"**{summary}**" in markdown
    verdict = page.split('<table class="verdict">', 1)[1].split("</table>", 1)[0]
    header = verdict.split("</thead>", 1)[0]
    assert "reason" not in header and "reference" not in header  # the text columns are not squeezed into a column
    assert "finding" in header and "τ beyond fit [95% CI]" in header
    assert verdict.count('<tr class="text">') == 2 and verdict.count('colspan="10"') == 2
    assert '<span class="key">reason:</span> beyond fit: CI spans 0</td>' in verdict
    expected = '<tr class="text"><td colspan="10"><span class="key">expected:</span> + (higher: better transfer) · '
    assert expected in verdict  # the expected direction leads the line of text, with its reference
    # the finding and the levels are words that may wrap; the numbers keep one line
    assert '<td class="words">tracks fit; does not predict transfer beyond fit</td>' in verdict
    assert '<td class="words">between configurations only</td>' in verdict
    assert '<td class="words">+0.58' not in verdict and "<td>+0.58 [+0.14, +0.90]</td>" in verdict
    # each table of adjusted p-values names its family: the verdict's 3 rows with a p-value (margin's answers)
    assert html.escape("Holm adjusts over this table's 3 tests (every measure's three answers") in page
    assert "p within: seeds of one configuration permuted among themselves, Holm-adjusted over the verdict" in page
    assert "Holm-adjusted over every measure x language of the same kind" in page
    tests = int(tables["correlations"]["tau_p"].notna().sum())
    assert f"Holm and BH adjust over all {tests} tests of the correlation table" in page
    for text in ("Holm adjusts over this table's 3 tests", f"adjust over all {tests} tests"):
        assert text in markdown
    # every table scrolls in its own box
    assert page.count('<div class="scroll"><table') == page.count("<table")


def test_verdict_summary_counts_findings_one_per_measure():
    findings = {
        "a": "predicts transfer beyond fit (agrees with expected sign)",
        "b": "predicts transfer beyond fit (disagrees with expected sign)",
        "c": "tracks fit; does not predict transfer beyond fit",
        "d": "inconclusive",
        "e": "excluded",
    }
    # three rows a measure, one finding each
    verdict = pd.DataFrame([{"measure": m, "target": t, "finding": f} for m, f in findings.items() for t in "xyz"])
    assert verdict_summary(verdict) == (
        "5 measures: 2 predict transfer beyond fit (1 as expected, 1 against the expected sign), "
        "1 track fit only, 1 inconclusive, 1 excluded"
    )


def test_measures_taken_once_a_run_are_described_as_such(study_parts, tmp_path):
    data, tables, records = study_parts
    items = tuple(dataclasses.replace(i, at="best") if i.name == "margin" else i for i in data.spec.measures.items)
    spec = dataclasses.replace(data.spec, measures=dataclasses.replace(data.spec.measures, items=items))
    once = dataclasses.replace(data, spec=spec, notes=list(data.notes))
    corr = tables["correlations"].copy()
    corr["note"] = "2 row(s) with NaN/inf dropped; x is constant: correlations undefined (NaN)"
    analysis = dataclasses.replace(load_analysis_files(write_analysis(tmp_path)), correlations=corr)
    page, markdown = build_report(once, tables, None, analysis, records)[:2]
    assert "Taken once a run, at each run&#x27;s best checkpoint: margin." in page
    shown = table_dicts(dict(parse_tables(page).tables)["correlations"])
    notes = {m: [r["note"] for r in shown if r["measure"] == m] for m in ("margin", "frobenius-distance")}
    assert notes["margin"] and notes["frobenius-distance"]
    for note in notes["margin"]:
        assert note.startswith("taken once a run (at: best): 2 checkpoint(s) without it left out; x is constant")
    assert all(n.startswith("2 row(s) with NaN/inf dropped") for n in notes["frobenius-distance"])


def test_unreadable_analysis_files_fail_on_one_line(tmp_path):
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / "verdict.csv").write_text("measure,target\nmargin,mean_accuracy\n")
    with pytest.raises(XlgmError, match=r"verdict.csv: missing column\(s\) verdict"):
        load_analysis_files(tmp_path)
    (analysis / "verdict.csv").unlink()
    (analysis / "settings.json").write_text("{not json")
    with pytest.raises(XlgmError, match="settings.json: not valid JSON"):
        load_analysis_files(tmp_path)
    (analysis / "settings.json").write_text("[1, 2]")
    with pytest.raises(XlgmError, match="settings.json: expected a JSON object"):
        load_analysis_files(tmp_path)
    (analysis / "settings.json").unlink()
    (analysis / "health.csv").write_text("measure,healthy,reason\nmargin,False,2 NaN\nmvr,True,\n")
    files = load_analysis_files(tmp_path)
    assert files.verdict is None and files.settings is None and files.correlations is None
    assert files.health["healthy"].tolist() == [False, True] and exclusions(files) == {"margin": "2 NaN"}
