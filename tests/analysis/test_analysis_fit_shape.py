"""The fit's shape: a straight line where the data are straight, a curve where target accuracy bends over
source accuracy (so that the bend does not stay in the residual), chosen by out-of-fold error."""

from __future__ import annotations

import numpy as np
from scipy import stats

from xlgm.analysis.fit import choose_degree, fit_summary, residuals


def _study(bend: float, seed: int = 0):
    """12 configurations x 2 seeds over a wide range of fit; target = a concave function of source + noise."""
    rng = np.random.default_rng(seed)
    source = np.repeat(np.linspace(0.3, 0.93, 12), 2) + rng.normal(0, 0.01, 24)
    target = 0.1 + 0.8 * source - bend * (source - 0.6) ** 2 + rng.normal(0, 0.003, 24)
    folds = np.repeat(np.arange(12), 2)
    return source, target, folds


def test_a_straight_relation_keeps_the_straight_line():
    source, target, folds = _study(bend=0.0)
    assert choose_degree(source, target, folds) == 1
    assert fit_summary(source, target, folds).degree == 1


def test_a_bend_is_fitted_and_leaves_the_residual():
    source, target, folds = _study(bend=1.5)
    assert choose_degree(source, target, folds) >= 2
    straight, curved = residuals(source, target), residuals(source, target, folds)
    bend = (source - source.mean()) ** 2
    # the straight line leaves the bend in its residual; the chosen curve does not
    assert stats.kendalltau(straight, bend).statistic < -0.4
    assert abs(stats.kendalltau(curved, bend).statistic) < 0.2
    # a measure that peaks at mid fit "predicts" the straight residual, not the curved one
    peaked = -bend
    assert stats.kendalltau(peaked, straight).pvalue < 0.01
    assert stats.kendalltau(peaked, curved).pvalue > 0.05


def test_without_folds_or_with_too_few_rows_the_fit_is_straight():
    source, target, folds = _study(bend=1.5)
    assert choose_degree(source, target, None) == 1
    assert choose_degree(source[:4], target[:4], folds[:4]) == 1
