"""Conditional-mutual-information criterion K(mu) of Jiang et al. 2020 ("Fantastic Generalization Measures and
Where to Find Them", ICLR 2020, §2.3 "Conditional independence test: towards capturing the causal
relationships"), also the scoring rule of the NeurIPS 2020 PGDL competition (Jiang et al. 2020, "NeurIPS 2020
Competition: Predicting Generalization in Deep Learning").

What is computed, exactly
-------------------------
Models are the rows of the frame (measure mu, target g, hyperparameter axes A_1..A_k). For an ordered pair of
models (i, j):

    V_g = sign(g_i - g_j),    V_mu = sign(mu_i - mu_j),    U_S = ((theta_i^a, theta_j^a) for a in S)

where theta^a is a model's value on axis a; U_S is the pair of values of both models on every axis of S
(PGDL's ``make_key_from_models``). The pairs are all ordered pairs i != j of models whose configurations differ
on at least one axis (``pairs="differ"``, default; ``pairs="all"`` keeps pairs with an identical configuration,
e.g. two checkpoints of one run). A pair with a tie in g or in mu (V = 0) is left out, so V_g and V_mu are the
+-1 Bernoulli variables of the paper; the counts left out are reported. Probabilities are the empirical
frequencies over the remaining N pairs: p(u) = N_u / N, p(v_g, v_mu | u) = N_{u, v_g, v_mu} / N_u. Then, in bits,

    I(V_mu; V_g | U_S) = sum_u p(u) sum_{v_mu, v_g in {+-1}} p(v_mu, v_g | u)
                                     log2[ p(v_mu, v_g | u) / (p(v_mu | u) p(v_g | u)) ]
    H(V_g | U_S)       = - sum_u p(u) sum_{v_g in {+-1}} p(v_g | u) log2 p(v_g | u)
    I_hat(S)           = I(V_mu; V_g | U_S) / H(V_g | U_S)                     (in [0, 1])
    K(mu)              = min_{S subset of axes, |S| <= max_conditioning} I_hat(S)

(S = {} is included: then U_S is constant and I_hat is the normalised mutual information of V_mu and V_g.) A set S
with H(V_g | U_S) = 0 -- the axes in S already fix every pair's order of g, typically when S is all axes and each
cell holds one pair -- has I_hat = 0/0 and is skipped (NaN in ``per_subset``); K is the minimum over the others.
K near 1: the measure orders the models like the target even after conditioning on any (<= 2) hyperparameters;
K near 0: for some S the measure carries no information about the target beyond those hyperparameters.

Notes. (1) Mutual information is blind to the direction: mu = -g also has K = 1; read the sign from the
Kendall correlation. (2) The paper's g is the generalization gap; here g is whatever target column is given
(accuracy or transfer gap); reversing g's order does not change K. (3) Differences from the PGDL scoring program:
PGDL averages MI and entropy over cells with equal weight and loops over |S| = 2 only, counts the self-pair i = j
and maps ties to -1; here cells are weighted by p(u) as in the paper's equation, |S| <= max_conditioning
(including {} and singletons, as the paper's "|S| <= 2"), and ties and self-pairs are left out.

Cost: O(n^2) pairs, each subset S one `numpy.bincount`; n of a few hundred (~10^5 pairs) takes milliseconds
per subset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np
import pandas as pd

from xlgm.analysis.frame import require_columns


@dataclass(frozen=True)
class CMIResult:
    """K(mu) = min_S I_hat(S), the minimising S, and I, H, I_hat for every conditioning set tried.

    ``per_subset`` columns: ``conditioning`` (tuple of axes), ``size``, ``cmi_bits`` (I(V_mu; V_g | U_S)),
    ``entropy_bits`` (H(V_g | U_S)), ``normalized`` (I_hat, NaN when H = 0), ``n_cells`` (distinct u observed).
    ``n`` rows used, ``n_pairs`` ordered pairs counted, ``n_pairs_tied`` pairs left out for a tie in mu or g,
    ``n_pairs_same_config`` pairs left out for an identical configuration (``pairs="differ"``).
    """

    k: float
    argmin: tuple[str, ...] | None
    per_subset: pd.DataFrame
    n: int
    n_pairs: int
    n_pairs_tied: int
    n_pairs_same_config: int
    note: str = ""


def _codes(column: pd.Series) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(column, use_na_sentinel=False)  # NaN is a level of its own
    return codes.astype(np.int64), max(len(uniques), 1)


def _pair_cells(codes: list[tuple[np.ndarray, int]], left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, int]:
    """One integer per pair for U_S: the (left value, right value) on every axis of S, re-densified per axis."""
    cell = np.zeros(left.size, dtype=np.int64)
    n_cells = 1
    for code, levels in codes:
        cell = cell * (levels * levels) + code[left] * levels + code[right]
        cell, uniques = pd.factorize(cell)
        n_cells = len(uniques)
    return cell, n_cells


def _information(v_g: np.ndarray, v_mu: np.ndarray, cell: np.ndarray, n_cells: int) -> tuple[float, float]:
    """(I(V_mu; V_g | U), H(V_g | U)) in bits from the empirical frequencies (module docstring)."""
    counts = np.bincount(cell * 4 + v_g * 2 + v_mu, minlength=n_cells * 4).reshape(n_cells, 2, 2).astype(float)
    total = counts.sum()
    n_u = counts.sum(axis=(1, 2))[:, None, None]
    n_ug = counts.sum(axis=2, keepdims=True)
    n_um = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = counts / total * np.log2(counts * n_u / (n_ug * n_um))
        h_terms = -n_ug / total * np.log2(n_ug / n_u)
    info = float(np.where(counts > 0, terms, 0.0).sum())
    entropy = float(np.where(n_ug > 0, h_terms, 0.0).sum())
    return max(info, 0.0), max(entropy, 0.0)


def conditional_mutual_information(
    frame: pd.DataFrame,
    measure: str,
    target: str,
    axes: Sequence[str],
    *,
    max_conditioning: int = 2,
    pairs: Literal["differ", "all"] = "differ",
) -> CMIResult:
    """Jiang et al. 2020 (ICLR), §2.3: K(mu) = min over |S| <= max_conditioning of I(V_mu; V_g | U_S) / H(V_g | U_S).

    Args:
        frame: one row per model (see `xlgm.analysis.frame`).
        measure, target: the columns mu and g.
        axes: hyperparameter columns that define U_S (NaN counts as a value).
        max_conditioning: largest |S| tried (the paper: 2).
        pairs: ``"differ"`` (default) counts the ordered pairs of models whose configurations differ on some axis;
            ``"all"`` every ordered pair i != j.

    Returns:
        A `CMIResult`; the module docstring gives the equations. Degenerate inputs (fewer than 2 rows, no untied
        pair, H(V_g | U_S) = 0 for every S) give K = NaN with a note rather than an exception.
    """
    axes = list(dict.fromkeys(axes))
    if max_conditioning < 0:
        raise ValueError(f"max_conditioning must be >= 0, got {max_conditioning}")
    if pairs not in ("differ", "all"):
        raise ValueError(f"pairs must be 'differ' or 'all', got {pairs!r}")
    require_columns(frame, [measure, target, *axes], "conditional_mutual_information")
    mu = pd.to_numeric(frame[measure], errors="coerce").to_numpy(dtype=float)
    g = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(mu) & np.isfinite(g)
    mu, g = mu[keep], g[keep]
    data = frame.loc[keep, axes]
    n = int(keep.sum())
    notes = [f"{int((~keep).sum())} row(s) with NaN/inf dropped"] if (~keep).any() else []
    codes = {a: _codes(data[a]) for a in axes}

    left, right = np.nonzero(~np.eye(n, dtype=bool))
    same_config = 0
    if pairs == "differ" and axes:
        config, _ = _pair_cells([codes[a] for a in axes], np.arange(n), np.arange(n))
        differ = config[left] != config[right]
        same_config = int((~differ).sum())
        left, right = left[differ], right[differ]
    v_g = np.sign(g[left] - g[right])
    v_mu = np.sign(mu[left] - mu[right])
    untied = (v_g != 0) & (v_mu != 0)
    tied = int((~untied).sum())
    left, right = left[untied], right[untied]
    v_g = (v_g[untied] > 0).astype(np.int64)
    v_mu = (v_mu[untied] > 0).astype(np.int64)

    subsets = [s for size in range(min(max_conditioning, len(axes)) + 1) for s in combinations(axes, size)]
    rows = []
    for subset in subsets:
        if left.size == 0:
            rows.append(
                {
                    "conditioning": subset,
                    "size": len(subset),
                    "cmi_bits": math.nan,
                    "entropy_bits": math.nan,
                    "normalized": math.nan,
                    "n_cells": 0,
                }
            )
            continue
        cell, n_cells = _pair_cells([codes[a] for a in subset], left, right)
        info, entropy = _information(v_g, v_mu, cell, n_cells)
        normalized = min(info / entropy, 1.0) if entropy > 1e-12 else math.nan
        rows.append(
            {
                "conditioning": subset,
                "size": len(subset),
                "cmi_bits": info,
                "entropy_bits": entropy,
                "normalized": normalized,
                "n_cells": n_cells,
            }
        )
    per_subset = pd.DataFrame(
        rows, columns=["conditioning", "size", "cmi_bits", "entropy_bits", "normalized", "n_cells"]
    )
    if tied:
        notes.append(f"{tied} pair(s) with a tie in the measure or the target left out")
    finite = per_subset[per_subset["normalized"].notna()]
    if left.size == 0:
        notes.append("no ordered pair without ties: K undefined")
    elif finite.empty:
        notes.append("H(V_g | U_S) = 0 for every conditioning set: K undefined")
    skipped = [s for s, v in zip(per_subset["conditioning"], per_subset["normalized"]) if math.isnan(v)]
    if skipped and not finite.empty:
        notes.append(f"conditioning set(s) {skipped} skipped: H(V_g | U_S) = 0")
    if finite.empty:
        k, argmin = math.nan, None
    else:
        best = finite["normalized"].idxmin()
        k, argmin = float(finite.loc[best, "normalized"]), tuple(finite.loc[best, "conditioning"])
    return CMIResult(
        k=k,
        argmin=argmin,
        per_subset=per_subset,
        n=n,
        n_pairs=int(left.size),
        n_pairs_tied=tied,
        n_pairs_same_config=same_config,
        note="; ".join(notes),
    )
