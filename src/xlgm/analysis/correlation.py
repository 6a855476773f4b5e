"""Correlation of one generalization measure with one target: Kendall, Spearman and Pearson, with p-values and
percentile-bootstrap confidence intervals.

Point estimates are scipy's: `scipy.stats.kendalltau` (tau-b), `scipy.stats.spearmanr` and `scipy.stats.pearsonr`.
The correlation is reported raw: a measure that is expected
to decrease with accuracy (e.g. sharpness) shows a negative coefficient. The caller may state the expected sign;
it is reported beside the coefficient (``expected_sign``, ``agrees``) and never used to flip it.

Runs. The rows of a study are checkpoints, and checkpoints of one run are not independent (they share the
initialisation, the data order and most of the training). When the caller says which run each row belongs to
(``runs``), the unit of resampling is the run:

* the confidence interval is the cluster (run-level) percentile bootstrap (Davison & Hinkley 1997, §3.8; Field &
  Welsh 2007): a resample draws R runs with replacement from the R runs and keeps every checkpoint of each
  drawn run, so the within-run dependence is in every resample. In the weighted form below, a row's
  multiplicity is the number of times its run was drawn;
* the p-values are run-level permutation tests (`xlgm.analysis.permutation`): under H0 the runs are
  exchangeable and a run's measure trajectory is independent of its target trajectory; the measures are moved
  between runs as blocks, checkpoint k of one run paired with checkpoint k (the same step) of another. A
  measure with one finite value a run (taken once a run, e.g. at the best checkpoint) is a plain permutation
  of the R run values, whatever step each was taken at. With R runs no p-value is below 1/R! (``p_min``).

Both are reported with ``n_runs`` and ``n_checkpoints`` (the rows used). Without ``runs`` every row is its own
run: the bootstrap is over rows and the p-values are scipy's (`kendalltau` exact for small n without ties, else
the normal approximation; `spearmanr` t distribution; `pearsonr` exact beta under bivariate normality), valid
for independent rows. A simulation in the tests (200 studies, runs with a shared random effect, no relation)
shows the run-level interval covering zero at the nominal rate and the row-level one far less often.

Bootstrap. The confidence interval is the percentile bootstrap over rows (Efron & Tibshirani 1993, ch. 13): draw
`n_boot` resamples of the n (x, y) pairs with replacement, compute the three coefficients on each, and take the
(1 - confidence)/2 and (1 + confidence)/2 quantiles of each coefficient's resampled values. This is what
``scipy.stats.bootstrap(..., paired=True, vectorized=False, method='percentile')`` computes, but scipy would call
three Python-level correlations per resample (a table of a few hundred correlations would take minutes). Here
a resample is represented by its multiplicity vector w (w_i = how often row i was drawn, w ~ Multinomial(n, 1/n),
drawn as n uniform indices from a seeded `numpy.random.Generator`), and all resamples are evaluated at once:

* Kendall tau-b of a resample = (w' C w) / sqrt(Nx * Ny), with C_ij = sign(x_i - x_j) sign(y_i - y_j): w' C w
  sums C over all ordered pairs of drawn rows (= 2 (P - Q)); Nx = n^2 - sum_v (weight drawn at value v of x)^2
  counts the ordered pairs not tied in x (Ny likewise). A row drawn twice makes a pair tied in both x and y,
  which tau-b leaves out of the numerator and of both tie-corrected denominators, exactly as on the expanded
  resample;
* Spearman = the weighted Pearson correlation of the resample's mid-ranks, rank_i = sum_j w_j [x_j < x_i] +
  (sum_j w_j [x_j = x_i] + 1) / 2 (ties get the average rank, as `scipy.stats.rankdata`);
* Pearson = the weighted Pearson correlation with weights w.

Each equals the scipy statistic computed on the expanded resample (checked in the tests). A resample in which x
or y is constant has no correlation; such resamples are left out of the quantiles and counted in the note.
Cost: O(n_boot * n^2) time (one matrix product, for Kendall) and O(n^2 + n_boot * n) memory: ~0.05 s for
n = 300, n_boot = 1000. The resamples of a given (n, n_boot, integer seed) are drawn once and cached. With runs,
the resampled units are the R runs (`resample_weights(R, ...)`) and each row takes its run's multiplicity.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from xlgm.analysis.permutation import layout, permutation_test, run_positions

STATISTICS = ("tau", "spearman", "pearson")
MIN_ROWS = 3


@dataclass(frozen=True)
class CorrelationResult:
    """Kendall tau-b, Spearman rho and Pearson r of (x, y), each with its p-value and bootstrap CI.

    ``n`` counts the rows used (both values finite), ``n_dropped`` the rows left out for a NaN/inf;
    ``n_checkpoints`` = ``n`` and ``n_runs`` the runs they come from (= n without runs). ``unit`` is what was
    resampled and permuted: "run" (runs given) or "checkpoint" (rows taken as independent). ``p_method`` names the
    test behind the p-values and ``p_min`` the smallest p-value it can give (NaN for scipy's tests). ``note``
    says why a value is NaN ("" when nothing is). ``expected_sign`` is the caller's hypothesis (+1, -1 or None)
    and ``agrees`` whether sign(tau) matches it (None without a hypothesis or when tau is NaN or 0).
    """

    tau: float
    tau_p: float
    tau_lo: float
    tau_hi: float
    spearman: float
    spearman_p: float
    spearman_lo: float
    spearman_hi: float
    pearson: float
    pearson_p: float
    pearson_lo: float
    pearson_hi: float
    n: int
    n_dropped: int
    n_boot: int
    confidence: float
    n_runs: int = 0
    n_checkpoints: int = 0
    unit: str = "checkpoint"
    p_method: str = ""
    p_min: float = math.nan
    expected_sign: int | None = None
    agrees: bool | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _check_sign(expected_sign: int | None) -> int | None:
    if expected_sign is None:
        return None
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1, -1 or None, got {expected_sign!r}")
    return int(expected_sign)


def _agrees(tau: float, expected_sign: int | None) -> bool | None:
    if expected_sign is None or not math.isfinite(tau) or tau == 0:
        return None
    return bool(np.sign(tau) == expected_sign)


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y as float arrays and the mask of the rows where both are finite."""
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    return xa, ya, np.isfinite(xa) & np.isfinite(ya)


@functools.lru_cache(maxsize=4)
def _seeded_weights(n: int, n_boot: int, seed: int | None) -> np.ndarray:
    # A table correlates many columns over the same n rows with the same seed: draw those resamples once.
    w = resample_weights(n, n_boot, np.random.default_rng(seed))
    w.setflags(write=False)
    return w


def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of bootstrap resamples: row b counts how often each of the n rows was drawn
    when drawing n row indices uniformly with replacement (``rng.integers(0, n, (n_boot, n))``)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = idx + n * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n * n_boot).reshape(n_boot, n).astype(float)


