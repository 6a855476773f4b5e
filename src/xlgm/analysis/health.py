"""Measure health across a study: can each measure's values be correlated at all?

Every measure result carries its own health (`xlgm.measures.base.MeasureHealth`: converged, residual against
tolerance, iteration cap reached, saturated at a search bound, NaN/inf), stored with the result. A correlation
of values that did not converge (a 2-step Lanczos estimate), that sit at a search bound (a bisection whose every
step overshot returns the same bound everywhere) or that do not vary says nothing about the measure, so
`measure_health` summarises every measure over the study's checkpoints and says whether it is fit for a verdict:

    healthy = every checkpoint's health is recorded, none failed to converge or hit its iteration cap, none is
              saturated, no value is NaN/inf, and the values are not all equal.

Results measured by an xlgm that did not record health (no ``health`` in the stored result) are unknown and
treated as unhealthy: a study can only vouch for what it checked; measuring again records it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

HEALTH_COLUMNS = ["measure", "n_units", "n_converged", "n_saturated", "n_nan", "constant", "healthy", "reason"]


def stored_health(details: Any) -> dict[str, Any] | None:
    """The health a stored measure result recorded (the ``health`` entry of `MeasureResult.to_dict`, as a dict or
    its JSON text); None when it recorded none."""
    if details is None or (isinstance(details, float) and math.isnan(details)):
        return None
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except json.JSONDecodeError:
            return None
    if not isinstance(details, Mapping):
        return None
    health = details.get("health")
    return dict(health) if isinstance(health, Mapping) else None


def _is_constant(values: np.ndarray) -> bool:
    if values.size < 2:
        return False
    scale = max(float(np.abs(values).max()), 1e-300)
    return float(np.ptp(values)) <= 1e-12 * scale


def _health_of(measure: str, values: np.ndarray, healths: list[dict[str, Any] | None]) -> dict[str, Any]:
    n = len(values)
    finite = values[np.isfinite(values)]
    n_nan = int(n - finite.size)
    recorded = [h for h in healths if h is not None]
    iterative = any(h.get("converged") is not None for h in recorded)
    not_converged = [h for h in recorded if h.get("converged") is False]
    capped = sum(bool(h.get("iteration_cap_reached")) for h in recorded)
    saturated = sum(bool(h.get("saturated")) for h in recorded)
    constant = _is_constant(finite)
    reasons = []
    if n == 0:
        reasons.append("no values")
    if len(recorded) < n:
        reasons.append(
            f"health not recorded at {n - len(recorded)} of {n} checkpoints (measured by an older xlgm: measure again)"
        )
    if not_converged:
        residuals = [h["residual"] for h in not_converged if h.get("residual") is not None]
        tolerances = [h["tolerance"] for h in not_converged if h.get("tolerance") is not None]
        detail = []
        if capped:
            detail.append("iteration cap reached" if capped == len(not_converged) else f"iteration cap at {capped}")
        if residuals and tolerances:
            detail.append(f"residual up to {max(residuals):.3g}, tolerance {max(tolerances):.3g}")
        reasons.append(
            f"not converged at {len(not_converged)} of {n} checkpoints" + (f" ({'; '.join(detail)})" if detail else "")
        )
    elif capped:
        reasons.append(f"iteration cap reached at {capped} of {n} checkpoints")
    if saturated:
        reasons.append(f"saturated at the search bound at {saturated} of {n} checkpoints")
    if constant:
        reasons.append(f"constant across units ({finite[0]:.6g})")
    if n_nan:
        reasons.append(f"{n_nan} NaN/inf")
    return {
        "measure": measure,
        "n_units": n,
        "n_converged": sum(h.get("converged") is True for h in recorded) if iterative else pd.NA,
        "n_saturated": saturated,
        "n_nan": n_nan,
        "constant": constant,
        "healthy": not reasons,
        "reason": "; ".join(reasons),
    }


def measure_health(rows: pd.DataFrame, measures: list[str] | None = None) -> pd.DataFrame:
    """One row per measure (columns `HEALTH_COLUMNS`) from the stored results of the study's checkpoints.

    Args:
        rows: one row per (checkpoint, measure): ``measure``, ``value`` and ``details`` (the stored result: a dict
            or JSON text with a ``health`` entry, or None).
        measures: the measures to report, in this order (default: those in `rows`); one without rows has
            n_units 0 and is unhealthy ("no values").

    ``n_converged`` is <NA> for a measure with nothing to converge (no result reports ``converged``);
    ``reason`` is "" for a healthy measure, else the problems joined by "; ".
    """
    names = list(measures) if measures is not None else list(dict.fromkeys(rows["measure"]))
    out = []
    for name in names:
        sub = rows[rows["measure"] == name]
        values = pd.to_numeric(sub["value"], errors="coerce").to_numpy(dtype=float)
        healths: list[dict[str, Any] | None] = (
            [stored_health(d) for d in sub["details"]] if "details" in sub.columns else [None] * len(sub)
        )
        out.append(_health_of(name, values, healths))
    table = pd.DataFrame(out, columns=HEALTH_COLUMNS)
    table["n_converged"] = table["n_converged"].astype("Int64")
    return table
