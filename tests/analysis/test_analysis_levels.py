"""Within- and between-configuration tests and the two-level bootstrap (`xlgm.analysis.levels`)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from xlgm.analysis.levels import level_tests, stratified_tau, two_level_weights, within_permutations

CONFIG = np.repeat(np.arange(5), 3)


def test_within_permutations_are_all_the_shuffles_of_seeds_inside_their_configuration():
    perms, exact = within_permutations(CONFIG, 9999, 0)
    assert exact and perms.shape == (6**5, 15)  # (3!)^5 = 7776
    assert (perms[0] == np.arange(15)).all()
    assert len({tuple(p) for p in perms}) == 6**5
    assert (CONFIG[perms] == CONFIG).all()  # a run only ever takes the place of a run of its configuration
    drawn, exact = within_permutations(CONFIG, 100, 0)
    assert not exact and drawn.shape == (101, 15) and (CONFIG[drawn] == CONFIG).all()


def test_the_stratified_tau_of_one_stratum_is_kendalls():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=6), rng.normal(size=6)
    first, second = np.triu_indices(6, 1)
    assert stratified_tau(x[None, :], y, first, second)[0] == pytest.approx(stats.kendalltau(x, y).statistic)


def _design(rng, within: float, between: float):
    """5 configurations x 3 seeds x 3 steps; the measure shares the target's seed effect with weight `within`
    and its configuration effect with weight `between`."""
    run = np.repeat(np.arange(15), 3)
    config_effect, seed_effect = rng.normal(size=5), rng.normal(size=15)
    y = config_effect[CONFIG][run] + seed_effect[run] + 0.1 * rng.normal(size=45)
    x = (
        between * config_effect[CONFIG][run]
        + within * seed_effect[run]
        + rng.normal(size=5)[CONFIG][run] * (1 - between)
        + rng.normal(size=15)[run] * (1 - within)
        + 0.1 * rng.normal(size=45)
    )
    return x, y, run, CONFIG[run], np.tile([1, 2, 3], 15)


def test_a_between_configuration_effect_is_not_seen_within_and_a_seed_effect_is():
    rng = np.random.default_rng(5)
    x, y, run, config, step = _design(rng, within=0.0, between=1.0)
    between_only = level_tests(x, y, run, config, step, n_boot=200)
    assert between_only.within_exact and between_only.within_permutations == 7776
    assert between_only.n_pairs_within == 45 and between_only.n_configurations == 5
    assert between_only.p_within > 0.05 and between_only.tau_between > 0.5
    x, y, run, config, step = _design(rng, within=1.0, between=0.0)
    within = level_tests(x, y, run, config, step, n_boot=200)
    assert within.p_within < 0.01 and within.tau_within > 0.5


def test_the_between_test_is_the_exact_permutation_test_of_the_configuration_means():
    rng = np.random.default_rng(8)
    x, y, run, config, step = _design(rng, within=0.5, between=0.5)
    result = level_tests(x, y, run, config, step, n_boot=0)
    mx = np.array([x[config == c].mean() for c in range(5)])
    my = np.array([y[config == c].mean() for c in range(5)])
    ref = stats.permutation_test(
        (mx,), lambda a: stats.kendalltau(a, my).statistic, permutation_type="pairings", alternative="two-sided"
    )
    assert result.tau_between == pytest.approx(stats.kendalltau(mx, my).statistic)
    # scipy's two-sided p doubles the smaller tail; tau's null is symmetric, so it equals P(|T| >= |t|)
    assert result.p_between == pytest.approx(ref.pvalue)
    assert result.between_permutations == 120 and math.isnan(result.tau_lo_2level)


def test_two_level_resamples_draw_configurations_then_their_runs():
    weights = two_level_weights(CONFIG, 500, np.random.default_rng(0))
    per_config = weights.reshape(500, 5, 3).sum(axis=2)
    assert (per_config % 3 == 0).all() and (per_config.sum(axis=1) == 15).all()  # 5 configurations of 3 runs
    # a configuration drawn twice contributes 6 run draws, all among its own runs
    assert (per_config == 0).any() and (per_config >= 6).any()
    x, y, run, config, step = _design(np.random.default_rng(3), within=0.0, between=1.0)
    result = level_tests(x, y, run, config, step, n_boot=500)
    assert result.tau_lo_2level < result.tau_hi_2level


def test_one_run_a_configuration_has_no_within_test():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=12), rng.normal(size=12)
    runs = np.repeat(np.arange(4), 3)
    result = level_tests(x, y, runs, runs, np.tile([1, 2, 3], 4), n_boot=50)
    assert result.n_pairs_within == 0 and math.isnan(result.p_within) and "no within" in result.level_note
    assert result.n_configurations == 4 and result.between_permutations == 24
    assert math.isfinite(result.tau_lo_2level)


def test_exact_within_enumeration_matches_a_brute_force_p():
    rng = np.random.default_rng(4)
    config = np.array([0, 0, 1, 1, 1])
    x, y = rng.normal(size=5), rng.normal(size=5)
    result = level_tests(x, y, np.arange(5), config, n_boot=0)
    pairs = [(0, 1), (2, 3), (2, 4), (3, 4)]

    def tau(xx):
        num = sum(np.sign(xx[i] - xx[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
        return num / len(pairs)

    values = [
        tau(x[list(a) + list(b)]) for a in itertools.permutations([0, 1]) for b in itertools.permutations([2, 3, 4])
    ]
    assert result.p_within == pytest.approx(np.mean(np.abs(values) >= abs(tau(x)) - 1e-12))
    assert result.tau_within == pytest.approx(tau(x))
