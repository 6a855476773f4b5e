"""Simulated studies shaped like the shipped CPU study (5 configurations x 3 seeds x 3 checkpoints; configuration
and seed effects on fit): the verdict tells a measure that only tracks the fit from one that predicts transfer
beyond it, and a measure taken once a run gets a p-value that is uniform under the null.

Every study is drawn from

    source_i = 0.65 + c_config + s_run + step trend + e_i      c ~ N(0, 0.02), s ~ N(0, 0.015), e ~ N(0, 0.005)
    target_i = 0.13 + 0.70 source_i + u_run + d_i               u ~ N(0, 0.008), d ~ N(0, 0.003)

(the shipped study: target = 0.13 + 0.70 source, R^2 0.92), with u_run a transfer effect that has nothing to do
with the fit. Fewer permutations (999) and resamples (200) than a study uses keep the file fast; p >= 1/1000 is
still far below the Holm threshold of a 3-row verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from xlgm.analysis.correlation import correlate
from xlgm.analysis.permutation import permutation_test
from xlgm.analysis.report_table import correlation_table
from xlgm.analysis.verdict import TRACKS_FIT, predicts_beyond_fit, verdict_table

CONFIGS, SEEDS, STEPS = 5, 3, (129, 172, 215)
STUDIES = 200
LANGS = ["en", "xx"]
TARGETS = ["transfer_residual", "mean_target", "acc_en"]
HEALTHY = pd.DataFrame({"measure": ["m"], "healthy": [True], "reason": [""]})


def _study(rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """One study's frame (one row per checkpoint) and each row's transfer effect u (of its run)."""
    runs = CONFIGS * SEEDS
    config = np.repeat(np.arange(CONFIGS), SEEDS)
    fit = 0.65 + rng.normal(0, 0.02, CONFIGS)[config] + rng.normal(0, 0.015, runs)
    transfer = rng.normal(0, 0.008, runs)
    run = np.repeat(np.arange(runs), len(STEPS))
    trend = np.tile([-0.01, 0.0, 0.005], runs)
    source = fit[run] + trend + rng.normal(0, 0.005, run.size)
    target = 0.13 + 0.70 * source + transfer[run] + rng.normal(0, 0.003, run.size)
    frame = pd.DataFrame(
        {
            "run_id": [f"r{r}" for r in run],
            "configuration": [f"c{c}" for c in config[run]],
            "step": np.tile(STEPS, runs),
            "acc_en": source,
            "acc_xx": target,
        }
    )
    return frame, transfer[run]


def _finding(frame: pd.DataFrame) -> str:
    corr = correlation_table(
        frame, ["m"], LANGS, "en", targets=TARGETS, n_boot=200, n_perm=999, expected_signs={"m": 1}
    )
    verdict = verdict_table(corr, HEALTHY, {"m": (1, "")})
    return str(verdict["finding"].iloc[0])


def test_a_measure_of_the_fit_alone_tracks_fit_and_does_not_predict_transfer_beyond_it():
    # the measure follows source accuracy (Kendall tau ~0.7 with it) and nothing else
    rng = np.random.default_rng(101)
    findings = []
    for _ in range(STUDIES):
        frame, _ = _study(rng)
        frame["m"] = frame["acc_en"] + rng.normal(0, 0.006, len(frame))
        findings.append(_finding(frame))
    rate = np.mean([f == TRACKS_FIT for f in findings])
    assert rate >= 0.93, pd.Series(findings).value_counts()


def test_a_measure_of_the_transfer_effect_predicts_transfer_beyond_the_fit():
    # effect size: the measure is the run's transfer effect u plus checkpoint noise of the same sd (0.008), so
    # its correlation with u is 0.71; u is independent of the fit
    rng = np.random.default_rng(202)
    findings = []
    for _ in range(STUDIES):
        frame, transfer = _study(rng)
        frame["m"] = transfer + rng.normal(0, 0.008, len(frame))
        findings.append(_finding(frame))
    rate = np.mean([f == predicts_beyond_fit(True) for f in findings])
    assert rate >= 0.80, pd.Series(findings).value_counts()


def test_the_p_of_a_measure_taken_once_a_run_is_uniform_under_the_null_when_best_steps_differ():
    # a measure taken at each run's best checkpoint, unrelated to the target; 3 of 15 runs peak at step 172
    rng = np.random.default_rng(303)
    plain, paired = [], []
    for _ in range(STUDIES):
        frame, _ = _study(rng)
        best = np.full(CONFIGS * SEEDS, 215)
        best[rng.choice(best.size, 3, replace=False)] = 172
        at_best = frame["step"].to_numpy() == best[np.repeat(np.arange(best.size), len(STEPS))]
        m = np.where(at_best, rng.normal(size=len(frame)), np.nan)
        y = frame["acc_xx"].to_numpy()
        result = correlate(m, y, runs=frame["run_id"], positions=frame["step"], n_boot=0, n_perm=999, seed=0)
        plain.append(result.tau_p)
        keep = at_best
        paired.append(
            permutation_test(m[keep], y[keep], frame["run_id"][keep], frame["step"][keep], n_perm=999).p["tau"]
        )
    assert stats.kstest(plain, "uniform").pvalue > 0.01
    # pairing runs by step instead (what a measure taken once a run got before) is not uniform: too wide a null
    assert stats.kstest(paired, "uniform").pvalue < 0.01 and np.mean(paired) > 0.55
