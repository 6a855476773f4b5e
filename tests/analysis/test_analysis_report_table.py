"""xlgm.analysis.report_table: the long-form tables and top_correlations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.correlation import correlate
from xlgm.analysis.frame import AnalysisInputError
from xlgm.analysis.report_table import (
    CORRELATION_COLUMNS,
    cmi_table,
    correlation_table,
    granulated_table,
    top_correlations,
)

LANGS = ["en", "de", "sw"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """3 objectives x 4 seeds, 2 checkpoints per run; `good` tracks target accuracy, `sharp` the opposite."""
    rng = np.random.default_rng(0)
    rows = []
    for objective, seed in itertools.product(["adamw", "sam", "fisher"], range(4)):
        quality = rng.normal()
        for step in (100, 200):
            q = quality + 0.3 * rng.normal()
            rows.append(
                {
                    "run_id": f"{objective}-{seed}",
                    "checkpoint_id": f"{objective}-{seed}-{step}",
                    "objective": objective,
                    "seed": seed,
                    "step": step,
                    "is_best": step == 200,
                    "good": q + 0.1 * rng.normal(),
                    "sharp": -q + 0.5 * rng.normal(),
                    "noise": rng.normal(),
                    "acc_en": 0.85 + 0.002 * rng.normal(),
                    "acc_de": 0.70 + 0.02 * q,
                    "acc_sw": 0.55 + 0.03 * q,
                }
            )
    return pd.DataFrame(rows)


def test_correlation_table_shape_and_values(frame):
    table = correlation_table(
        frame, ["good", "sharp"], LANGS, "en", axes=["objective", "seed"], n_boot=200, expected_signs={"sharp": -1}
    )
    assert list(table.columns) == CORRELATION_COLUMNS
    targets = ["acc_en", "acc_de", "acc_sw", "mean_target", "gap_de", "gap_sw", "mean_gap"]
    targets += ["resid_de", "resid_sw", "transfer_residual", "transfer_residual_oof"]
    assert table["target"].tolist() == targets * 2 and table["measure"].tolist() == ["good"] * 11 + ["sharp"] * 11
    assert table.loc[table["target"] == "gap_de", "target_kind"].tolist() == ["gap", "gap"]
    assert table.loc[table["target"] == "gap_de", "language"].tolist() == ["de", "de"]
    assert table.loc[table["target"] == "mean_target", "language"].isna().all()

    row = table[(table["measure"] == "sharp") & (table["target"] == "mean_target")].iloc[0]
    mean_target = (frame["acc_de"] + frame["acc_sw"]) / 2
    # whole runs resampled and permuted, checkpoints paired across runs by step
    ref = correlate(
        frame["sharp"], mean_target, n_boot=200, seed=0, expected_sign=-1, runs=frame["run_id"], positions=frame["step"]
    )
    assert row["tau"] == pytest.approx(ref.tau) and row["tau_lo"] == pytest.approx(ref.tau_lo)
    assert row["tau_p"] == pytest.approx(ref.tau_p) and row["p_min"] == pytest.approx(1 / 10000)
    assert row["tau"] < -0.3 and row["n"] == 24 and row["expected_sign"] == -1 and row["agrees"]
    assert row["n_runs"] == 12 and row["n_checkpoints"] == 24 and row["unit"] == "run"
    gap = table[(table["measure"] == "sharp") & (table["target"] == "mean_gap")].iloc[0]
    assert gap["expected_sign"] == 1  # a sharpness expected to fall with accuracy is expected to rise with the gap
    residual = table[(table["measure"] == "sharp") & (table["target"] == "transfer_residual")].iloc[0]
    assert residual["expected_sign"] == -1 and residual["target_kind"] == "transfer_residual"  # as with accuracy
    assert table.loc[table["measure"] == "good", "expected_sign"].isna().all()


def test_correlation_table_unit_run(frame):
    by_run = correlation_table(
        frame, ["good"], LANGS, n_boot=50, unit="run", run_reduce="best", targets=["mean_target"]
    )
    assert by_run["n"].tolist() == [12]
    best = frame[frame["is_best"]]
    ref = correlate(best["good"], (best["acc_de"] + best["acc_sw"]) / 2, n_boot=0)
    assert by_run["tau"].iloc[0] == pytest.approx(ref.tau)
    mean = correlation_table(frame, ["good"], LANGS, n_boot=0, unit="run", run_reduce="mean", targets=["acc_de"])
    per_run = frame.groupby("run_id")[["good", "acc_de"]].mean()
    assert mean["tau"].iloc[0] == pytest.approx(correlate(per_run["good"], per_run["acc_de"], n_boot=0).tau)


def test_correlation_table_bad_input(frame):
    with pytest.raises(AnalysisInputError, match="unknown target"):
        correlation_table(frame, ["good"], LANGS, targets=["acc_xx"])
    with pytest.raises(AnalysisInputError, match="'lr'"):
        correlation_table(frame, ["good"], LANGS, axes=["lr"])
    with pytest.raises(AnalysisInputError, match="unknown measure"):
        correlation_table(frame, ["good"], LANGS, expected_signs={"bad": 1})
    with pytest.raises(AnalysisInputError, match="'missing'"):
        correlation_table(frame, ["missing"], LANGS)


def test_top_correlations_sorts_by_absolute_tau():
    table = pd.DataFrame(
        {
            "measure": list("abcd"),
            "target": ["t"] * 4,
            "tau": [0.1, -0.8, np.nan, 0.5],
            "tau_p": [0.5, 0.01, np.nan, 0.05],
            "n": [10] * 4,
        }
    )
    top = top_correlations(table, 3)
    assert top["measure"].tolist() == ["b", "d", "a"] and list(top.index) == [0, 1, 2]
    assert top_correlations(table, 10)["measure"].tolist() == ["b", "d", "a", "c"]  # NaN last
    assert top_correlations(table, 1, targets=["other"]).empty
    assert list(top.columns) == ["measure", "target", "tau", "tau_p", "n"]


def test_top_correlations_keeps_adjusted_p_and_units():
    table = pd.DataFrame(
        {
            "measure": list("abc"),
            "target": ["t"] * 3,
            "tau": [0.1, -0.8, 0.5],
            "tau_p": [0.5, 0.01, 0.05],
            "tau_lo": [-0.3, -0.95, 0.1],
            "tau_hi": [0.4, -0.5, 0.8],
            "p_holm": [1.0, 0.03, 0.1],
            "p_bh": [0.5, 0.03, 0.075],
            "survives_holm": [False, True, False],
            "survives_bh": [False, True, False],
            "n": [12] * 3,
            "n_runs": [4] * 3,
            "n_checkpoints": [12] * 3,
            "unit": ["run"] * 3,
            "note": [""] * 3,
        }
    )
    top = top_correlations(table, 2)
    assert list(top.columns) == [
        "measure",
        "target",
        "tau",
        "tau_p",
        "tau_lo",
        "tau_hi",
        "p_holm",
        "p_bh",
        "survives_holm",
        "survives_bh",
        "n",
        "n_runs",
        "n_checkpoints",
        "unit",
    ]
    assert top["measure"].tolist() == ["b", "c"] and top["p_holm"].tolist() == [0.03, 0.1]
    assert top["survives_bh"].tolist() == [True, False]


def test_granulated_and_cmi_tables(frame):
    psi = granulated_table(
        frame, ["good", "noise"], LANGS, axes=["objective", "seed"], unit="run", targets=["mean_target", "mean_gap"]
    )
    assert psi[["measure", "target"]].values.tolist() == [
        ["good", "mean_target"],
        ["good", "mean_gap"],
        ["noise", "mean_target"],
        ["noise", "mean_gap"],
    ]
    assert {"psi", "psi[objective]", "psi[seed]", "groups[objective]", "groups[seed]"} <= set(psi.columns)
    good = psi.iloc[0]
    assert good["psi"] > 0.5 and good["groups[objective]"] == 4 and good["groups[seed]"] == 3

    cmi = cmi_table(frame, ["good", "noise"], LANGS, axes=["objective", "seed"], unit="run")
    assert cmi["measure"].tolist() == ["good", "noise"] and (cmi["target"] == "mean_target").all()
    assert {"k", "argmin", "cmi[]", "cmi[objective]", "cmi[seed]", "cmi[objective,seed]"} <= set(cmi.columns)
    assert cmi["k"].iloc[0] > cmi["k"].iloc[1]
    with pytest.raises(AnalysisInputError, match="axes"):
        cmi_table(frame, ["good"], LANGS)
