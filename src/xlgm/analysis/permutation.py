"""Run-level permutation tests of Kendall tau-b, Spearman rho and Pearson r when the rows come in runs.

The rows of a study are checkpoints; checkpoints of one run share their initialisation, data order and most of
their training, so they are not independent and a test that treats them as such (scipy's p-values, a
permutation of rows) is anti-conservative. Here the unit that is permuted is the run.

Layout. Every row has a run and a position in the run (its training step, so that checkpoint k of one run is
compared with checkpoint k of another; without positions, its order within the run). A measure with one row a
run has one position (`run_positions`): its test is the plain permutation of the R run values. The values form two
(runs x positions) grids X and Y, NaN where a run has no finite value at a position.

Null hypothesis and permutation. H0: the runs are exchangeable and a run's measure trajectory (its row of X) is
independent of its target trajectory (its row of Y). Under H0, pairing the measure row of run pi(a) with the
target row of run a, for any permutation pi of the runs, gives data with the same distribution as the observed
pairing, so the statistic's permutation distribution is its exact null distribution (Pitman 1937; Good 2005,
Permutation, Parametric and Bootstrap Tests of Hypotheses, ch. 3). Within-run dependence is kept intact (a run's
checkpoints move together), and so is any trend over training steps that all runs share: a measure that merely
follows training time, as accuracy does, is no evidence against H0. The statistic of a permutation is computed
on the cells where both the moved measure and the target are finite.

p-value. Two-sided, p = P(|T*| >= |T|): over all R! permutations when R! <= n_perm (exact; the identity is one
of them, so p >= 1/R!), else over n_perm random permutations with p = (1 + #{|T*| >= |T|}) / (1 + n_perm)
(Phipson & Smyth 2010; >= 1 / (1 + n_perm)). This is `scipy.stats.permutation_test(..., permutation_type=
'pairings', alternative='greater')` with |T| as the statistic (checked in the tests); the permutations are drawn
here so that one set serves the three statistics and every (measure, target) pair of a table. With R runs the
smallest attainable p is 1/R! (4 runs: 0.042), reported as ``p_min``: a study with few runs cannot reject H0
however strong the checkpoint-level correlation looks.

Cost. On a complete grid (every run has a finite value at every position) the ranks, means, variances and tie
counts are the same for every permutation and only the cross terms move: R per permutation for Pearson and
Spearman, R^2 for Kendall through M[c, d, a, b] = sum_{k,l} sign(x[c,k] - x[d,l]) sign(y[a,k] - y[b,l]), since
the numerator of permutation pi is sum_{a,b} M[pi(a), pi(b), a, b] (M costs O(R^4 K^2) once). With missing
cells the ranks are recomputed per permutation (O(B N log N) for B permutations of N cells) and Kendall's
numerator and tie counts go through the same tensor with the masks folded in (R <= 40 runs), else through the
N x N sign matrices of each permutation (O(B N^2)).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

MAX_RUNS_TENSOR = 40
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Layout:
    """Where each row sits: its run (0..R-1) and its position (0..K-1) in the (runs x positions) grid."""

    run: np.ndarray
    position: np.ndarray
    n_runs: int
    n_positions: int

    def grid(self, values: np.ndarray) -> np.ndarray:
        out = np.full((self.n_runs, self.n_positions), np.nan)
        out[self.run, self.position] = values
        return out


def layout(runs, positions=None) -> Layout:
    """The grid of `runs` (any hashable labels, one per row) and `positions` (e.g. steps; default: the order of
    the rows within their run). Raises ValueError if two rows share a (run, position)."""
    run, _ = pd.factorize(pd.Series(runs, dtype=object), sort=True)
    run = np.asarray(run, dtype=np.intp)
    if positions is None:
        position = pd.Series(run).groupby(run).cumcount().to_numpy(dtype=np.intp)
    else:
        position, _ = pd.factorize(pd.Series(positions), sort=True)
        position = np.asarray(position, dtype=np.intp)
    cells = run.astype(np.int64) * (position.max(initial=0) + 1) + position
    if np.unique(cells).size != cells.size:
        raise ValueError("two rows share a run and a position: pass distinct positions (e.g. steps) within a run")
    return Layout(run, position, int(run.max(initial=-1) + 1), int(position.max(initial=-1) + 1))


def run_positions(runs, positions):
    """The positions to pair rows by: `positions` as given, or None (every row at one position) when no run has
    more than one row. A measure taken once a run (e.g. at its best checkpoint) is then permuted as the R run
    values it is: runs whose best steps differ would otherwise never be paired, and the statistic of every
    permutation would rest on the few runs that share a step."""
    labels = pd.Series(list(runs), dtype=object)
    if positions is None or labels.empty or labels.value_counts().max() == 1:
        return None
    return positions


@functools.lru_cache(maxsize=8)
def run_permutations(n_runs: int, n_perm: int, seed: int | None) -> tuple[np.ndarray, bool]:
    """(B, R) permutations of R runs and whether they are all R! of them (exact), the identity first.

    Exact when R! <= n_perm, else the identity followed by n_perm permutations drawn with
    `numpy.random.Generator.permuted` from a Generator seeded with `seed`."""
    if n_runs <= 8 and math.factorial(n_runs) <= n_perm:
        perms = np.array(list(itertools.permutations(range(n_runs))), dtype=np.intp).reshape(-1, n_runs)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        drawn = rng.permuted(np.tile(np.arange(n_runs, dtype=np.intp), (n_perm, 1)), axis=1)
        perms = np.vstack([np.arange(n_runs, dtype=np.intp), drawn])
        exact = False
    perms.setflags(write=False)
    return perms, exact


def _masked_pearson(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pearson r of a and b over the valid cells of each row (rows: permutations)."""
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(valid, a, 0.0)
        b = np.where(valid, b, 0.0)
        ma = a.sum(axis=1) / count
        mb = b.sum(axis=1) / count
        da = np.where(valid, a - ma[:, None], 0.0)
        db = np.where(valid, b - mb[:, None], 0.0)
        cov = (da * db).sum(axis=1)
        r = cov / np.sqrt((da * da).sum(axis=1) * (db * db).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


def _pair_matrix(m: np.ndarray) -> np.ndarray:
    """m[c, d, a, b] laid out as P[a*R + c, b*R + d] (contiguous), so that a permutation pi gathers
    sum_{a,b} m[pi(a), pi(b), a, b] = sum_{a,b} P[a*R + pi(a), b*R + pi(b)]."""
    r = m.shape[0]
    return np.ascontiguousarray(m.transpose(2, 0, 3, 1)).reshape(r * r, r * r)


def _gather_pairs(pairs: np.ndarray, perms: np.ndarray) -> np.ndarray:
    r = perms.shape[1]
    rows = np.arange(r)[None, :] * r + perms
    out = np.empty(perms.shape[0])
    step = max(1, _CHUNK_ELEMENTS // max(r * r, 1))
    for start in range(0, perms.shape[0], step):
        idx = rows[start : start + step]
        out[start : start + step] = pairs[idx[:, :, None], idx[:, None, :]].sum(axis=(1, 2))
    return out


def _kendall_tensor(x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """tau-b of every permutation via M, NX, NY (module docstring); x, y: (R, K) grids with NaN."""
    vx, vy = np.isfinite(x), np.isfinite(y)
    with np.errstate(invalid="ignore"):
        sx = np.nan_to_num(np.sign(x[:, :, None, None] - x[None, None, :, :]))  # [c, k, d, l]
        sy = np.nan_to_num(np.sign(y[:, :, None, None] - y[None, None, :, :]))  # [a, k, b, l]
    # [c, a, k]: the measure of run c and the target of run a are both finite at position k
    both = (vx[:, None, :] & vy[None, :, :]).astype(float)
    num, den_x, den_y = (
        _gather_pairs(_pair_matrix(np.einsum(f"cak,dbl,{terms}->cdab", both, both, *ops, optimize=True)), perms)
        for terms, ops in (("ckdl,akbl", (sx, sy)), ("ckdl", (np.abs(sx),)), ("akbl", (np.abs(sy),)))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(num / np.sqrt(den_x * den_y), -1.0, 1.0)


def _kendall_direct(x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """tau-b of every permutation from the sign matrices of its N cells (for many runs)."""
    yf = y.ravel()
    vy = np.isfinite(yf)
    with np.errstate(invalid="ignore"):
        sy = np.nan_to_num(np.sign(yf[:, None] - yf[None, :]))
    n = yf.size
    out = np.empty(perms.shape[0])
    step = max(1, _CHUNK_ELEMENTS // max(n * n, 1))
    for start in range(0, perms.shape[0], step):
        xp = x[perms[start : start + step]].reshape(-1, n)
        valid = (np.isfinite(xp) & vy).astype(float)
        pair = valid[:, :, None] * valid[:, None, :]
        with np.errstate(invalid="ignore"):
            sx = np.nan_to_num(np.sign(xp[:, :, None] - xp[:, None, :]))
        num = (pair * sx * sy).sum(axis=(1, 2))
        den_x = (pair * np.abs(sx)).sum(axis=(1, 2))
        den_y = (pair * np.abs(sy)).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = np.clip(num / np.sqrt(den_x * den_y), -1.0, 1.0)
    return out


def _centred_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C[c, a] = sum_k (a[c, k] - mean a) (b[a', k] - mean b): the cross products of run c's values of `a`
    with run a''s values of `b`, both centred over the complete grid."""
    da, db = a - a.mean(), b - b.mean()
    return da @ db.T


def _complete_statistics(x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> dict[str, np.ndarray]:
    """A grid without missing cells: every permutation uses every cell, so the ranks, means, variances and
    tie counts do not change and only the cross terms do (R, or R^2 for Kendall, per permutation)."""
    r, k = x.shape
    runs = np.arange(r)
    out = {}
    for name, (a, b) in {
        "pearson": (x, y),
        "spearman": (stats.rankdata(x, axis=None).reshape(r, k), stats.rankdata(y, axis=None).reshape(r, k)),
    }.items():
        cross = _centred_products(a, b)
        norm = math.sqrt(float(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum()))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.clip(cross[perms, runs[None, :]].sum(axis=1) / norm, -1.0, 1.0)
    sx = np.sign(x.reshape(-1)[:, None] - x.reshape(-1)[None, :]).reshape(r, k, r, k)
    sy = np.sign(y.reshape(-1)[:, None] - y.reshape(-1)[None, :]).reshape(r, k, r, k)
    norm = math.sqrt(float(np.abs(sx).sum() * np.abs(sy).sum()))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.clip(
            _gather_pairs(_pair_matrix(np.einsum("ckdl,akbl->cdab", sx, sy, optimize=True)), perms) / norm, -1.0, 1.0
        )
    out["tau"] = tau
    return {name: out[name] for name in ("tau", "spearman", "pearson")}


def permuted_statistics(
    x: np.ndarray, y: np.ndarray, perms: np.ndarray, *, method: str = "auto"
) -> dict[str, np.ndarray]:
    """Kendall tau-b, Spearman and Pearson for every permutation (rows of `perms`) of the runs of the grids
    x, y (R, K): row b pairs the measures of run perms[b, a] with the targets of run a. NaN where undefined.

    method: "tensor" (R^2 per permutation), "direct" (N^2 per permutation) or "auto" (for a grid without
    missing cells the cross terms only; else tensor for <= 40 runs, direct beyond)."""
    r, k = x.shape
    if method == "auto" and r * k >= 3 and np.isfinite(x).all() and np.isfinite(y).all():
        return _complete_statistics(x, y, perms)
    xp = x[perms].reshape(perms.shape[0], r * k)
    yp = np.broadcast_to(y.reshape(1, r * k), xp.shape)
    valid = np.isfinite(xp) & np.isfinite(yp)
    rank_x = stats.rankdata(np.where(valid, xp, np.nan), axis=1, nan_policy="omit")
    rank_y = stats.rankdata(np.where(valid, yp, np.nan), axis=1, nan_policy="omit")
    use_tensor = method == "tensor" or (method == "auto" and r <= MAX_RUNS_TENSOR)
    tau = _kendall_tensor(x, y, perms) if use_tensor else _kendall_direct(x, y, perms)
    out = {"tau": tau, "spearman": _masked_pearson(rank_x, rank_y, valid), "pearson": _masked_pearson(xp, yp, valid)}
    for values in out.values():
        values[valid.sum(axis=1) < 3] = np.nan
    return out


@dataclass(frozen=True)
class PermutationTest:
    """Two-sided run-level permutation p-values of tau, spearman and pearson, how many permutations, whether
    they were all of them (exact), and the smallest p the test could give (p_min)."""

    p: dict[str, float]
    n_perm: int
    exact: bool
    p_min: float
    n_runs: int

    @property
    def method(self) -> str:
        kind = "all" if self.exact else "random"
        return f"{kind} {self.n_perm} permutations of {self.n_runs} runs"


def permutation_test(
    x, y, runs, positions=None, *, n_perm: int = 9999, seed: int | None = 0, method: str = "auto"
) -> PermutationTest:
    """Run-level permutation p-values (module docstring) for finite paired rows x, y with their runs/positions."""
    grid = layout(runs, positions)
    gx, gy = grid.grid(np.asarray(x, dtype=float)), grid.grid(np.asarray(y, dtype=float))
    perms, exact = run_permutations(grid.n_runs, int(n_perm), seed)
    values = permuted_statistics(gx, gy, perms, method=method)
    p = {}
    for name, t in values.items():
        observed = abs(t[0])
        if not math.isfinite(observed):
            p[name] = math.nan
            continue
        # |T*| >= |T| up to rounding: permutations that reorder the same pairs give the same value
        hits = int(np.sum(np.abs(t[1:] if not exact else t) >= observed * (1 - 1e-12) - 1e-14))
        p[name] = hits / len(t) if exact else (1 + hits) / len(t)
    b = len(perms)
    return PermutationTest(p, b if exact else b - 1, exact, 1.0 / b, grid.n_runs)
