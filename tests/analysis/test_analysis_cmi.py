"""xlgm.analysis.cmi: the conditional-MI criterion of Jiang et al. 2020 §2.3, with one case computed by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.cmi import conditional_mutual_information


def _h(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _by_subset(result) -> dict:
    """per_subset rows keyed by the conditioning tuple."""
    return {row["conditioning"]: row for row in result.per_subset.to_dict("records")}


def _grid(n_objectives: int, n_seeds: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(list(itertools.product(range(n_objectives), range(n_seeds))), columns=["objective", "seed"])
    frame["acc"] = 0.5 + 0.05 * frame["objective"] + 0.04 * rng.normal(size=len(frame))
    return frame


def test_small_case_by_hand():
    # Four models on a 2 x 2 grid (objective A, seed s); target g and measure mu:
    #   m1 (A0, s0): g=1, mu=2    m2 (A0, s1): g=2, mu=1    m3 (A1, s0): g=3, mu=3    m4 (A1, s1): g=4, mu=4
    # 12 ordered pairs (all configurations differ). V_g = + iff i > j. Only the unordered pair {m1, m2} is
    # discordant, so over ordered pairs: (+,+): 5, (-,-): 5, (+,-): 1, (-,+): 1.
    frame = pd.DataFrame({"A": [0, 0, 1, 1], "s": [0, 1, 0, 1], "g": [1, 2, 3, 4], "mu": [2, 1, 3, 4]})
    r = conditional_mutual_information(frame, "mu", "g", ["A", "s"])
    by = _by_subset(r)

    # S = {}: marginals are 1/2 each, so I = sum p log2(p / (1/4)); H(V_g) = 1.
    i_empty = 2 * (5 / 12) * math.log2((5 / 12) / 0.25) + 2 * (1 / 12) * math.log2((1 / 12) / 0.25)
    assert by[()]["cmi_bits"] == pytest.approx(i_empty)
    assert by[()]["normalized"] == pytest.approx(i_empty)  # ~0.350

    # S = {A}: cell (0,0) = {(m1,m2), (m2,m1)} perfectly (anti-)aligned: I = H = 1 bit; same for (1,1) with
    # {(m3,m4), (m4,m3)}; cells (0,1) and (1,0) hold 4 pairs each with constant V_g: I = H = 0.
    # Weights p(u) = 2/12, 2/12, 4/12, 4/12 -> I = H = 1/3, I_hat = 1 (MI ignores the sign of the dependence).
    assert by[("A",)]["cmi_bits"] == pytest.approx(1 / 3)
    assert by[("A",)]["entropy_bits"] == pytest.approx(1 / 3)
    assert by[("A",)]["normalized"] == pytest.approx(1.0)

    # S = {s}: cells (0,0) = {(m1,m3),(m3,m1)} and (1,1) = {(m2,m4),(m4,m2)}: I = H = 1 bit each (weight 2/12).
    # Cell (0,1) = {(m1,m2): (-,+), (m1,m4): (-,-), (m3,m2): (+,+), (m3,m4): (-,-)}, weight 4/12:
    #   p(g-) = 3/4, p(mu-) = 1/2; I = 1/2 log2(4/3) + 1/4 log2(2) + 1/4 log2(2/3), H = h(1/4). (1,0) mirrors it.
    i_cell = 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2) + 0.25 * math.log2(2 / 3)
    i_s = 4 / 12 * 1 + 8 / 12 * i_cell
    h_s = 4 / 12 * 1 + 8 / 12 * _h(0.25)
    assert by[("s",)]["cmi_bits"] == pytest.approx(i_s)
    assert by[("s",)]["entropy_bits"] == pytest.approx(h_s)
    assert by[("s",)]["normalized"] == pytest.approx(i_s / h_s)  # ~0.619

    # S = {A, s}: every cell holds one pair, H = 0: I_hat undefined, skipped.
    assert math.isnan(by[("A", "s")]["normalized"]) and by[("A", "s")]["n_cells"] == 12
    assert r.k == pytest.approx(i_empty) and r.argmin == ()
    assert (r.n, r.n_pairs, r.n_pairs_tied, r.n_pairs_same_config) == (4, 12, 0, 0)


def test_perfect_predictor_gives_one():
    frame = _grid(3, 8)
    r = conditional_mutual_information(frame.assign(mu=frame["acc"]), "mu", "acc", ["objective", "seed"])
    assert r.k == pytest.approx(1.0)
    finite = r.per_subset["normalized"].dropna()
    assert len(finite) >= 3 and np.allclose(finite, 1.0)
    # the information is blind to the direction: a perfectly inverted measure also scores 1
    inv = conditional_mutual_information(frame.assign(mu=-frame["acc"]), "mu", "acc", ["objective", "seed"])
    assert inv.k == pytest.approx(1.0)


def test_unrelated_measure_gives_near_zero():
    frame = _grid(4, 15, seed=1)
    frame["mu"] = np.random.default_rng(2).normal(size=len(frame))
    r = conditional_mutual_information(frame, "mu", "acc", ["objective", "seed"])
    assert 0 <= r.k < 0.02


def test_measure_tracking_one_hyperparameter_is_explained_by_it():
    # mu = objective id predicts acc (which rises with the objective) unconditionally, but once the objective is
    # conditioned on, mu's order is fixed within every cell u = (objective_i, objective_j): I = 0.
    frame = _grid(3, 10, seed=3)
    frame["mu"] = frame["objective"].astype(float)
    r = conditional_mutual_information(frame, "mu", "acc", ["objective", "seed"])
    by = _by_subset(r)
    assert by[()]["normalized"] > 0.3
    assert by[("objective",)]["normalized"] == pytest.approx(0.0, abs=1e-12)
    assert r.k == pytest.approx(0.0, abs=1e-12) and "objective" in r.argmin
    # pairs within one objective are tied in mu and left out
    assert r.n_pairs_tied == 3 * 10 * 9 and r.n_pairs == 30 * 29 - 3 * 10 * 9


def test_max_conditioning_limits_the_subsets():
    frame = _grid(2, 3)
    frame["lr"] = [1, 2, 1, 2, 1, 2]
    frame["mu"] = frame["acc"]
    sizes = {
        m: conditional_mutual_information(frame, "mu", "acc", ["objective", "seed", "lr"], max_conditioning=m)
        .per_subset["size"]
        .tolist()
        for m in (0, 1, 2)
    }
    assert sizes == {0: [0], 1: [0, 1, 1, 1], 2: [0, 1, 1, 1, 2, 2, 2]}


def test_pairs_with_identical_configuration():
    # two checkpoints of each run: with pairs="differ" the within-run pairs are not counted
    frame = pd.DataFrame({"objective": [0, 0, 1, 1], "g": [1.0, 2.0, 3.0, 4.0], "mu": [1.0, 2.0, 3.0, 4.0]})
    differ = conditional_mutual_information(frame, "mu", "g", ["objective"])
    assert (differ.n_pairs, differ.n_pairs_same_config) == (8, 4)
    every = conditional_mutual_information(frame, "mu", "g", ["objective"], pairs="all")
    assert (every.n_pairs, every.n_pairs_same_config) == (12, 0)
    assert every.k == pytest.approx(1.0)


def test_nan_axis_value_is_a_level():
    frame = pd.DataFrame(
        {
            "objective": ["adamw", "adamw", "sam", "sam"],
            "rho": [np.nan, np.nan, 0.05, 0.1],
            "seed": [0, 1, 0, 0],
            "g": [1.0, 2.0, 3.0, 4.0],
            "mu": [1.0, 2.0, 3.0, 4.0],
        }
    )
    r = conditional_mutual_information(frame, "mu", "g", ["objective", "rho", "seed"])
    assert r.n_pairs == 12  # the two adamw runs differ in seed, not in rho (both NaN)
    # cells u = (rho_i, rho_j) observed: (NaN, NaN) from the two adamw runs, and the 6 ordered pairs of distinct
    # levels among {NaN, 0.05, 0.1}; (0.05, 0.05) and (0.1, 0.1) would need two runs with that rho
    assert _by_subset(r)[("rho",)]["n_cells"] == 7


@pytest.mark.parametrize(
    "mu, g, words",
    [
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "no ordered pair"),
        ([1.0, np.nan, np.nan, np.nan], [1.0, 2.0, 3.0, 4.0], "no ordered pair"),
    ],
)
def test_degenerate_inputs_give_nan(mu, g, words):
    frame = pd.DataFrame({"a": [0, 0, 1, 1], "b": [0, 1, 0, 1], "mu": mu, "g": g})
    r = conditional_mutual_information(frame, "mu", "g", ["a", "b"])
    assert math.isnan(r.k) and r.argmin is None and words in r.note


def test_bad_arguments():
    frame = pd.DataFrame({"a": [0, 1], "mu": [1.0, 2.0], "g": [1.0, 2.0]})
    with pytest.raises(ValueError, match="max_conditioning"):
        conditional_mutual_information(frame, "mu", "g", ["a"], max_conditioning=-1)
    with pytest.raises(ValueError, match="missing column"):
        conditional_mutual_information(frame, "mu", "g", ["zz"])
