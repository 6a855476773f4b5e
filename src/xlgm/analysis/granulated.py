"""Granulated Kendall coefficient Psi of Jiang et al. 2020 ("Fantastic Generalization Measures and Where to Find
Them", ICLR 2020, §2.2 "Granulated Kendall's coefficient").

Definition (paper, §2.1-§2.2). For a set T of (measure, target) pairs, Kendall's coefficient is

    tau(T) = 1 / (|T| (|T| - 1))
             * sum_{(mu1, g1) in T} sum_{(mu2, g2) in T \\ {(mu1, g1)}} sign(mu1 - mu2) sign(g1 - g2)

(the "tau-a" form: tied pairs count 0 and are not removed from the denominator). With hyperparameter axes
Theta_1 x ... x Theta_n, the coefficient of axis i averages tau over every combination of the OTHER axes, the
set T of each combination being the models in which only axis i varies:

    psi_i = (1 / m_i) sum_{theta_1 in Theta_1} ... sum_{theta_{i-1}} sum_{theta_{i+1}} ... sum_{theta_n}
                tau( union_{theta_i in Theta_i} { (mu(theta_1..theta_n), g(theta_1..theta_n)) } ),
    m_i   = |Theta_1 x ... x Theta_{i-1} x Theta_{i+1} x ... x Theta_n|,
    Psi   = (1 / n) sum_i psi_i.

What is computed here. The paper's grid is complete; an observed grid may not be. The combinations of the other
axes are the ones observed in the frame (NaN being a level of its own,
e.g. ``rho`` for AdamW runs); a group of fewer than 2 rows has no pair, so tau is undefined there and the group is
skipped; psi_i is the mean over the remaining groups, and m_i is their number (``n_groups``). Groups skipped are
counted in ``n_groups_skipped``. With a complete grid of >= 2 values per axis nothing is skipped and this is the
paper's psi_i exactly. An axis without any usable group has psi_i = NaN and is left out of Psi (named in
``note``). Rows where the measure or the target is NaN/inf are dropped first.

``variant="a"`` (default) is the paper's tau above; ``variant="b"`` uses tau-b (`scipy.stats.kendalltau`, tie
corrected, as in `xlgm.analysis.correlation`), undefined -- and skipped -- in a group where the measure or the
target is constant. Without ties the two agree.

If several rows share a configuration of all axes (e.g. several checkpoints per run while ``step`` is not an
axis), they all go into their group: pass one row per run (`xlgm.analysis.frame.select_unit`) or add the axis
that tells them apart to follow the paper's setting of one model per configuration.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from xlgm.analysis.frame import AnalysisInputError, require_columns


@dataclass(frozen=True)
class GranulatedResult:
    """Psi (mean of the defined psi_i) and, per axis, psi_i with the number of groups averaged and skipped.

    ``per_axis`` has columns ``axis, psi, n_groups, n_groups_skipped, n_rows`` (n_rows: rows in the groups used).
    """

    psi: float
    per_axis: pd.DataFrame
    n: int
    axes_used: tuple[str, ...]
    variant: str
    note: str = ""
    psi_by_axis: dict[str, float] = field(default_factory=dict)


def kendall_tau_a(mu: ArrayLike, g: ArrayLike) -> float:
    """Jiang et al. 2020, §2.1: the mean of sign(mu_i - mu_j) sign(g_i - g_j) over ordered pairs i != j.

    NaN for fewer than 2 values. Tied pairs count 0 (no tie correction).
    """
    mu_a = np.asarray(mu, dtype=float)
    g_a = np.asarray(g, dtype=float)
    m = mu_a.size
    if m < 2:
        return math.nan
    s = np.sign(mu_a[:, None] - mu_a[None, :]) * np.sign(g_a[:, None] - g_a[None, :])
    return float(s.sum() / (m * (m - 1)))


def _tau(mu: np.ndarray, g: np.ndarray, variant: str) -> float:
    if variant == "a":
        return kendall_tau_a(mu, g)
    if mu.size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(mu, g).statistic)


def granulated_kendall(
    frame: pd.DataFrame,
    measure: str,
    target: str,
    axes: Sequence[str],
    *,
    variant: Literal["a", "b"] = "a",
) -> GranulatedResult:
    """Jiang et al. 2020 (ICLR), §2.2: per-axis granulated Kendall coefficients psi_i and their mean Psi.

    Args:
        frame: one row per model (see `xlgm.analysis.frame`).
        measure, target: the columns mu and g (e.g. ``"sharpness-diff"`` and ``"mean_target"``).
        axes: the hyperparameter columns Theta_1..Theta_n (e.g. ``["objective", "lr", "seed"]``).
        variant: ``"a"`` for the paper's tau (default), ``"b"`` for tie-corrected tau-b.

    Returns:
        A `GranulatedResult`; see the module docstring for how incomplete grids and degenerate groups are handled.
        Degenerate data give NaN with a note, never an exception.
    """
    axes = list(dict.fromkeys(axes))
    if not axes:
        raise AnalysisInputError("granulated_kendall: at least one hyperparameter axis is required")
    if variant not in ("a", "b"):
        raise ValueError(f"variant must be 'a' or 'b', got {variant!r}")
    require_columns(frame, [measure, target, *axes], "granulated_kendall")
    mu = pd.to_numeric(frame[measure], errors="coerce").to_numpy(dtype=float)
    g = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(mu) & np.isfinite(g)
    mu, g = mu[keep], g[keep]
    # Integer codes of every axis (NaN is a level of its own, as groupby(dropna=False) would make it).
    codes = {a: pd.factorize(frame[a].to_numpy()[keep], use_na_sentinel=False)[0].astype(np.int64) for a in axes}

    rows = []
    for axis in axes:
        others = [a for a in axes if a != axis]
        label = np.zeros(mu.size, dtype=np.int64)  # one label per combination of the other axes' values
        for a in others:
            label = np.unique(label * (codes[a].max(initial=0) + 1) + codes[a], return_inverse=True)[1].ravel()
        order = np.argsort(label, kind="stable")
        bounds = np.flatnonzero(np.diff(label[order])) + 1
        groups = np.split(order, bounds) if mu.size else []
        taus, used_rows, skipped = [], 0, 0
        for idx in groups:
            tau = _tau(mu[idx], g[idx], variant) if idx.size >= 2 else math.nan
            if math.isnan(tau):
                skipped += 1
            else:
                taus.append(tau)
                used_rows += idx.size
        rows.append(
            {
                "axis": axis,
                "psi": float(np.mean(taus)) if taus else math.nan,
                "n_groups": len(taus),
                "n_groups_skipped": skipped,
                "n_rows": used_rows,
            }
        )
    per_axis = pd.DataFrame(rows, columns=["axis", "psi", "n_groups", "n_groups_skipped", "n_rows"])
    defined = per_axis[per_axis["psi"].notna()]
    notes = []
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} row(s) with NaN/inf dropped")
    undefined = per_axis.loc[per_axis["psi"].isna(), "axis"].tolist()
    if undefined:
        notes.append(f"psi undefined (no group with a defined tau) for axis/axes {undefined}, left out of Psi")
    psi = float(defined["psi"].mean()) if len(defined) else math.nan
    return GranulatedResult(
        psi=psi,
        per_axis=per_axis,
        n=int(keep.sum()),
        axes_used=tuple(defined["axis"]),
        variant=variant,
        note="; ".join(notes),
        psi_by_axis=dict(zip(per_axis["axis"], per_axis["psi"])),
    )
