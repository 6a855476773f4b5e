"""The transfer residual: the OLS line of target on source accuracy, in sample and out of fold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from xlgm.analysis.fit import fit_summary, out_of_fold_residuals, residuals
from xlgm.analysis.frame import add_targets


def _data(seed: int = 0, n_folds: int = 5, per_fold: int = 9):
    rng = np.random.default_rng(seed)
    folds = np.repeat(np.arange(n_folds), per_fold)
    source = 0.65 + rng.normal(0, 0.02, n_folds)[folds] + rng.normal(0, 0.01, folds.size)
    target = 0.13 + 0.7 * source + rng.normal(0, 0.004, folds.size)
    return source, target, folds


def test_in_sample_residuals_are_the_ols_residuals_and_uncorrelated_with_the_source():
    source, target, _ = _data()
    res = residuals(source, target)
    line = stats.linregress(source, target)
    assert res == pytest.approx(target - (line.intercept + line.slope * source))
    assert abs(np.corrcoef(source, res)[0, 1]) < 1e-10  # by construction
    source[3] = np.nan
    partial = residuals(source, target)
    assert math.isnan(partial[3]) and np.isfinite(np.delete(partial, 3)).all()
    assert np.isnan(residuals([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])).all()  # constant source: no line


def test_out_of_fold_residuals_use_the_line_of_the_other_folds():
    source, target, folds = _data(1)
    oof = out_of_fold_residuals(source, target, folds)
    held = folds == 2
    line = stats.linregress(source[~held], target[~held])
    assert oof[held] == pytest.approx(target[held] - (line.intercept + line.slope * source[held]))
    summary = fit_summary(source, target, folds)
    assert summary.slope == pytest.approx(stats.linregress(source, target).slope)
    assert summary.r2 == pytest.approx(stats.linregress(source, target).rvalue ** 2)
    assert summary.oof_r2 == pytest.approx(1 - np.sum(oof**2) / np.sum((target - target.mean()) ** 2))
    assert 0.5 < summary.oof_r2 < summary.r2 and summary.n == 45 and summary.n_folds == 5
    assert abs(summary.pearson_source_residual) < 1e-10 and summary.tau_residual_oof > 0.6


def test_add_targets_adds_the_residual_targets_with_configurations_as_folds():
    source, target, folds = _data(2)
    frame = {"acc_en": source, "acc_de": target, "acc_fr": target + 0.01, "configuration": folds.astype(str)}
    import pandas as pd

    out = add_targets(pd.DataFrame(frame), ["en", "de", "fr"])
    assert out["resid_de"].to_numpy() == pytest.approx(residuals(source, target), abs=1e-12)
    assert out["transfer_residual"].to_numpy() == pytest.approx(residuals(source, target + 0.005), abs=1e-12)
    expected = out_of_fold_residuals(source, target + 0.005, folds)
    assert out["transfer_residual_oof"].to_numpy() == pytest.approx(expected, abs=1e-12)