def _weighted_midranks(v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per weighted resample (rows of w): the mid-ranks of v (n_boot, n); sum_i w_i rank_i^2; the number of
    ordered pairs of drawn rows NOT tied in v; whether v takes more than one value (each (n_boot,))."""
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    new_value = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    group = np.empty(v.size, dtype=np.intp)
    group[order] = np.cumsum(new_value) - 1  # dense rank of each row's value
    wg = np.add.reduceat(w[:, order], np.flatnonzero(new_value), axis=1)  # weight drawn of each distinct value
    ranks_g = np.cumsum(wg, axis=1) - wg + (wg + 1.0) / 2.0
    sum_sq = np.einsum("bg,bg,bg->b", wg, ranks_g, ranks_g)
    total = wg.sum(axis=1)
    untied_pairs = total**2 - np.einsum("bg,bg->b", wg, wg)  # = w' Sv^2 w: all ordered pairs minus within a value
    varies = (wg > 0).sum(axis=1) > 1
    return ranks_g[:, group], sum_sq, untied_pairs, varies


def _r(cov: np.ndarray, var_a: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(cov / np.sqrt(var_a * var_b), -1.0, 1.0)


def bootstrap_statistics(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Kendall tau-b, Spearman and Pearson of every resample given by the multiplicity rows of `w`.

    ``w[b, i]`` is how often row i appears in resample b (see `resample_weights`). Returns a dict of arrays of
    shape (n_boot,), NaN where x or y is constant within the resample. Equal to scipy's statistic on
    ``np.repeat(x, w[b])``, ``np.repeat(y, w[b])`` (module docstring).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    total = w.sum(axis=1)
    rx, rx_sq, den_x, x_varies = _weighted_midranks(x, w)
    ry, ry_sq, den_y, y_varies = _weighted_midranks(y, w)
    defined = x_varies & y_varies

    concordance = np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])
    tau = _r(np.einsum("bi,bi->b", w @ concordance, w), den_x, den_y)

    # Spearman: the mid-ranks of a resample of size N always average (N + 1) / 2.
    mean_rank = (total + 1.0) / 2.0
    spearman = _r(
        np.einsum("bi,bi,bi->b", w, rx, ry) / total - mean_rank**2,
        rx_sq / total - mean_rank**2,
        ry_sq / total - mean_rank**2,
    )

    # Pearson from weighted moments, standardized first so that the sums are well conditioned.
    xs = (x - x.mean()) / (x.std() or 1.0)
    ys = (y - y.mean()) / (y.std() or 1.0)
    m = (w @ np.column_stack([xs, ys, xs * xs, ys * ys, xs * ys])) / total[:, None]
    pearson = _r(m[:, 4] - m[:, 0] * m[:, 1], m[:, 2] - m[:, 0] ** 2, m[:, 3] - m[:, 1] ** 2)

    out = {"tau": tau, "spearman": spearman, "pearson": pearson}
    for values in out.values():
        values[~defined] = np.nan
    return out


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _point_estimates(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[float, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning etc.: a constant input gives NaN, reported below
        kt = stats.kendalltau(x, y)
        sp = stats.spearmanr(x, y)
        pe = stats.pearsonr(x, y)
    return {
        "tau": (float(kt.statistic), float(kt.pvalue)),
        "spearman": (float(sp.statistic), float(sp.pvalue)),
        "pearson": (float(pe.statistic), float(pe.pvalue)),
    }


def correlate(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    expected_sign: int | None = None,
    runs: Sequence | None = None,
    positions: Sequence | None = None,
    n_perm: int = 9999,
) -> CorrelationResult:
    """Kendall tau-b, Spearman rho and Pearson r of a measure `x` and a target `y`, with p-values and CIs.

    Rows where x or y is NaN/inf are dropped. With fewer than 3 rows left, or a constant x or y, the
    coefficients are NaN and ``note`` says why; this function does not raise on degenerate data.

    Args:
        x, y: paired values (e.g. a measure column and ``mean_target``).
        n_boot: bootstrap resamples (0 skips the CI: lo/hi are NaN).
        confidence: two-sided level of the percentile interval, in (0, 1).
        seed: seed of the `numpy.random.Generator` that draws the resamples and the permutations (or a
            Generator, for the resamples): same seed, same CI and p-values.
        expected_sign: the hypothesised sign of the correlation (+1 or -1), reported in ``expected_sign`` and
            ``agrees``; the coefficients are never flipped.
        runs: the run of each row. Given, the bootstrap resamples whole runs and the p-values come from a
            run-level permutation test (module docstring); None: rows are independent.
        positions: each row's place in its run (e.g. its step), pairing checkpoints across runs in the
            permutation test; default: the order of the rows within their run.
        n_perm: permutations of the runs (all of them when R! <= n_perm); 0 leaves the p-values NaN.

    Returns:
        A `CorrelationResult`.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if n_perm < 0:
        raise ValueError(f"n_perm must be >= 0, got {n_perm}")
    expected_sign = _check_sign(expected_sign)
    x_all, y_all, keep = _finite_pairs(x, y)
    xs, ys = x_all[keep], y_all[keep]
    dropped = int((~keep).sum())
    n = int(xs.size)
    if runs is not None:
        run_labels = np.asarray(pd.Series(list(runs), dtype=object))
        if run_labels.size != keep.size:
            raise ValueError(f"runs must have one label per row, got {run_labels.size} for {keep.size} rows")
        run_labels = run_labels[keep]
        pos = run_positions(run_labels, None if positions is None else np.asarray(list(positions), dtype=object)[keep])
        grid = layout(run_labels, pos)  # raises on two rows at one (run, position)
        run_index, n_runs, unit = grid.run, grid.n_runs, "run"
    else:
        run_index, n_runs, unit = np.arange(n), n, "checkpoint"
    nan = math.nan
    values = {s: [nan, nan, nan, nan] for s in STATISTICS}  # estimate, p, lo, hi
    notes: list[str] = []
    p_method, p_min = "", nan
    if dropped:
        notes.append(f"{dropped} row(s) with NaN/inf dropped")
    if n < MIN_ROWS:
        notes.append(f"only {n} complete row(s) (need >= {MIN_ROWS}): all statistics NaN")
    elif np.all(xs == xs[0]) or np.all(ys == ys[0]):
        notes.append("x is constant" if np.all(xs == xs[0]) else "y is constant")
        notes[-1] += ": correlations undefined (NaN)"
    else:
        for name, (est, p) in _point_estimates(xs, ys).items():
            values[name][0] = est
            if unit == "checkpoint":
                values[name][1] = p
        if unit == "checkpoint":
            p_method = "scipy (independent rows)"
        elif n_perm > 0:
            test = permutation_test(
                xs, ys, run_labels, pos, n_perm=n_perm, seed=None if isinstance(seed, np.random.Generator) else seed
            )
            for name in STATISTICS:
                values[name][1] = test.p[name]
            p_method, p_min = test.method, test.p_min
        if n_boot > 0:
            if isinstance(seed, np.random.Generator):
                run_weights = resample_weights(n_runs, n_boot, seed)
            else:  # same draws as resample_weights(n_runs, n_boot, np.random.default_rng(seed)), cached
                run_weights = _seeded_weights(n_runs, n_boot, None if seed is None else int(seed))
            boot = bootstrap_statistics(xs, ys, run_weights[:, run_index])
            for name in STATISTICS:
                values[name][2], values[name][3] = percentile_interval(boot[name], confidence)
            undefined = int(np.isnan(boot["tau"]).sum())
            if undefined:
                notes.append(f"{undefined}/{n_boot} bootstrap resamples had a constant x or y and were left out")
    tau, tau_p, tau_lo, tau_hi = values["tau"]
    spearman, spearman_p, spearman_lo, spearman_hi = values["spearman"]
    pearson, pearson_p, pearson_lo, pearson_hi = values["pearson"]
    return CorrelationResult(
        tau=tau,
        tau_p=tau_p,
        tau_lo=tau_lo,
        tau_hi=tau_hi,
        spearman=spearman,
        spearman_p=spearman_p,
        spearman_lo=spearman_lo,
        spearman_hi=spearman_hi,
        pearson=pearson,
        pearson_p=pearson_p,
        pearson_lo=pearson_lo,
        pearson_hi=pearson_hi,
        n=n,
        n_dropped=dropped,
        n_boot=int(n_boot),
        confidence=float(confidence),
        n_runs=int(n_runs),
        n_checkpoints=n,
        unit=unit,
        p_method=p_method,
        p_min=p_min,
        expected_sign=expected_sign,
        agrees=_agrees(tau, expected_sign),
        note="; ".join(notes),
    )
