"""Holm and Benjamini-Hochberg adjusted p-values against hand-computed references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.multiple import adjust_table, benjamini_hochberg, holm


def test_holm_by_hand():
    # sorted: 0.005, 0.01, 0.03, 0.04, 0.2 -> 5*0.005, 4*0.01, 3*0.03, 2*0.04 (0.08, raised to the running max
    # 0.09), 1*0.2
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.025, 0.2])


def test_holm_caps_at_one():
    np.testing.assert_allclose(holm([0.3, 0.6]), [0.6, 0.6])
    np.testing.assert_allclose(holm([0.9, 0.7, 0.01]), [1.0, 1.0, 0.03])


def test_benjamini_hochberg_by_hand():
    # sorted p_(j) m / j: 0.005*5/1, 0.01*5/2, 0.03*5/3, 0.04*5/4, 0.2*5/5 = .025 .025 .05 .05 .2 (already monotone)
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    np.testing.assert_allclose(benjamini_hochberg(p), [0.025, 0.05, 0.05, 0.025, 0.2])
    # step-up: p_(j) m / j = .04 .04 .028 .5; the minimum over j' >= j gives .028 for the first three
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.02, 0.021, 0.5]), [0.028, 0.028, 0.028, 0.5])


def test_nan_is_not_part_of_the_family():
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(benjamini_hochberg([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    assert np.isnan(holm([np.nan])).all() and np.isnan(benjamini_hochberg([])).size == 0


def test_holm_is_never_below_bh_and_both_never_below_raw():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50) ** 3
    h, b = holm(p), benjamini_hochberg(p)
    assert np.all(h >= b - 1e-15) and np.all(b >= p - 1e-15)


def test_adjust_table_marks_what_survives():
    table = pd.DataFrame({"measure": list("abcde"), "tau_p": [0.01, 0.04, 0.03, 0.005, np.nan]})
    out = adjust_table(table, "tau_p")
    # family of 4: Holm 4*0.005=.02, 3*0.01=.03, 2*0.03=.06, max(.06, 1*0.04) = .06
    np.testing.assert_allclose(out["p_holm"], [0.03, 0.06, 0.06, 0.02, np.nan])
    assert out["survives_holm"].tolist() == [True, False, False, True, False]
    # BH: .005*4/1=.02, .01*4/2=.02, .03*4/3=.04, .04*4/4=.04
    np.testing.assert_allclose(out["p_bh"], [0.02, 0.04, 0.04, 0.02, np.nan])
    assert out["survives_bh"].tolist() == [True, True, True, True, False]
    assert "p_holm" not in table.columns  # a copy


@pytest.mark.parametrize("p, expected", [([0.05], [0.05]), ([0.0, 1.0], [0.0, 1.0])])
def test_single_and_extreme_values(p, expected):
    np.testing.assert_allclose(holm(p), expected)
    np.testing.assert_allclose(benjamini_hochberg(p), expected)
