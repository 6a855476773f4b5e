"""The verdict on a synthetic study with known signs, and measure health across a study: an unhealthy measure is
excluded, never agreeing or disagreeing, however well it correlates."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.health import HEALTH_COLUMNS, measure_health, stored_health
from xlgm.analysis.levels import level_table
from xlgm.analysis.report_table import correlation_table, granulated_table
from xlgm.analysis.verdict import FINDING_COLUMNS, VERDICT_COLUMNS, findings_table, verdict_table

LANGS = ["en", "de", "sw"]
NO_ITERATION = {
    "converged": None,
    "residual": None,
    "tolerance": None,
    "iteration_cap_reached": None,
    "saturated": None,
    "nonfinite": 0,
}


@pytest.fixture(scope="module")
def study():
    """3 objectives x 4 seeds, 3 checkpoints a run. A run's quality q sets its target accuracies; the measures:
    good rises with q (expected +), sharp rises with q too (expected -), noise is unrelated (expected +), nodir
    rises with q (no direction declared), stuck rises with q but did not converge, flat is a search bound."""
    rng = np.random.default_rng(11)
    rows = []
    for objective, seed in itertools.product(["adamw", "sam", "fisher"], range(4)):
        quality = rng.normal()
        for step in (10, 20, 30):
            q = quality + 0.2 * rng.normal()
            rows.append(
                {
                    "run_id": f"{objective}-{seed}",
                    "checkpoint_id": f"{objective}-{seed}/{step}",
                    "objective": objective,
                    "seed": seed,
                    "step": step,
                    "good": q + 0.1 * rng.normal(),
                    "sharp": q + 0.1 * rng.normal(),
                    "noise": rng.normal(),
                    "nodir": q + 0.1 * rng.normal(),
                    "stuck": q + 0.1 * rng.normal(),
                    "flat": 16.0,
                    "acc_en": 0.80 + 0.005 * rng.normal(),
                    "acc_de": 0.60 + 0.05 * q,
                    "acc_sw": 0.50 + 0.05 * q,
                }
            )
    frame = pd.DataFrame(rows)
    measures = ["good", "sharp", "noise", "nodir", "stuck", "flat"]
    long = frame.melt(id_vars=["checkpoint_id"], value_vars=measures, var_name="measure", value_name="value")
    unconverged = {
        **NO_ITERATION,
        "converged": False,
        "residual": 1.34,
        "tolerance": 0.01,
        "iteration_cap_reached": True,
    }
    saturated = {
        **NO_ITERATION,
        "converged": False,
        "residual": 0.4,
        "tolerance": 0.01,
        "saturated": True,
        "iteration_cap_reached": True,
    }
    health = {"stuck": unconverged, "flat": saturated}
    long["details"] = [
        json.dumps({"value": v, "health": health.get(m, NO_ITERATION)}) for m, v in zip(long["measure"], long["value"])
    ]
    directions = {
        "good": (1, "ref good"),
        "sharp": (-1, "ref sharp"),
        "noise": (1, "ref noise"),
        "nodir": (None, ""),
        "stuck": (1, "ref stuck"),
        "flat": (-1, "ref flat"),
    }
    return frame, long, measures, directions


def test_health_table_flags_unconverged_saturated_and_constant(study):
    _, long, measures, _ = study
    table = measure_health(long, measures)
    assert list(table.columns) == HEALTH_COLUMNS and list(table["measure"]) == measures
    by = table.set_index("measure")
    assert by.loc["good", "healthy"] and by.loc["good", "reason"] == "" and pd.isna(by.loc["good", "n_converged"])
    assert not by.loc["stuck", "healthy"] and by.loc["stuck", "n_converged"] == 0
    assert by.loc["stuck", "reason"] == (
        "not converged at 36 of 36 checkpoints (iteration cap reached; residual up to 1.34, tolerance 0.01)"
    )
    assert not by.loc["flat", "healthy"] and by.loc["flat", "constant"] and by.loc["flat", "n_saturated"] == 36
    assert "saturated at the search bound at 36 of 36 checkpoints" in by.loc["flat", "reason"]
    assert "constant across units (16)" in by.loc["flat", "reason"]


def test_health_counts_nan_and_unknown_health():
    rows = pd.DataFrame(
        {
            "measure": ["m"] * 4,
            "value": [1.0, np.nan, 3.0, np.inf],
            "details": [json.dumps({"health": NO_ITERATION})] * 3 + [json.dumps({"value": 1})],
        }
    )
    table = measure_health(rows)
    assert table.loc[0, "n_nan"] == 2 and not table.loc[0, "healthy"]
    assert table.loc[0, "reason"] == (
        "health not recorded at 1 of 4 checkpoints (measured by an older xlgm: measure again); 2 NaN/inf"
    )
    assert stored_health(None) is None and stored_health("not json") is None and stored_health({}) is None
    empty = measure_health(rows, ["m", "absent"]).set_index("measure")
    assert empty.loc["absent", "n_units"] == 0 and empty.loc["absent", "reason"] == "no values"


VERDICT_TARGETS = ["transfer_residual", "mean_target", "acc_en"]


def test_verdict_on_a_synthetic_study_with_known_signs(study):
    # English accuracy does not follow a run's quality here, the target languages do: what the measures that
    # follow quality predict is transfer beyond the fit
    frame, long, measures, directions = study
    frame = frame.assign(configuration=frame["objective"])
    signs = {m: s for m, (s, _) in directions.items() if s is not None}
    corr = correlation_table(
        frame, measures, LANGS, "en", ["objective", "seed"], n_boot=500, targets=VERDICT_TARGETS, expected_signs=signs
    )
    assert (corr["n_runs"] == 12).all() and (corr["n_checkpoints"] == 36).all() and (corr["unit"] == "run").all()
    granulated = granulated_table(frame, measures, LANGS, "en", ["objective", "seed"], targets=VERDICT_TARGETS)
    levels = level_table(frame, measures, LANGS, "en", VERDICT_TARGETS, n_perm=999, n_boot=200)
    table = verdict_table(corr, measure_health(long, measures), directions, levels=levels, granulated=granulated)
    assert list(table.columns) == VERDICT_COLUMNS
    assert table["target"].tolist()[:3] == ["transfer_residual", "mean_accuracy", "source_accuracy"]
    v = table.set_index(["measure", "target"])
    assert v.loc[("good", "transfer_residual"), "verdict"] == "agrees"
    assert v.loc[("good", "transfer_residual"), "level"] == "within configurations"  # seeds differ in quality
    assert v.loc[("good", "mean_accuracy"), "verdict"] == "agrees"
    assert v.loc[("good", "source_accuracy"), "verdict"] == "inconclusive"
    assert v.loc[("good", "mean_accuracy"), "finding"] == "predicts transfer beyond fit (agrees with expected sign)"
    assert v.loc[("sharp", "transfer_residual"), "verdict"] == "disagrees"
    assert v.loc[("sharp", "transfer_residual"), "reason"].startswith("tau +")
    assert v.loc[("sharp", "mean_accuracy"), "finding"] == "predicts transfer beyond fit (disagrees with expected sign)"
    assert v.loc[("noise", "transfer_residual"), "verdict"] == "inconclusive"
    assert v.loc[("noise", "transfer_residual"), "finding"] == "inconclusive"
    assert v.loc[("nodir", "transfer_residual"), "verdict"] == "inconclusive"
    assert "no expected direction" in v.loc[("nodir", "transfer_residual"), "reason"]
    assert v.loc[("nodir", "transfer_residual"), "finding"] == "predicts transfer beyond fit (no expected sign)"
    for name in ("stuck", "flat"):  # unhealthy: excluded whatever their correlation
        assert set(v.loc[name, "verdict"]) == {"excluded"} and set(v.loc[name, "finding"]) == {"excluded"}
        assert v.loc[(name, "mean_accuracy"), "reason"].startswith("unhealthy measure: ")
    assert abs(v.loc[("stuck", "mean_accuracy"), "tau"]) > 0.5  # it would have "agreed"
    assert v.loc[("good", "mean_accuracy"), "health"] == "healthy"
    assert v.loc[("good", "mean_accuracy"), "psi"] == pytest.approx(
        granulated.set_index(["measure", "target"]).loc[("good", "mean_target"), "psi"]
    )
    assert v.loc[("good", "mean_accuracy"), "reference"] == "ref good"
    assert v.loc[("good", "mean_accuracy"), "n_configurations"] == 3
    # the p-values are adjusted over the verdict table's rows with a p-value (flat has none)
    finite = table["p_raw"].notna()
    assert finite.sum() == 15 and table.loc[~finite, "measure"].eq("flat").all()
    assert (table.loc[finite, "p_holm"] >= table.loc[finite, "p_bh"] - 1e-15).all()
    findings = findings_table(table).set_index("measure")
    assert (
        list(findings.columns) == FINDING_COLUMNS[1:] and findings.loc["good", "verdict_transfer_residual"] == "agrees"
    )


def test_a_measure_that_only_tracks_the_fit_and_one_decided_only_between_configurations():
    rows = []
    for measure, target, tau, p, p_within, pairs in [
        ("fit", "transfer_residual", 0.05, 0.7, 0.8, 45),
        ("fit", "mean_target", 0.6, 0.0001, 0.4, 45),
        ("fit", "acc_en", 0.7, 0.0001, 0.0001, 45),
    ]:
        rows.append(
            {
                "measure": measure,
                "target": target,
                "tau": tau,
                "tau_lo": tau - 0.2,
                "tau_hi": tau + 0.2,
                "tau_p": p,
                "n_runs": 15,
                "n_checkpoints": 45,
                "p_within": p_within,
                "n_pairs_within": pairs,
                "tau_between": 0.8,
                "p_between": 0.08,
                "n_configurations": 5,
            }
        )
    corr = pd.DataFrame(rows)
    health = pd.DataFrame({"measure": ["fit"], "healthy": [True], "reason": [""]})
    table = verdict_table(corr, health, {"fit": (-1, "")}, levels=corr).set_index("target")
    assert set(table["finding"]) == {"tracks fit; does not predict transfer beyond fit"}
    assert table.loc["transfer_residual", "verdict"] == "inconclusive"
    assert table.loc["mean_accuracy", "level"] == "between configurations only"
    assert "not within configurations" in table.loc["mean_accuracy", "reason"]
    assert table.loc["source_accuracy", "level"] == "within configurations"  # Holm 3 x 0.0001 over p_within


def test_inconclusive_when_the_interval_reaches_zero_or_the_adjusted_p_is_large():
    corr = pd.DataFrame(
        [
            {
                "measure": "a",
                "target": "mean_target",
                "tau": 0.5,
                "tau_lo": -0.1,
                "tau_hi": 0.8,
                "tau_p": 0.04,
                "n_runs": 12,
                "n_checkpoints": 36,
            },
            {
                "measure": "b",
                "target": "mean_target",
                "tau": 0.5,
                "tau_lo": 0.2,
                "tau_hi": 0.8,
                "tau_p": 0.03,
                "n_runs": 4,
                "n_checkpoints": 12,
                "p_min": 1 / 24,
            },
        ]
    )
    health = pd.DataFrame({"measure": ["a", "b"], "healthy": [True, True], "reason": ["", ""]})
    table = verdict_table(corr, health, {"a": (1, ""), "b": (1, "")}).set_index(["measure", "target"])
    assert table.loc[("a", "mean_accuracy"), "level"] == ""  # undecided: no level
    assert table.loc[("a", "mean_accuracy"), "verdict"] == "inconclusive"
    assert "95% CI [-0.10, +0.80] includes 0" in table.loc[("a", "mean_accuracy"), "reason"]
    # family of 2 p-values (a, b at mean_target): Holm 2 * 0.03 = 0.06 for b, max(0.06, 1 * 0.04) for a
    assert table.loc[("b", "mean_accuracy"), "p_holm"] == pytest.approx(0.06)
    assert table.loc[("b", "mean_accuracy"), "verdict"] == "inconclusive"
    assert "Holm-adjusted p 0.06 > 0.05" in table.loc[("b", "mean_accuracy"), "reason"]
    assert "the smallest p these runs allow is 0.042" in table.loc[("b", "mean_accuracy"), "reason"]
    assert table.loc[("b", "transfer_residual"), "verdict"] == "inconclusive"  # no residual row: tau undefined
    assert table.loc[("b", "source_accuracy"), "reason"].startswith("tau undefined")
