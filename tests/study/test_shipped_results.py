"""The shipped results (results/NAME/) are what `xlgm study analyze` computes from each folder's shipped
study.sqlite and spec.yaml: every analysis table, value for value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from xlgm.study.analyze import analyze_study

SHIPPED = Path(__file__).resolve().parents[2] / "results"
RESULTS = SHIPPED / "xnli-e5-cpu"
# Every shipped study folder; each must hold the files below.
STUDIES = ("xnli-e5-cpu", "udpos-e5-cpu", "xnli-e5-design")
DESIGN = SHIPPED / "xnli-e5-design"
TABLES = (
    "verdict",
    "findings",
    "levels",
    "languages",
    "fit",
    "health",
    "frame",
    "correlations",
    "granulated",
    "cmi",
    "top",
    "groups",
    "group_correlations",
)


def test_every_shipped_study_folder_is_listed():
    assert sorted(p.name for p in SHIPPED.iterdir() if p.is_dir()) == sorted(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_shipped_analysis_tables_are_recomputed_from_the_shipped_database(study, tmp_path):
    results = SHIPPED / study
    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("study.sqlite", "spec.yaml"):
        shutil.copy(results / name, folder / name)
    analyze_study(folder, echo=False)
    shipped = sorted(p.stem for p in (results / "analysis").glob("*.csv"))
    assert set(TABLES) <= set(shipped)
    for name in shipped:
        expected = pd.read_csv(results / "analysis" / f"{name}.csv")
        computed = pd.read_csv(folder / "analysis" / f"{name}.csv")
        pd.testing.assert_frame_equal(computed, expected, check_exact=False, rtol=1e-9, atol=1e-12, obj=name)


def test_the_shipped_verdict_reads_the_best_checkpoint_measures_with_a_plain_permutation():
    # hessian-trace is measured once a run: 15 run values, permuted as they are (not paired by training step)
    verdict = pd.read_csv(RESULTS / "analysis" / "verdict.csv").set_index(["measure", "target"])
    row = verdict.loc[("hessian-trace", "mean_accuracy")]
    assert row["p_raw"] <= 0.002 and row["n_runs"] == 15 and row["n_checkpoints"] == 15
    assert verdict.loc[("hessian-trace", "transfer_residual"), "verdict"] == "inconclusive"
    fit = pd.read_csv(RESULTS / "analysis" / "fit.csv").set_index("target")
    assert fit.loc["mean_target", "slope"] < 1 and fit.loc["mean_target", "r2"] > 0.9


def test_the_designed_study_varies_fit_and_every_verdict_measure_is_healthy():
    best = pd.read_csv(DESIGN / "analysis" / "frame.csv")
    assert best["run_id"].nunique() == len(best) == 27  # one checkpoint a run
    assert best["acc_en"].max() - best["acc_en"].min() >= 0.10  # fit varies
    health = pd.read_csv(DESIGN / "analysis" / "health.csv").set_index("measure")
    assert health.loc[~health["healthy"], "reason"].notna().all()  # excluded ones say why
    verdict = pd.read_csv(DESIGN / "analysis" / "verdict.csv")
    assert health.loc[verdict["measure"].unique(), "healthy"].all()


def test_the_designed_study_sweeps_data_size_and_sigma():
    sens = pd.read_csv(DESIGN / "analysis" / "sensitivity.csv")
    for measure in ("margin", "logit-margin", "sharpness-diff", "sharpness-diff-paper", "pacbayes-flatness"):
        assert set(sens.loc[sens["measure"] == measure, "rows"]) == {16, 64, 256}, measure
    sigma = sens.loc[sens["measure"] == "sharpness-diff", "sigma"].dropna()
    assert sigma.max() / sigma.min() >= 1e3 and sigma.min() < 0.01 < sigma.max()  # spans the default
    # every setting has its τ, interval and verdict for each of the three targets
    assert (sens.groupby("setting")["target"].nunique() == 3).all()
    assert sens[["tau", "ci_low", "ci_high", "verdict"]].notna().all().all()


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("name", ["report.html", "report.md", "README.md"])
def test_the_shipped_report_and_readme_are_there(study, name):
    assert (SHIPPED / study / name).stat().st_size > 1000
