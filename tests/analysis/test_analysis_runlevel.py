"""Run-level uncertainty: the cluster bootstrap keeps a run's checkpoints together, the permutation test moves
whole runs; a simulation of studies with a shared run effect and no relation shows why both are needed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from xlgm.analysis.correlation import bootstrap_statistics, correlate, resample_weights
from xlgm.analysis.permutation import layout, permutation_test, permuted_statistics, run_permutations


def _study(rng: np.random.Generator, n_runs: int, per_run: int, run_sd: float = 1.0, checkpoint_sd: float = 0.3):
    """A measure and a target that share nothing but a per-run random effect each: no true relation."""
    runs = np.repeat(np.arange(n_runs), per_run)
    x = rng.normal(0, run_sd, n_runs)[runs] + rng.normal(0, checkpoint_sd, runs.size)
    y = rng.normal(0, run_sd, n_runs)[runs] + rng.normal(0, checkpoint_sd, runs.size)
    return x, y, runs


def test_run_level_interval_covers_zero_at_the_nominal_rate_and_the_checkpoint_level_one_does_not():
    # 200 studies of 12 runs x 3 checkpoints. Within a run the checkpoints share the run's effect, so the 36 rows
    # carry about 12 rows' worth of information: resampling checkpoints makes the interval too narrow.
    rng = np.random.default_rng(2024)
    steps = np.tile([100, 200, 300], 12)
    covered = {"run": 0, "checkpoint": 0}
    for _ in range(200):
        x, y, runs = _study(rng, 12, 3)
        by_run = correlate(x, y, runs=runs, positions=steps, n_boot=1000, n_perm=0, seed=0)
        by_checkpoint = correlate(x, y, n_boot=1000, seed=0)
        covered["run"] += by_run.tau_lo <= 0 <= by_run.tau_hi
        covered["checkpoint"] += by_checkpoint.tau_lo <= 0 <= by_checkpoint.tau_hi
        assert (by_run.n_runs, by_run.n_checkpoints, by_run.unit) == (12, 36, "run")
    run_rate, checkpoint_rate = covered["run"] / 200, covered["checkpoint"] / 200
    assert run_rate >= 0.93
    assert checkpoint_rate <= 0.85 and checkpoint_rate < run_rate - 0.1


def test_cluster_bootstrap_draws_whole_runs():
    rng = np.random.default_rng(1)
    x, y, runs = _study(rng, 5, 3)
    result = correlate(x, y, runs=runs, n_boot=300, n_perm=0, seed=4)
    # the same resamples, by hand: 5 runs drawn with replacement, each run's 3 rows with its multiplicity
    weights = resample_weights(5, 300, np.random.default_rng(4))[:, runs]
    assert np.all(weights.reshape(300, 5, 3) == weights.reshape(300, 5, 3)[:, :, :1])  # a run's rows together
    boot = bootstrap_statistics(x, y, weights)["tau"]
    lo, hi = np.quantile(boot[np.isfinite(boot)], [0.025, 0.975])
    assert result.tau_lo == pytest.approx(lo) and result.tau_hi == pytest.approx(hi)
    # one resample expanded by hand equals scipy's tau on it
    b = 7
    counts = resample_weights(5, 300, np.random.default_rng(4))[b].astype(int)
    take = np.concatenate([np.flatnonzero(runs == r) for r in range(5) for _ in range(counts[r])])
    assert boot[b] == pytest.approx(stats.kendalltau(x[take], y[take]).statistic)


def test_without_runs_rows_are_independent_and_p_values_are_scipys():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=15), rng.normal(size=15)
    result = correlate(x, y, n_boot=0)
    assert result.unit == "checkpoint" and result.n_runs == 15
    assert result.tau_p == pytest.approx(stats.kendalltau(x, y).pvalue)


def _block_tau(x_grid, y_grid, perm):
    xp = x_grid[list(perm)].ravel()
    yf = y_grid.ravel()
    keep = np.isfinite(xp) & np.isfinite(yf)
    return stats.kendalltau(xp[keep], yf[keep]).statistic, keep


def test_permuted_statistics_equal_scipy_on_each_moved_grid_with_missing_cells():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(5, 3)), 1)  # ties
    y = rng.normal(size=(5, 3))
    x[1, 2] = np.nan
    y[3, 0] = np.nan
    perms, exact = run_permutations(5, 1000, 0)
    assert exact and len(perms) == 120 and list(perms[0]) == [0, 1, 2, 3, 4]
    tensor = permuted_statistics(x, y, perms, method="tensor")
    direct = permuted_statistics(x, y, perms, method="direct")
    np.testing.assert_allclose(tensor["tau"], direct["tau"], atol=1e-12)
    for b in (0, 11, 77, 119):
        tau, keep = _block_tau(x, y, perms[b])
        xp, yf = x[perms[b]].ravel()[keep], y.ravel()[keep]
        assert tensor["tau"][b] == pytest.approx(tau, abs=1e-12)
        assert tensor["spearman"][b] == pytest.approx(stats.spearmanr(xp, yf).statistic, abs=1e-12)
        assert tensor["pearson"][b] == pytest.approx(stats.pearsonr(xp, yf).statistic, abs=1e-12)
    complete_x, complete_y = np.nan_to_num(x), np.nan_to_num(y)
    fast = permuted_statistics(complete_x, complete_y, perms)  # a complete grid: the cross terms only
    slow = permuted_statistics(complete_x, complete_y, perms, method="tensor")
    for name in fast:
        np.testing.assert_allclose(fast[name], slow[name], atol=1e-12)


def test_permutation_p_value_equals_scipy_permutation_test():
    rng = np.random.default_rng(5)
    x_grid, y_grid = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    y_grid += 0.8 * x_grid
    runs = np.repeat(np.arange(6), 2)
    steps = np.tile([10, 20], 6)
    ours = permutation_test(x_grid.ravel(), y_grid.ravel(), runs, steps, n_perm=9999)
    assert ours.exact and ours.n_perm == 720 and ours.p_min == pytest.approx(1 / 720)

    def statistic(perm, axis=-1):  # |tau| of the measures of runs perm[a] paired with the targets of run a
        perm = np.atleast_2d(perm)
        return np.array([abs(_block_tau(x_grid, y_grid, p)[0]) for p in perm]).squeeze()

    ref = stats.permutation_test(
        (np.arange(6),),
        statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=np.inf,
        alternative="greater",
    )
    assert ours.p["tau"] == pytest.approx(ref.pvalue)
    # randomized: (1 + hits) / (1 + n_perm), never below 1 / (1 + n_perm)
    random = permutation_test(x_grid.ravel(), y_grid.ravel(), runs, steps, n_perm=200, seed=1)
    assert not random.exact and random.p_min == pytest.approx(1 / 201)
    assert random.p["tau"] == pytest.approx(ours.p["tau"], abs=0.08)


def test_four_runs_cannot_give_a_small_p_value():
    # 4 runs, perfectly ordered: |tau| = 1 only for the identity and the reversal, so p = 2/24
    x = np.array([1.0, 2.0, 3.0, 4.0])
    result = correlate(x, 10 * x, runs=["a", "b", "c", "d"], n_boot=0)
    assert result.tau == 1.0 and result.tau_p == pytest.approx(2 / 24)
    assert result.p_min == pytest.approx(1 / 24) and "4 runs" in result.p_method


def test_positions_pair_checkpoints_by_step_and_shared_trends_are_not_evidence():
    # Every run's measure and target rise with the step; between runs the measure says nothing. The checkpoint
    # tau is large, but moving whole runs keeps the trend, so the permutation test does not reject.
    rng = np.random.default_rng(8)
    runs = np.repeat(np.arange(7), 4)
    steps = np.tile([1, 2, 3, 4], 7)
    x = steps + 0.1 * rng.normal(size=28)
    y = steps + 0.1 * rng.normal(size=28) + rng.normal(size=7)[runs] * 0.05
    result = correlate(x, y, runs=runs, positions=steps, n_boot=0)
    assert result.tau > 0.5 and result.tau_p > 0.05


def test_layout_rejects_two_rows_at_one_step_of_a_run():
    with pytest.raises(ValueError, match="share a run and a position"):
        layout(["a", "a", "b"], [1, 1, 1])
    grid = layout(["b", "a", "b", "a"])
    assert grid.n_runs == 2 and grid.n_positions == 2 and list(grid.position) == [0, 0, 1, 1]


def test_rows_with_nan_leave_their_run_cells_empty():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0])
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0, 9.0])
    runs = np.repeat(["r1", "r2", "r3", "r4"], 2)
    result = correlate(x, y, runs=runs, positions=np.tile([1, 2], 4), n_boot=50)
    assert result.n_checkpoints == 7 and result.n_runs == 4 and result.n_dropped == 1
    assert result.tau == pytest.approx(stats.kendalltau(np.delete(x, 2), np.delete(y, 2)).statistic)
    assert 0 < result.tau_p <= 1 and math.isfinite(result.tau_lo)


def test_exact_enumeration_is_every_permutation_once():
    perms, exact = run_permutations(4, 24, None)
    assert exact and {tuple(p) for p in perms} == set(itertools.permutations(range(4)))
    perms, exact = run_permutations(4, 23, 0)
    assert not exact and len(perms) == 24 and list(perms[0]) == [0, 1, 2, 3]
