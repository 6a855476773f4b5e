"""Transfer beyond the fit: how much of a unit's target-language accuracy its source-language accuracy explains,
and what is left over.

Across the checkpoints of a study, zero-shot accuracy moves with source (English) accuracy: a better-fitted
model is better in every language. A measure that tracks the fit therefore correlates with target accuracy,
and with the transfer gap too (gap = source - target rises with source accuracy whenever the slope of target on
source is below 1), without saying anything about transfer as such. The *transfer residual* removes the fit:

    residual_i = target_i - (a + b * source_i)

with (a, b) the ordinary least-squares line of target on source fitted across the study's units (every row of
the frame the analysis correlates over: checkpoints, or runs). For the mean over the target languages it is the
``transfer_residual`` target; per target language l, ``resid_<l>`` uses a line fitted for l alone.

Validation. In-sample, OLS residuals are uncorrelated with the source accuracy by construction (their Pearson
correlation with it is 0 up to rounding; Kendall's tau need not be exactly 0), so a measure that only tracks
the fit has no linear route to them. The line is also fitted out of fold: for each fold (a configuration, i.e.
the runs that share every setting but the seed; or a run where no configurations are given), (a, b) are fitted
on the other folds and the held-out fold's residuals computed from that line (``transfer_residual_oof``). The
out-of-fold R^2 = 1 - sum(oof residual^2) / sum((target - mean target)^2) says how well the line carries to
configurations it has not seen; when it is close to the in-sample R^2 the line is not an artefact of a few
configurations, and the two residuals rank the units alike. `fit_summary` reports both, with the slope,
intercept and the correlation of each residual with the source accuracy.

The fit's shape. Target accuracy need not be a straight line in source accuracy: over a wide range of fit it
bends (it rises fast from barely trained models and flattens near the top), and a straight line then leaves
the bend in the residual, where a measure that peaks at mid fit would seem to predict transfer. The fit is a
polynomial of degree 1, 2 or 3 (`DEGREES`), the one with the smallest out-of-fold error over the folds below
(the lowest degree on a tie, and a straight line where the folds are too small for a curve); `fit_summary`
reports the degree chosen with the straight line's slope and intercept. The degree is chosen once, from all the
folds, and the out-of-fold residuals are then those of that degree: choosing among three shapes is too small a
search for its optimism to matter, and a degree that changed from fold to fold would make the two residuals
harder to compare.

Why no partial rank correlation. A partial Spearman (the Pearson correlation of the measure's and the target's
rank residuals on the source's ranks) asks a different question (is the part of the *measure* not explained by
the fit related to the part of transfer not explained by it?) and needs its own permutation scheme
(Freedman & Lane 1983: permute the residuals of the reduced model, in whole runs) whose exactness is lost with
clustered residuals; on the shipped study partial Kendall and partial Spearman disagree in sign. The residual
target keeps the measure as it is and asks whether it predicts what the fit does not, which is the question,
and the run-level permutation of the measure against a fixed residual vector is exact under its null.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

MIN_FIT_ROWS = 3
DEGREES = (1, 2, 3)  # a straight line, then curves that bend once or twice


@dataclass(frozen=True)
class LineFit:
    """The fit of target on source over the finite rows (a polynomial of `degree`; the straight line's intercept
    and slope) and how well it fits, in sample and out of fold."""

    intercept: float
    slope: float
    r2: float  # in-sample R^2 (= Pearson r^2)
    oof_r2: float  # 1 - SS(out-of-fold residuals) / SS(target about its mean)
    n: int
    n_folds: int
    pearson_source_residual: float  # in sample: 0 by construction
    tau_source_residual: float
    tau_source_residual_oof: float
    tau_residual_oof: float  # Kendall tau between the in-sample and the out-of-fold residuals
    degree: int = 1  # the fit's degree (`choose_degree`); intercept and slope are the straight line's

    def as_dict(self) -> dict:
        return asdict(self)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if x.size < 2 or np.all(x == x[0]):
        return math.nan, math.nan
    fit = stats.linregress(x, y)
    return float(fit.intercept), float(fit.slope)


def _fits(x: np.ndarray, degree: int) -> bool:
    """Whether a polynomial of `degree` can be fitted to these source values (more rows than coefficients)."""
    return x.size >= max(MIN_FIT_ROWS, degree + 2) and np.unique(x).size > degree


def _predict(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    """The degree-`degree` least-squares polynomial of y on x, evaluated at `x` (a straight line by linregress)."""
    if degree == 1:
        a, b = _line(x_fit, y_fit)
        return a + b * x
    return np.polyval(np.polyfit(x_fit, y_fit, degree), x)


def _oof(x: np.ndarray, y: np.ndarray, labels: np.ndarray, keep: np.ndarray, degree: int) -> np.ndarray:
    out = np.full(x.shape, np.nan)
    for fold in np.unique(labels):
        held = labels == fold
        train = keep & ~held
        if not _fits(x[train], degree):
            continue
        rows = held & keep
        out[rows] = y[rows] - _predict(x[train], y[train], x[rows], degree)
    return out


def _labels(folds: ArrayLike) -> np.ndarray:
    return pd.factorize(pd.Series(np.asarray(folds, dtype=object).ravel()))[0]


def choose_degree(source: ArrayLike, target: ArrayLike, folds: ArrayLike | None) -> int:
    """The degree of `DEGREES` whose out-of-fold residuals have the smallest sum of squares (the lowest on a tie);
    1 without folds, or when a curve cannot be fitted without some fold."""
    if folds is None:
        return 1
    x, y = np.asarray(source, dtype=float), np.asarray(target, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    labels = _labels(folds)
    best, best_sse = 1, math.inf
    for degree in DEGREES:
        oof = _oof(x, y, labels, keep, degree)
        if not np.all(np.isfinite(oof[keep])):
            break  # a fold too small for this degree: no higher one either
        sse = float(np.sum(oof[keep] ** 2))
        if sse < best_sse:
            best, best_sse = degree, sse
    return best


def residuals(
    source: ArrayLike, target: ArrayLike, folds: ArrayLike | None = None, degree: int | None = None
) -> np.ndarray:
    """target - fit(source), the fit a polynomial of `degree` (by default the one `choose_degree` picks with
    `folds`; a straight line without), over the rows where both are finite; NaN elsewhere (and everywhere when
    fewer than 3 rows are finite or the source is constant)."""
    x, y = np.asarray(source, dtype=float), np.asarray(target, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    out = np.full(x.shape, np.nan)
    if keep.sum() < MIN_FIT_ROWS:
        return out
    degree = choose_degree(x, y, folds) if degree is None else degree
    out[keep] = y[keep] - _predict(x[keep], y[keep], x[keep], degree)
    return out


def out_of_fold_residuals(
    source: ArrayLike, target: ArrayLike, folds: ArrayLike, degree: int | None = None
) -> np.ndarray:
    """Each row's residual from the fit of `degree` (by default the one `choose_degree` picks) on the rows of the
    other folds (NaN where that fit cannot be made or the row itself is not finite)."""
    x, y = np.asarray(source, dtype=float), np.asarray(target, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    degree = choose_degree(x, y, folds) if degree is None else degree
    return _oof(x, y, _labels(folds), keep, degree)


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < MIN_FIT_ROWS or np.all(a[keep] == a[keep][0]) or np.all(b[keep] == b[keep][0]):
        return math.nan
    return float(stats.kendalltau(a[keep], b[keep]).statistic)


def fit_summary(source: ArrayLike, target: ArrayLike, folds: ArrayLike) -> LineFit:
    """The line, its in-sample and out-of-fold R^2 and how both residuals relate to the source (module doc)."""
    x, y = np.asarray(source, dtype=float), np.asarray(target, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    n_folds = int(pd.Series(np.asarray(folds, dtype=object).ravel())[keep].nunique())
    nan = math.nan
    if n < MIN_FIT_ROWS:
        return LineFit(nan, nan, nan, nan, n, n_folds, nan, nan, nan, nan)
    a, b = _line(x[keep], y[keep])
    degree = choose_degree(x, y, folds)
    res = residuals(x, y, degree=degree)
    oof = out_of_fold_residuals(x, y, folds, degree=degree)
    total = float(np.sum((y[keep] - y[keep].mean()) ** 2))
    oof_keep = keep & np.isfinite(oof)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - float(np.sum(res[keep] ** 2)) / total if total > 0 else nan
        # out of fold only where every row has a held-out prediction (a fold's complement may be too small)
        oof_r2 = 1.0 - float(np.sum(oof[oof_keep] ** 2)) / total if total > 0 and oof_keep.sum() == n else nan
        pearson = float(np.corrcoef(x[keep], res[keep])[0, 1]) if math.isfinite(b) else nan
    return LineFit(
        intercept=a,
        slope=b,
        r2=r2,
        oof_r2=oof_r2,
        n=n,
        n_folds=n_folds,
        pearson_source_residual=pearson,
        tau_source_residual=_tau(x, res),
        tau_source_residual_oof=_tau(x, oof),
        tau_residual_oof=_tau(res, oof),
        degree=degree,
    )
