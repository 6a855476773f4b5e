"""Multiple-testing adjustment of the p-values of one table: Holm (family-wise error) and Benjamini-Hochberg
(false discovery rate).

A table that reports many (measure, target) tests and then lists the strongest invites reading its smallest
p-values as discoveries; with 80 tests at 0.05, four are expected under the null alone. The family is every test
the table draws from (every row with a p-value), and each row gets

* Holm (1979), step-down: with p_(1) <= ... <= p_(m), adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
  Rejecting where it is <= alpha keeps P(any false rejection) <= alpha under any dependence between the tests;
* Benjamini & Hochberg (1995), step-up: adjusted p_(i) = min_{j >= i} min(1, m p_(j) / j)
  (`scipy.stats.false_discovery_control(method='bh')`). Rejecting where it is <= alpha keeps the expected share
  of false rejections among the rejections <= alpha for independent or positively dependent tests.

NaN p-values (an undefined test) are not part of the family and stay NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the input order (NaN stays NaN and is not counted in m)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (`scipy.stats.false_discovery_control`), NaN kept out of the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = stats.false_discovery_control(p[finite], method="bh")
    return out


def adjust_table(table: pd.DataFrame, p_column: str, *, alpha: float = 0.05) -> pd.DataFrame:
    """A copy of `table` with ``p_holm``, ``p_bh`` (over all its rows: one family) and ``survives_holm``,
    ``survives_bh`` (adjusted p <= alpha; False for a NaN p)."""
    out = table.copy()
    p = pd.to_numeric(out[p_column], errors="coerce").to_numpy(dtype=float)
    out["p_holm"] = holm(p)
    out["p_bh"] = benjamini_hochberg(p)
    out["survives_holm"] = np.nan_to_num(out["p_holm"].to_numpy(dtype=float), nan=np.inf) <= alpha
    out["survives_bh"] = np.nan_to_num(out["p_bh"].to_numpy(dtype=float), nan=np.inf) <= alpha
    return out
