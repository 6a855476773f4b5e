"""A study whose runs stop early (train.patience), measure each run's newest checkpoints (checkpoints.last)
and a costly measure only at each run's best checkpoint (`at: best`)."""

from __future__ import annotations

import sqlite3

from study_testlib import TINY_SPEC, write_spec

from xlgm.recipes.train import checkpoints_without_gain
from xlgm.study.analyze import analyze_study
from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec, parse_text

SPEC = (
    TINY_SPEC.replace("epochs: 1,", "epochs: 4, patience: 1,")
    .replace("checkpoints: {{every: 2}}", "checkpoints: {{every: 2, last: 2}}")
    .replace("names: [margin, frobenius-distance]", "names: [margin, {{frobenius-distance: {{at: best}}}}]")
)


def test_spec_reads_at_and_keeps_old_study_ids():
    spec = parse_text(SPEC.format(model="bert-base-cased"))
    assert [(m.name, m.at) for m in spec.measures.items] == [("margin", "all"), ("frobenius-distance", "best")]
    assert parse_text(spec.to_yaml()) == spec
    plain = parse_text(TINY_SPEC.format(model="bert-base-cased"))
    assert "at" not in plain.to_dict()["measures"]["items"][0] and "last" not in plain.to_dict()["checkpoints"]


def test_study_measures_the_newest_checkpoints_and_the_best_only_where_asked(tiny_bert_dir, tmp_path):
    path = write_spec(tmp_path, tiny_bert_dir, SPEC)
    out = tmp_path / "out"
    result = run_study(load_spec(path), out, show_progress=False, spec_text=path.read_text())
    assert result.units_done == result.units_total
    with sqlite3.connect(out / "study.sqlite") as db:
        checkpoints = db.execute(
            "SELECT run_id, checkpoint_id, step, dev_accuracy, is_best FROM checkpoints ORDER BY run_id, step"
        ).fetchall()
        evaluated = {r[0] for r in db.execute("SELECT DISTINCT checkpoint_id FROM evaluations")}
        measured = set(db.execute("SELECT checkpoint_id, measure FROM measures"))
    runs = sorted({r[0] for r in checkpoints})
    assert len(runs) == 2
    for run in runs:
        mine = [r for r in checkpoints if r[0] == run]
        index = {"checkpoints": [{"dev_accuracy": r[3]} for r in mine]}
        assert checkpoints_without_gain(index) == 1 or mine[-1][2] == 16  # stopped early, or trained 4 epochs
        newest = [r[1] for r in mine[-2:]]
        assert {r[1] for r in mine} & evaluated == set(newest)
        best = [r[1] for r in mine if r[4]]
        assert len(best) == 1 and best[0] in newest  # patience 1: the best is among the newest 2
        assert {(c, "margin") for c in newest} | {(best[0], "frobenius-distance")} == {
            m for m in measured if m[0].startswith(run)
        }
    data, tables = analyze_study(out, echo=False)
    assert len(data.frame) == 4 and {"margin", "frobenius-distance"} <= set(data.measures)
    assert data.frame["frobenius-distance"].notna().sum() == 2 and data.frame["margin"].notna().all()
    health = tables["health"].set_index("measure")
    assert health.loc["frobenius-distance", "n_units"] == 2 and health.loc["margin", "n_units"] == 4
