"""Confidence intervals of accuracies: the Wilson score interval of a binomial proportion.

An accuracy measured on n rows is a binomial proportion; its Wilson interval (Wilson 1927; Newcombe 1998, the
method of `scipy.stats.binomtest(...).proportion_ci(method="wilson")`) keeps its coverage near the nominal level
for small n and for proportions near 0 or 1, where the normal approximation p +- z*sqrt(p(1-p)/n) does not.
`wilson_interval` is the same closed form, vectorised over numpy arrays (the report computes thousands of them);
its tests compare it with scipy's.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtri

from xlgm.analysis.frame import AnalysisInputError


def wilson_interval(
    correct: ArrayLike, n: ArrayLike, confidence: float = 0.95
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Two-sided Wilson score interval (low, high) of the proportion correct / n.

    Args:
        correct: the number of correct rows, 0 <= correct <= n; an int or an array. A non-integer count is read
            as proportion * n (e.g. a mean of accuracies on the same n rows times n).
        n: the number of rows (>= 1), an int or an array broadcastable with `correct`.
        confidence: the confidence level, strictly between 0 and 1.

    Returns:
        (low, high): floats for scalar inputs, arrays of the broadcast shape otherwise. As in scipy, low is exactly
        0 when correct = 0 and high exactly 1 when correct = n.

    Raises:
        AnalysisInputError: n < 1, correct outside [0, n], a NaN, or confidence outside (0, 1).
    """
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise AnalysisInputError(f"wilson_interval: confidence must be in (0, 1), got {confidence}")
    k, rows = np.broadcast_arrays(np.asarray(correct, dtype=np.float64), np.asarray(n, dtype=np.float64))
    if np.isnan(k).any() or np.isnan(rows).any():
        raise AnalysisInputError("wilson_interval: correct and n must not be NaN")
    if (rows < 1).any():
        raise AnalysisInputError(f"wilson_interval: n must be >= 1, got {rows[rows < 1].ravel()[0]:g}")
    if ((k < 0) | (k > rows)).any():
        raise AnalysisInputError("wilson_interval: correct must be between 0 and n")
    z = ndtri(0.5 + 0.5 * confidence)
    p = k / rows
    denom = 2.0 * (rows + z * z)
    center = (2.0 * rows * p + z * z) / denom
    delta = z / denom * np.sqrt(4.0 * rows * p * (1.0 - p) + z * z)
    low = np.where(k == 0, 0.0, center - delta)
    high = np.where(k == rows, 1.0, center + delta)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high
