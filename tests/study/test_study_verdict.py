"""`xlgm study analyze` writes the verdict, the measures' health and the settings, and prints the verdict first."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pandas as pd
from study_testlib import CHECKPOINTS, RUNS

from xlgm.analysis.health import HEALTH_COLUMNS
from xlgm.analysis.verdict import VERDICT_COLUMNS
from xlgm.study.cli import main

MEASURES = ["margin", "frobenius-distance"]


def test_analyze_writes_the_verdict_health_and_settings(tiny_study, capsys):
    assert main(["analyze", str(tiny_study)]) == 0
    out = capsys.readouterr().out
    assert out.index("verdict:") < out.index("strongest correlations")
    folder = tiny_study / "analysis"
    verdict = pd.read_csv(folder / "verdict.csv")
    assert list(verdict.columns) == VERDICT_COLUMNS
    assert verdict[["measure", "target"]].values.tolist() == [
        [m, t] for m in MEASURES for t in ("transfer_residual", "mean_accuracy", "source_accuracy")
    ]
    assert verdict["expected_sign"].tolist() == [1, 1, 1, -1, -1, -1]  # margin +, frobenius-distance -
    assert set(verdict["verdict"]) <= {"agrees", "disagrees", "inconclusive", "excluded"}
    # the tiny study's English accuracy is the same everywhere: no line on it, so no residual (tau undefined)
    fitted = verdict[verdict["target"] != "transfer_residual"]
    assert (fitted["n_runs"] == RUNS).all() and (fitted["n_checkpoints"] == RUNS * CHECKPOINTS).all()
    residual = verdict[verdict["target"] == "transfer_residual"]
    assert residual["tau"].isna().all() and (residual["verdict"] != "agrees").all()
    # one seed a configuration: no within-configuration test, so no answer can rest on it
    assert verdict["tau_within"].isna().all() and verdict["level"].isna().all()
    assert out.index("beyond the fit (residual)") < out.index("strongest correlations")
    # the new tables: findings, levels, per language, the residual's line
    findings = pd.read_csv(folder / "findings.csv")
    assert findings["measure"].tolist() == MEASURES and findings["finding"].notna().all()
    levels = pd.read_csv(folder / "levels.csv")
    assert len(levels) == len(MEASURES) * 3 and (levels["n_pairs_within"] == 0).all()
    languages = pd.read_csv(folder / "languages.csv")
    assert languages[["measure", "language"]].values.tolist() == [[m, "de"] for m in MEASURES]
    assert {"tau_accuracy", "p_accuracy_holm", "tau_residual", "p_residual_holm"} <= set(languages.columns)
    fit = pd.read_csv(folder / "fit.csv")
    assert fit["target"].tolist() == ["mean_target", "acc_de"] and (fit["n"] == RUNS * CHECKPOINTS).all()
    frame = pd.read_csv(folder / "frame.csv")
    assert {"configuration", "rows_de", "transfer_residual", "resid_de"} <= set(frame.columns)
    health = pd.read_csv(folder / "health.csv")
    assert list(health.columns) == HEALTH_COLUMNS and health["healthy"].all()
    assert (health["n_units"] == RUNS * CHECKPOINTS).all()
    corr = pd.read_csv(folder / "correlations.csv")
    assert {"n_runs", "n_checkpoints", "p_holm", "p_bh", "survives_holm", "survives_bh", "unit"} <= set(corr.columns)
    assert corr["expected_sign"].notna().all() and (corr["unit"] == "run").all()
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["spec"]["name"] == "tiny" and set(settings["measures"]) == set(MEASURES)
    assert settings["data"]["eval_rows"] == {"de": 8, "en": 8} and settings["versions"]["torch"]
    assert set(settings["wall_seconds"]) == {"train", "eval", "measure"}
    assert settings["wall_seconds"]["measure"]["units"] == RUNS * CHECKPOINTS * len(MEASURES)


def test_results_without_recorded_health_are_excluded(tiny_study, tmp_path, capsys):
    # a study measured by an xlgm that recorded no health: conservatively, no verdict for its measures
    old = tmp_path / "old"
    shutil.copytree(tiny_study, old, ignore=shutil.ignore_patterns("analysis", "report"))
    with sqlite3.connect(old / "study.sqlite") as db:
        rows = db.execute("SELECT rowid, details FROM measures WHERE measure='margin'").fetchall()
        for rowid, details in rows:
            stored = json.loads(details)
            stored.pop("health")
            db.execute("UPDATE measures SET details=? WHERE rowid=?", (json.dumps(stored), rowid))
    assert main(["analyze", str(old)]) == 0
    capsys.readouterr()
    verdict = pd.read_csv(old / "analysis" / "verdict.csv").set_index(["measure", "target"])
    assert verdict.loc[("margin", "mean_accuracy"), "verdict"] == "excluded"
    assert "health not recorded at 4 of 4 checkpoints" in verdict.loc[("margin", "mean_accuracy"), "reason"]
    assert verdict.loc[("frobenius-distance", "mean_accuracy"), "health"] == "healthy"
