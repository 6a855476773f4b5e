"""xlgm.analysis.intervals.wilson_interval against scipy.stats.binomtest(...).proportion_ci(method="wilson")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from xlgm.analysis.frame import AnalysisInputError
from xlgm.analysis.intervals import wilson_interval


def scipy_wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@pytest.mark.parametrize(
    "k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (41, 100), (50, 100), (99, 100), (412, 1000), (1, 7500)]
)
@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
def test_scalar_equals_scipy(k, n, confidence):
    low, high = wilson_interval(k, n, confidence)
    assert isinstance(low, float) and isinstance(high, float)
    ref_low, ref_high = scipy_wilson(k, n, confidence)
    assert low == pytest.approx(ref_low, abs=1e-12) and high == pytest.approx(ref_high, abs=1e-12)


def test_arrays_equal_scipy_elementwise():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 600, size=200)
    k = rng.integers(0, n + 1)
    low, high = wilson_interval(k, n)
    assert low.shape == high.shape == (200,)
    reference = np.array([scipy_wilson(a, b) for a, b in zip(k, n)])
    np.testing.assert_allclose(low, reference[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(high, reference[:, 1], rtol=0, atol=1e-12)
    # broadcasting: one n for a 2-d array of counts
    grid_low, _ = wilson_interval(np.array([[0, 5], [50, 100]]), 100)
    assert grid_low.shape == (2, 2) and grid_low[0, 0] == 0.0
    assert grid_low[1, 0] == pytest.approx(scipy_wilson(50, 100)[0], abs=1e-12)


def test_hand_computed_value():
    # Wilson's form (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n) at 41 of 100, z = 1.959964:
    # 0.31867 to 0.50799
    low, high = wilson_interval(41, 100)
    assert round(low, 5) == 0.31867 and round(high, 5) == 0.50799


def test_non_integer_count_is_a_proportion_times_n():
    # the mean of accuracies 0.40 and 0.42 on the same 100 rows: read as 41 of 100
    assert wilson_interval(0.5 * (40 + 42), 100) == pytest.approx(wilson_interval(41, 100))


@pytest.mark.parametrize(
    "args,match",
    [
        ((1, 0), "n must be >= 1"),
        ((-1, 10), "between 0 and n"),
        ((11, 10), "between 0 and n"),
        ((float("nan"), 10), "NaN"),
        ((np.array([1, 2]), np.array([2, 0])), "n must be >= 1"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(AnalysisInputError, match=match):
        wilson_interval(*args)
    with pytest.raises(AnalysisInputError, match="confidence"):
        wilson_interval(1, 10, confidence=1.0)
