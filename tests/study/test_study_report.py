"""`xlgm study analyze` and `xlgm study report` on the tiny study."""

from __future__ import annotations

import json

import math

import pandas as pd

from study_testlib import CHECKPOINTS, RUNS
from xlgm.study.analyze import auto_axes
from xlgm.study.cli import main
from xlgm.study.report import PNG_PREFIX

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
    # every measure against acc_en, acc_de, mean_target, gap_de, mean_gap
    assert len(corr) == len(MEASURES) * 5 and set(corr["measure"]) == set(MEASURES)
    assert {"tau", "tau_p", "tau_lo", "tau_hi", "spearman", "pearson_p"} <= set(corr.columns)
    assert (corr["n"] == RUNS * CHECKPOINTS).all()
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
    # accuracy heatmap + one scatter per measure + tau heatmap + training curves, all embedded
    assert html.count(PNG_PREFIX) == 1 + len(MEASURES) + 1 + 1
    assert 'src="http' not in html and "<link" not in html
    for measure in MEASURES:
        assert f"{measure} vs mean target accuracy" in html
    runs_table = html.split('<table class="runs">', 1)[1].split("</table>", 1)[0]
    assert runs_table.count("<tr>") == 1 + RUNS  # header + one row per run
    assert "adamw" in runs_table and "sam" in runs_table and "best held-out acc" in runs_table
    markdown = (tiny_study / "report" / "report.md").read_text()
    assert markdown.count("![") == 3 + len(MEASURES)
    for line in markdown.splitlines():
        if line.startswith("!["):
            assert (tiny_study / "report" / line.split("](", 1)[1].rstrip(")")).is_file()


def test_auto_axes_leave_out_what_another_axis_determines():
    nan = math.nan
    runs = pd.DataFrame({"run_id": list("abcdefgh"),
                         "objective": ["adamw"] * 2 + ["sam"] * 4 + ["fisher"] * 2,
                         "seed": [0, 1] * 4,
                         "rho": [nan, nan, 0.01, 0.01, 0.05, 0.05, nan, nan],
                         "lam": [nan] * 6 + [0.1, 0.1],
                         "lr": [2e-5] * 8})
    assert auto_axes(runs) == ["objective", "seed", "rho"]  # lam only restates fisher; lr does not vary
    assert auto_axes(runs[runs.objective != "sam"]) == ["objective", "seed"]
