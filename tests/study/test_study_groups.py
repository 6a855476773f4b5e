"""A study with several seeds of one configuration measures the group: parameter-variance-across-seeds at each
run's best checkpoint, recorded once, analysed against the group's accuracy and shown in the report."""

from __future__ import annotations

import sqlite3

import pandas as pd
import torch
from safetensors.torch import load_file
from study_testlib import TINY_SPEC, write_spec

from xlgm.study.analyze import analyze_study
from xlgm.study.report import report_study
from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec
from xlgm.study.units import seed_group_id

SPEC = TINY_SPEC.replace("  - {{objective: sam, rho: 0.05}}\n", "").replace("seeds: [0]", "seeds: [0, 1, 2]")


def test_a_group_of_seeds_is_measured_once_at_the_best_checkpoints(tiny_bert_dir, tmp_path):
    path = write_spec(tmp_path, tiny_bert_dir, SPEC)
    spec = load_spec(path)
    out = tmp_path / "out"
    result = run_study(spec, out, show_progress=False, spec_text=path.read_text())
    assert result.units_done == result.units_total
    configs = spec.run_configs()
    group = seed_group_id(configs[0])
    assert {seed_group_id(c) for c in configs} == {group}
    with sqlite3.connect(out / "study.sqlite") as db:
        stored = db.execute("SELECT group_id, measure, run_ids, checkpoint_ids, value FROM group_measures").fetchall()
        best = dict(db.execute("SELECT run_id, path FROM checkpoints WHERE is_best=1"))
        work = db.execute("SELECT unit_id FROM work WHERE kind='group'").fetchall()
    assert len(stored) == 1 and work == [(f"group/{group}/parameter-variance-across-seeds",)]
    ((group_id, measure, _, _, value),) = stored
    assert (group_id, measure) == (group, "parameter-variance-across-seeds")
    # independently: the per-coordinate variance (ddof 1) over the three best checkpoints, averaged
    states = [load_file(out / best[c.run_id] / "model.safetensors") for c in configs]
    flat = torch.stack([torch.cat([s[k].double().ravel() for k in sorted(s)]) for s in states])
    assert abs(value - flat.var(dim=0, unbiased=True).mean().item()) <= 1e-12 * max(1.0, value)

    again = run_study(spec, out, show_progress=False, spec_text=path.read_text())
    assert again.units_now == 0  # nothing redone

    analyze_study(out, echo=False)
    groups = pd.read_csv(out / "analysis" / "groups.csv")
    assert list(groups["group"]) == ["adamw"] and int(groups["runs"].iloc[0]) == 3
    assert groups["value"].iloc[0] == value and 0 <= groups["mean_target"].iloc[0] <= 1
    summary = pd.read_csv(out / "analysis" / "group_correlations.csv")
    assert list(summary["finding"]) == ["inconclusive"]  # one group: nothing to correlate
    report_study(out, echo=False)
    assert "Groups of seeds" in (out / "report" / "report.md").read_text()
