"""Every measure result carries its health: converged or not (residual vs tolerance, iteration cap), saturated
at a search bound, NaN/inf; and every registered measure declares the direction the literature expects."""

from __future__ import annotations

import json
import math

import pytest
from measure_models import LinearSoftmax, TwoParamLogistic, linear_batches, two_param_batches

from xlgm.measures import compute_measure, get_measure, list_measures
from xlgm.measures.base import MeasureHealth, MeasureResult
from xlgm.measures.search import bisect_scale


def test_bisection_that_always_overshoots_is_saturated_at_the_lower_end():
    # deviation(s) = 100 s: the target 0.1 sits at s = 0.001, far below the 3 steps 1, 0.5, 0.25 of [0, 2]
    search = bisect_scale(lambda s: (100 * s, {}), 0.1, 0.0, 2.0, max_iters=3, tolerance=0.01)
    assert [step.scale for step in search.steps] == [1.0, 0.5, 0.25]
    assert search.final_bracket == (0.0, 0.25) and not search.converged and search.saturated
    health = search.health()
    assert health["iteration_cap_reached"] and health["residual"] == pytest.approx(25 - 0.1)
    assert health["tolerance"] == 0.01


def test_bisection_that_always_falls_short_is_saturated_at_the_upper_end():
    search = bisect_scale(lambda s: (0.01 * s, {}), 0.1, 0.0, 2.0, max_iters=4, tolerance=0.01)
    assert search.final_bracket == (1.875, 2.0) and search.saturated and search.hit_upper


def test_bisection_stopped_inside_the_bracket_is_not_saturated():
    # 4 steps: 1 (over), 0.5 (under), 0.75 (under), 0.875 (over): the answer is bracketed, not at a bound
    search = bisect_scale(lambda s: (s - 0.7, {}), 0.1, 0.0, 2.0, max_iters=4, tolerance=0.001)
    assert not search.converged and not search.saturated and search.final_bracket == (0.75, 0.875)
    assert search.health()["iteration_cap_reached"]
    converged = bisect_scale(lambda s: (s - 0.7, {}), 0.1, 0.0, 2.0, max_iters=30, tolerance=0.001)
    assert converged.health() == {
        "converged": True,
        "residual": pytest.approx(abs(converged.deviation - 0.1)),
        "tolerance": 0.001,
        "iteration_cap_reached": False,
        "saturated": False,
    }


def test_pacbayes_with_too_few_steps_reports_saturation():
    # the demo's old setting (3 steps of [0, 2]) where the loss is sensitive: every step overshoots (deviations
    # 0.41, 0.12, 0.031 against 0.001) and the value is the bound 1/0.25²
    batches = two_param_batches()
    result = compute_measure(
        "pacbayes-flatness",
        TwoParamLogistic(),
        batches,
        config={"search_depth": 3, "num_draws": 2, "target_deviation": 0.001, "tolerance": 0.0001},
    )
    assert result.value == pytest.approx(16.0)
    assert result.health.saturated and result.health.converged is False and result.health.iteration_cap_reached
    assert "saturated at the search bound" in result.health.problems and not result.health.healthy
    healthy = compute_measure(
        "pacbayes-flatness",
        TwoParamLogistic(),
        batches,
        config={"search_depth": 25, "tolerance": 0.002, "num_draws": 4},
    )
    assert healthy.health.converged and not healthy.health.saturated and healthy.health.healthy


def test_lanczos_with_two_steps_is_not_converged_and_says_why():
    model, batches = LinearSoftmax(), linear_batches()
    short = compute_measure("hessian-top-eig", model, batches, config={"max_iters": 2, "tol": 1e-6})
    h = short.health
    assert h.converged is False and h.iteration_cap_reached and h.tolerance == 1e-6 and h.residual > 1e-6
    relative = max(r / abs(v) for r, v in zip(short.details["residuals"], short.details["eigenvalues"]))
    assert h.residual == pytest.approx(relative)
    assert h.problems[0].startswith("not converged (residual")
    full = compute_measure("hessian-top-eig", model, batches, config={"max_iters": 15, "tol": 1e-8})
    assert full.health.converged and full.health.residual <= 1e-8 and full.health.healthy
    power = compute_measure("hessian-top-eig", model, batches, config={"method": "power", "max_iters": 3, "tol": 1e-12})
    assert power.health.converged is False and power.health.iteration_cap_reached
    history = power.details["history"]
    assert power.health.residual == pytest.approx(abs(history[-1] - history[-2]) / abs(history[-1]))


def test_measures_without_iterations_have_no_convergence_and_health_is_stored():
    result = compute_measure("margin", LinearSoftmax(), linear_batches())
    assert result.health == MeasureHealth() and result.health.healthy
    stored = json.loads(json.dumps(result.to_dict()))
    assert stored["health"] == {
        "converged": None,
        "residual": None,
        "tolerance": None,
        "iteration_cap_reached": None,
        "saturated": None,
        "nonfinite": 0,
    }


def test_nan_values_are_counted():
    result = MeasureResult("x", math.nan, spread=math.inf)
    assert result.health.nonfinite == 2 and result.health.problems == ["2 NaN/inf"]


def test_every_registered_measure_declares_a_direction():
    for name in list_measures(None):
        spec = get_measure(name)
        assert spec.expected_sign in (1, -1, None)
        if spec.expected_sign is not None:
            assert spec.direction_reference, name
    # the directions the issue names
    assert get_measure("margin").expected_sign == 1
    for name in (
        "sharpness-diff",
        "hessian-top-eig",
        "fisher-trace",
        "frobenius-distance",
        "spectral-norm",
        "pacbayes-flatness",
        "sharpness-alpha",
        "logit-margin",
    ):
        assert get_measure(name).expected_sign == -1, name
    assert get_measure("pacbayes-flatness").direction.startswith("higher -> worse (Jiang et al. 2020")


def test_measure_list_shows_the_direction(capsys):
    from xlgm.cli import main

    assert main(["measure", "--list"]) == 0
    out = capsys.readouterr().out
    assert "expected vs accuracy: + higher -> better (Bassi et al. 2024" in out
    assert out.count("expected vs accuracy:") == len(list_measures(None))
