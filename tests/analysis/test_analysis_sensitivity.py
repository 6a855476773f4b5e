"""The sensitivity table on a simulated study whose measure sees more or fewer rows: 9 configurations x 3 seeds,
one checkpoint a run, a measure of the run's transfer effect u read through noise that shrinks with the rows it
sees (sd 0.064 / sqrt(rows), so 0.016 at 16 rows and 0.004 at 256, against u's 0.008):

    source = 0.60 + c_config + s_run         c ~ N(0, 0.03), s ~ N(0, 0.015)
    target = 0.13 + 0.70 source + u_run      u ~ N(0, 0.008)
    m[rows=n] = u_run + N(0, 0.064 / sqrt(n))

so its tau with the transfer residual grows with the rows, its verdict is decided at 256 rows only, and its
draw-to-draw and seed-to-seed spreads shrink with the rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from xlgm.analysis.report_table import correlation_table
from xlgm.analysis.sensitivity import option_columns, sensitivity_table, stability_table
from xlgm.analysis.verdict import BEYOND_FIT, verdict_table

CONFIGS, SEEDS, SIZES = 9, 3, (16, 64, 256)
SETTINGS = [f"m[rows={n}]" for n in SIZES]
TARGETS = ["transfer_residual", "mean_target", "acc_en"]


def simulated_study(seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    runs = CONFIGS * SEEDS
    config = np.repeat(np.arange(CONFIGS), SEEDS)
    source = 0.60 + rng.normal(0, 0.03, CONFIGS)[config] + rng.normal(0, 0.015, runs)
    transfer = rng.normal(0, 0.008, runs)
    frame = pd.DataFrame(
        {
            "run_id": [f"r{r}" for r in range(runs)],
            "configuration": [f"c{c}" for c in config],
            "step": 172,
            "acc_en": source,
            "acc_xx": 0.13 + 0.70 * source + transfer,
        }
    )
    for n, setting in zip(SIZES, SETTINGS):
        frame[setting] = transfer + rng.normal(0, 0.064 / np.sqrt(n), runs)
    return frame


def test_the_verdict_and_the_spreads_follow_the_rows_a_measure_sees():
    frame = simulated_study()
    signs = {s: 1 for s in SETTINGS}
    corr = correlation_table(
        frame, SETTINGS, ["en", "xx"], "en", targets=TARGETS, n_boot=300, n_perm=999, expected_signs=signs
    )
    healthy = pd.DataFrame({"measure": SETTINGS, "healthy": True, "reason": ""})
    verdict = verdict_table(corr, healthy, {s: (1, "") for s in SETTINGS})
    settings = pd.DataFrame({"setting": SETTINGS, "measure": "m", "rows": [float(n) for n in SIZES]})
    draws = pd.DataFrame(
        {"setting": np.repeat(SETTINGS, 27), "spread": np.repeat([0.064 / np.sqrt(n) for n in SIZES], 27)}
    )
    table = sensitivity_table(verdict, settings, frame, draws)

    assert list(table["setting"].drop_duplicates()) == SETTINGS and option_columns(table) == []
    assert len(table) == len(SETTINGS) * len(TARGETS)
    beyond = table[table["target"] == BEYOND_FIT].set_index("rows")
    tau = beyond["tau"]
    assert tau[16.0] < tau[64.0] < tau[256.0] and tau[256.0] > 0.5
    assert (beyond["ci_low"] <= tau).all() and (tau <= beyond["ci_high"]).all()
    assert beyond.loc[256.0, "verdict"] == "agrees" and beyond.loc[16.0, "verdict"] == "inconclusive"
    # the draws' spread is the one stored; the seeds' spread shrinks with the measurement noise, towards u's 0.008
    assert np.allclose(beyond["draw_spread"], [0.016, 0.008, 0.004])
    seed = beyond["seed_spread"]
    assert seed[16.0] > seed[64.0] > seed[256.0] and 0.004 < seed[256.0] < 0.012
    assert np.allclose(beyond["draw_share"], beyond["draw_spread"] / beyond["spread"])
    assert np.allclose(beyond["seed_share"], beyond["seed_spread"] / beyond["spread"])


def test_stability_says_which_answers_hold_at_every_setting_and_which_flip():
    table = pd.DataFrame(
        {
            "setting": ["m[rows=16]", "m[rows=16]", "m[rows=64]", "m[rows=64]", "one", "one"],
            "measure": ["m", "m", "m", "m", "one", "one"],
            "target": ["transfer_residual", "mean_accuracy"] * 3,
            "tau": [0.1, 0.5, -0.2, 0.6, 0.3, 0.3],
            "verdict": ["inconclusive", "agrees", "inconclusive", "disagrees", "agrees", "agrees"],
        }
    )
    stability = stability_table(table).set_index(["measure", "target"])
    assert list(stability.index) == [("m", "transfer_residual"), ("m", "mean_accuracy")]  # `one` is not swept
    beyond, target = stability.loc[("m", "transfer_residual")], stability.loc[("m", "mean_accuracy")]
    assert (beyond["holds"], beyond["verdicts"], beyond["settings"]) == ("holds", "inconclusive 2", 2)
    assert (beyond["tau_min"], beyond["at_min"], beyond["tau_max"], beyond["at_max"]) == (
        -0.2,
        "m[rows=64]",
        0.1,
        "m[rows=16]",
    )
    assert target["holds"] == "flips" and target["verdicts"] == "agrees 1, disagrees 1"
