"""xlgm.analysis.correlation: point estimates and p-values against scipy, the weighted bootstrap against explicit
resampling and scipy.stats.bootstrap, hand-computed cases, and NaN/degenerate handling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from xlgm.analysis.correlation import bootstrap_statistics, correlate, resample_weights


def _data(n: int, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + noise * rng.normal(size=n)


def test_point_estimates_and_p_values_match_scipy():
    x, y = _data(40, seed=1, noise=2.0)
    r = correlate(x, y, n_boot=0)
    kt, sp, pe = stats.kendalltau(x, y), stats.spearmanr(x, y), stats.pearsonr(x, y)
    assert r.tau == pytest.approx(kt.statistic) and r.tau_p == pytest.approx(kt.pvalue)
    assert r.spearman == pytest.approx(sp.statistic) and r.spearman_p == pytest.approx(sp.pvalue)
    assert r.pearson == pytest.approx(pe.statistic) and r.pearson_p == pytest.approx(pe.pvalue)
    assert r.n == 40 and r.n_dropped == 0 and r.note == ""
    assert math.isnan(r.tau_lo) and math.isnan(r.tau_hi)  # n_boot=0: no interval


def test_weighted_bootstrap_equals_scipy_on_expanded_resamples_with_ties():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=20), 1)  # rounding creates ties
    y = np.round(x + rng.normal(size=20), 1)
    w = resample_weights(20, 40, np.random.default_rng(0))
    assert np.all(w.sum(axis=1) == 20)
    boot = bootstrap_statistics(x, y, w)
    for b in range(40):
        xr, yr = np.repeat(x, w[b].astype(int)), np.repeat(y, w[b].astype(int))
        assert boot["tau"][b] == pytest.approx(stats.kendalltau(xr, yr).statistic, abs=1e-12)
        assert boot["spearman"][b] == pytest.approx(stats.spearmanr(xr, yr).statistic, abs=1e-12)
        assert boot["pearson"][b] == pytest.approx(stats.pearsonr(xr, yr).statistic, abs=1e-12)


def test_bootstrap_interval_close_to_scipy_bootstrap():
    x, y = _data(40, seed=5, noise=1.5)
    r = correlate(x, y, n_boot=2000, seed=1)
    # Different random draws, same procedure: the endpoints agree up to Monte Carlo error. (Kendall via scipy's
    # per-resample loop is slow; the exact-equality test above covers it.)
    ref = stats.bootstrap(
        (x, y),
        lambda a, b: np.corrcoef(a, b)[0, 1],
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=2000,
        confidence_level=0.95,
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert r.pearson_lo == pytest.approx(ref.low, abs=0.04)
    assert r.pearson_hi == pytest.approx(ref.high, abs=0.04)


def test_interval_contains_estimate_and_shrinks_with_n():
    widths = {}
    for n in (30, 300):
        x, y = _data(n, seed=n)
        r = correlate(x, y, n_boot=500, seed=0)
        for s in ("tau", "spearman", "pearson"):
            assert getattr(r, f"{s}_lo") <= getattr(r, s) <= getattr(r, f"{s}_hi")
        widths[n] = {s: getattr(r, f"{s}_hi") - getattr(r, f"{s}_lo") for s in ("tau", "spearman", "pearson")}
    for s in ("tau", "spearman", "pearson"):
        assert widths[300][s] < 0.6 * widths[30][s]


def test_confidence_level_widens_interval():
    x, y = _data(50, seed=2)
    r90 = correlate(x, y, n_boot=500, confidence=0.90, seed=0)
    r99 = correlate(x, y, n_boot=500, confidence=0.99, seed=0)
    assert r99.tau_lo <= r90.tau_lo and r99.tau_hi >= r90.tau_hi


def test_deterministic_for_a_seed():
    x, y = _data(50, seed=4)
    a, b = correlate(x, y, n_boot=300, seed=7), correlate(x, y, n_boot=300, seed=7)
    assert a == b
    c = correlate(x, y, n_boot=300, seed=8)
    assert (c.tau_lo, c.tau_hi) != (a.tau_lo, a.tau_hi)
    assert c.tau == a.tau  # the point estimate does not depend on the seed


def test_hand_counted_kendall_tau():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [1.0, 3.0, 2.0, 4.0]
    concordant = discordant = 0
    for i, j in itertools.combinations(range(4), 2):
        s = (x[i] - x[j]) * (y[i] - y[j])
        concordant += s > 0
        discordant += s < 0
    assert (concordant, discordant) == (5, 1)  # only the pair (2, 3) is discordant
    r = correlate(x, y, n_boot=0)
    assert r.tau == pytest.approx((concordant - discordant) / 6) == pytest.approx(2 / 3)
    # Spearman by hand: rank differences d = (0, 1, -1, 0), rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 12/60
    assert r.spearman == pytest.approx(0.8)


def test_perfectly_monotone_measure():
    x = np.arange(1.0, 21.0)
    r = correlate(x, x**3, n_boot=200, seed=0)
    assert r.tau == pytest.approx(1.0) and r.spearman == pytest.approx(1.0)
    assert r.pearson < 1.0  # not linear
    assert (r.tau_lo, r.tau_hi) == (pytest.approx(1.0), pytest.approx(1.0))
    assert r.tau_p < 1e-6
    neg = correlate(x, -x, n_boot=0)
    assert neg.tau == pytest.approx(-1.0) and neg.pearson == pytest.approx(-1.0)


def test_nan_rows_are_dropped():
    x, y = _data(30, seed=6)
    x[[0, 3]] = np.nan
    y[[3, 7]] = np.inf
    r = correlate(x, y, n_boot=100)
    keep = np.isfinite(x) & np.isfinite(y)
    assert r.n == 27 and r.n_dropped == 3 and "3 row(s)" in r.note
    assert r.tau == pytest.approx(stats.kendalltau(x[keep], y[keep]).statistic)


@pytest.mark.parametrize(
    "x, y, words",
    [
        ([1.0, 2.0], [3.0, 4.0], "only 2 complete row(s)"),
        ([], [], "only 0 complete row(s)"),
        ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, np.nan, 4.0], "only 2 complete row(s)"),
        ([np.nan] * 5, [1.0] * 5, "only 0"),
        ([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0], "x is constant"),
        ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], "y is constant"),
    ],
)
def test_degenerate_inputs_give_nan_and_a_note(x, y, words):
    r = correlate(x, y, n_boot=50)
    for name in ("tau", "tau_p", "tau_lo", "tau_hi", "spearman", "spearman_lo", "pearson", "pearson_p"):
        assert math.isnan(getattr(r, name)), name
    assert words in r.note
    assert r.agrees is None


def test_three_points_are_enough():
    r = correlate([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], n_boot=100, seed=0)
    assert r.n == 3 and r.tau == pytest.approx(1 / 3)
    assert math.isfinite(r.tau_lo) and "constant x or y" in r.note  # some resamples draw one point thrice


def test_expected_sign_is_reported_not_applied():
    x, y = _data(40, seed=9)
    plain = correlate(x, y, n_boot=0)
    assert plain.tau > 0
    neg = correlate(x, y, n_boot=0, expected_sign=-1)
    assert neg.tau == plain.tau and neg.expected_sign == -1 and neg.agrees is False
    pos = correlate(x, y, n_boot=0, expected_sign=1)
    assert pos.agrees is True
    with pytest.raises(ValueError, match="expected_sign"):
        correlate(x, y, expected_sign=2)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="confidence"):
        correlate([1, 2, 3], [1, 2, 3], confidence=1.0)
    with pytest.raises(ValueError, match="same length"):
        correlate([1, 2, 3], [1, 2])
