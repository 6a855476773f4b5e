"""xlgm.analysis.granulated: Jiang et al. 2020 §2.2 granulated Kendall coefficient on hand-computed grids."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.frame import AnalysisInputError
from xlgm.analysis.granulated import granulated_kendall, kendall_tau_a


def _grid(**axes: list) -> pd.DataFrame:
    return pd.DataFrame(list(itertools.product(*axes.values())), columns=list(axes))


def test_kendall_tau_a_by_hand():
    # 4 points: pairs (0,1) (0,2) (0,3) (1,3) (2,3) concordant, (1,2) discordant -> (5 - 1) / 6
    assert kendall_tau_a([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # a tie counts 0 but stays in the denominator: pairs C, 0 (tie in mu), C -> 2/3
    assert kendall_tau_a([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    assert math.isnan(kendall_tau_a([1.0], [2.0]))


def test_monotone_measure_gives_psi_one():
    frame = _grid(objective=["adamw", "sam", "fisher"], lr=[1e-5, 3e-5], seed=[0, 1, 2])
    rng = np.random.default_rng(0)
    frame["acc"] = rng.permutation(len(frame)) / len(frame)
    frame["measure"] = np.exp(3 * frame["acc"])  # strictly increasing in the target
    r = granulated_kendall(frame, "measure", "acc", ["objective", "lr", "seed"])
    assert r.psi == pytest.approx(1.0)
    assert r.per_axis["psi"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # psi_i averages over m_i = product of the other axes' sizes
    assert r.per_axis["n_groups"].tolist() == [6, 9, 6]
    assert r.per_axis["n_groups_skipped"].tolist() == [0, 0, 0]
    neg = granulated_kendall(frame.assign(measure=-frame["measure"]), "measure", "acc", ["objective", "lr", "seed"])
    assert neg.psi == pytest.approx(-1.0)


def test_measure_independent_within_each_group_gives_zero():
    # Within every objective the seed orders the target 0 < 1 < 2 < 3 while the measure has ranks (1, 3, 0, 2):
    # pairs C, D, C, D, D, C -> tau = 0. Across objectives (seed fixed) measure and target are unrelated too.
    frame = _grid(objective=[0, 1, 2], seed=[0, 1, 2, 3])
    frame["acc"] = frame["seed"] + 10 * frame["objective"]
    frame["measure"] = frame["seed"].map({0: 1, 1: 3, 2: 0, 3: 2}) + 10 * frame["objective"].map({0: 1, 1: 0, 2: 2})
    r = granulated_kendall(frame, "measure", "acc", ["objective", "seed"])
    psi = r.psi_by_axis
    assert psi["seed"] == pytest.approx(0.0)
    # objective axis (seed fixed): target ranks 0 < 1 < 2, measure ranks (1, 0, 2): C, C, D... by hand:
    # pairs (0,1): target +, measure - -> D; (0,2): +,+ -> C; (1,2): +,+ -> C  => 1/3 per group
    assert psi["objective"] == pytest.approx(1 / 3)


def test_random_measure_gives_psi_near_zero():
    rng = np.random.default_rng(1)
    frame = _grid(objective=list(range(4)), lr=list(range(4)), seed=list(range(5)))
    frame["acc"] = rng.normal(size=len(frame)) + frame["objective"]
    frame["measure"] = rng.normal(size=len(frame))
    r = granulated_kendall(frame, "measure", "acc", ["objective", "lr", "seed"])
    assert abs(r.psi) < 0.1


def test_two_axis_grid_by_hand():
    # objective x seed, target g and measure mu:
    #            seed 0      seed 1      seed 2
    #   A      g=1 mu=10   g=2 mu=30   g=3 mu=35
    #   B      g=4 mu=40   g=6 mu=50   g=5 mu=15
    frame = pd.DataFrame(
        {
            "objective": ["A", "A", "A", "B", "B", "B"],
            "seed": [0, 1, 2, 0, 1, 2],
            "g": [1, 2, 3, 4, 6, 5],
            "mu": [10, 30, 35, 40, 50, 15],
        }
    )
    # psi_seed: groups = objectives (seed varies).
    #   A: g and mu both increasing -> 3 concordant of 3 -> tau = 1
    #   B: (s0,s1): g+, mu+ C; (s0,s2): g+, mu- D; (s1,s2): g-, mu- C -> (2 - 1) / 3 = 1/3
    psi_seed = (1 + 1 / 3) / 2
    # psi_objective: groups = seeds (objective varies), one pair each:
    #   s0: A(1,10) vs B(4,40) C -> 1; s1: A(2,30) vs B(6,50) C -> 1; s2: A(3,35) vs B(5,15) D -> -1
    psi_objective = (1 + 1 - 1) / 3
    r = granulated_kendall(frame, "mu", "g", ["objective", "seed"])
    assert r.psi_by_axis == pytest.approx({"objective": psi_objective, "seed": psi_seed})
    assert r.psi == pytest.approx((psi_objective + psi_seed) / 2) == pytest.approx(0.5)
    assert r.per_axis.set_index("axis")["n_groups"].to_dict() == {"objective": 3, "seed": 2}
    assert r.variant == "a" and r.n == 6 and r.note == ""


def test_single_axis_is_kendall_over_all_rows():
    frame = pd.DataFrame({"lr": [1, 2, 3, 4], "g": [1, 3, 2, 4], "mu": [1, 2, 3, 4]})
    r = granulated_kendall(frame, "mu", "g", ["lr"])
    assert r.psi == pytest.approx(4 / 6) and r.per_axis["n_groups"].tolist() == [1]


def test_incomplete_grid_skips_singleton_groups():
    frame = _grid(objective=["A", "B"], seed=[0, 1, 2])
    frame["g"] = [1, 2, 3, 4, 5, 6]
    frame["mu"] = [1, 2, 3, 4, 5, 6]
    frame = frame.drop(index=5)  # (B, seed 2) failed: the seed-2 group has only A
    r = granulated_kendall(frame, "mu", "g", ["objective", "seed"])
    row = r.per_axis.set_index("axis").loc["objective"]
    assert (row["n_groups"], row["n_groups_skipped"]) == (2, 1)
    assert r.psi == pytest.approx(1.0)


def test_nan_axis_value_is_a_level_and_nan_values_are_dropped():
    # rho is undefined (NaN) for AdamW: it must still form groups, not vanish.
    frame = pd.DataFrame(
        {
            "objective": ["adamw", "adamw", "sam", "sam", "sam", "sam"],
            "rho": [np.nan, np.nan, 0.05, 0.05, 0.1, 0.1],
            "seed": [0, 1, 0, 1, 0, 1],
            "g": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "mu": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    r = granulated_kendall(frame, "mu", "g", ["objective", "rho", "seed"])
    assert r.per_axis.set_index("axis").loc["seed", "n_groups"] == 3  # (adamw, NaN), (sam, .05), (sam, .1)
    assert r.per_axis.set_index("axis").loc["rho", "n_groups"] == 2  # (sam, seed 0), (sam, seed 1)
    # objective: (rho, seed) groups never hold both objectives -> undefined, left out of Psi and named
    assert math.isnan(r.psi_by_axis["objective"]) and "objective" in r.note
    assert r.psi == pytest.approx(1.0) and r.axes_used == ("rho", "seed")

    frame.loc[0, "mu"] = np.nan
    r2 = granulated_kendall(frame, "mu", "g", ["objective", "rho", "seed"])
    assert r2.n == 5 and "1 row(s)" in r2.note
    assert r2.per_axis.set_index("axis").loc["seed", "n_groups"] == 2


def test_variant_b_skips_groups_with_a_constant_measure():
    frame = _grid(objective=["A", "B"], seed=[0, 1, 2])
    frame["g"] = [1, 2, 3, 4, 5, 6]
    frame["mu"] = [7, 7, 7, 1, 2, 3]  # constant within A
    a = granulated_kendall(frame, "mu", "g", ["objective", "seed"], variant="a")
    b = granulated_kendall(frame, "mu", "g", ["objective", "seed"], variant="b")
    assert a.psi_by_axis["seed"] == pytest.approx((0 + 1) / 2)  # tau-a: the tied group counts as 0
    assert b.psi_by_axis["seed"] == pytest.approx(1.0)  # tau-b: undefined there, skipped
    assert b.per_axis.set_index("axis").loc["seed", "n_groups_skipped"] == 1


def test_degenerate_and_bad_input():
    empty = pd.DataFrame({"a": [1.0], "g": [np.nan], "mu": [1.0]})
    r = granulated_kendall(empty, "mu", "g", ["a"])
    assert math.isnan(r.psi) and r.n == 0
    frame = pd.DataFrame({"a": [1, 2], "g": [1.0, 2.0], "mu": [1.0, 2.0]})
    with pytest.raises(AnalysisInputError, match="missing column"):
        granulated_kendall(frame, "mu", "g", ["a", "lr"])
    with pytest.raises(AnalysisInputError, match="axis"):
        granulated_kendall(frame, "mu", "g", [])
