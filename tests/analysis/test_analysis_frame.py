"""xlgm.analysis.frame: building the analysis frame from long tables, the targets, and the unit of correlation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.frame import (
    AnalysisInputError,
    add_targets,
    build_frame,
    flatten_configs,
    select_unit,
    target_columns,
)
from xlgm.core.errors import XlgmError


def _tables():
    runs = pd.DataFrame(
        {
            "run_id": ["r1", "r2"],
            "config": [
                {"objective": "adamw", "seed": 0, "lr": 2e-5, "objective_options": {}},
                json.dumps({"objective": "sam", "seed": 1, "lr": 2e-5, "objective_options": {"rho": 0.05}}),
            ],
        }
    )
    checkpoints = pd.DataFrame(
        {
            "checkpoint_id": ["r1/100", "r1/200", "r2/100", "r2/200"],
            "run_id": ["r1", "r1", "r2", "r2"],
            "step": [100, 200, 100, 200],
            "is_best": [1, 0, 0, 1],
            "path": ["a", "b", "c", "d"],
        }
    )
    evaluations = pd.DataFrame(
        {
            "checkpoint_id": ["r1/100", "r1/100", "r1/200", "r1/200", "r2/100", "r2/100", "r2/200", "r2/200"],
            "language": ["en", "de"] * 4,
            "accuracy": [0.80, 0.70, 0.82, 0.69, 0.79, 0.72, 0.83, 0.75],
            "split": "test",
        }
    )
    measures = pd.DataFrame(
        {
            "checkpoint_id": ["r1/100", "r1/200", "r2/100", "r2/200", "r1/100", "r2/200"],
            "measure": ["margin"] * 4 + ["sharpness-diff"] * 2,
            "value": [1.0, 1.5, 0.9, 2.0, 0.3, 0.1],
        }
    )
    return evaluations, measures, runs, checkpoints


def test_build_frame_pivots_and_flattens():
    evaluations, measures, runs, checkpoints = _tables()
    frame = build_frame(evaluations, measures, runs, checkpoints)
    assert list(frame["checkpoint_id"]) == ["r1/100", "r1/200", "r2/100", "r2/200"]
    assert {
        "run_id",
        "step",
        "is_best",
        "objective",
        "seed",
        "lr",
        "rho",
        "margin",
        "sharpness-diff",
        "acc_en",
        "acc_de",
    } <= set(frame.columns)
    assert "path" not in frame.columns and "split" not in frame.columns
    row = frame.set_index("checkpoint_id").loc["r2/200"]
    assert (row["objective"], row["seed"], row["rho"]) == ("sam", 1, 0.05)
    assert (row["margin"], row["sharpness-diff"], row["acc_en"], row["acc_de"]) == (2.0, 0.1, 0.83, 0.75)
    assert math.isnan(frame.set_index("checkpoint_id").loc["r1/200", "sharpness-diff"])  # not measured
    assert math.isnan(frame.set_index("checkpoint_id").loc["r1/100", "rho"])  # adamw has no rho
    assert list(frame.columns[:2]) == ["run_id", "checkpoint_id"]


def test_build_frame_without_checkpoints_table_uses_run_id_column():
    evaluations, measures, runs, checkpoints = _tables()
    evaluations = evaluations.merge(checkpoints[["checkpoint_id", "run_id"]], on="checkpoint_id")
    frame = build_frame(evaluations, measures, runs)
    assert len(frame) == 4 and set(frame["run_id"]) == {"r1", "r2"} and "step" not in frame.columns


def test_flatten_configs_uses_dotted_path_on_collision():
    runs = pd.DataFrame(
        {"run_id": ["a"], "config": [{"lr": 1, "objective_options": {"lr": 2, "rho": 3}, "tags": ["x", "y"]}]}
    )
    flat = flatten_configs(runs)
    assert flat.iloc[0].to_dict() == {"run_id": "a", "lr": 1, "objective_options.lr": 2, "rho": 3, "tags": ("x", "y")}
    already_flat = pd.DataFrame({"run_id": ["a"], "lr": [1]})
    assert flatten_configs(already_flat).equals(already_flat)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda e, m, r, c: (e.drop(columns="accuracy"), m, r, c), "evaluations: missing column(s) 'accuracy'"),
        (lambda e, m, r, c: (e, m.rename(columns={"value": "v"}), r, c), "measures: missing column(s) 'value'"),
        (
            lambda e, m, r, c: (pd.concat([e, e.iloc[:1]]), m, r, c),
            "evaluations: 2 rows share their (checkpoint_id, language), e.g. ('r1/100', 'en')",
        ),
        (lambda e, m, r, c: (e, pd.concat([m, m.iloc[:1]]), r, c), "filter to one config_hash/data"),
        (lambda e, m, r, c: (e, m, r, c[c["checkpoint_id"] != "r2/200"]), "checkpoint(s) 'r2/200' have no run"),
        (lambda e, m, r, c: (e, m, r[r["run_id"] == "r1"], c), "run(s) 'r2' are not in the runs table"),
        (
            lambda e, m, r, c: (e, m.assign(measure=m["measure"].replace("margin", "acc_en")), r, c),
            "collide with accuracy columns",
        ),
        (lambda e, m, r, c: (e, m.assign(measure=m["measure"].replace("margin", "seed")), r, c), "'seed'"),
        (lambda e, m, r, c: (e, m, r.assign(config=["{", "{}"]), c), "config of run 'r1' is not valid JSON"),
        (lambda e, m, r, c: (e, m, r.assign(config=[3, {}]), c), "must be a dict"),
        (lambda e, m, r, c: (e, m, r, None), "pass a checkpoints table"),
    ],
)
def test_build_frame_errors_are_clear(mutate, words):
    with pytest.raises(AnalysisInputError) as info:
        build_frame(*mutate(*_tables()))
    assert words in str(info.value)
    assert isinstance(info.value, XlgmError) and isinstance(info.value, ValueError)


def test_add_targets():
    frame = pd.DataFrame({"acc_en": [0.9, 0.8], "acc_de": [0.7, 0.6], "acc_fr": [0.8, np.nan]})
    out = add_targets(frame, ["en", "de", "fr"], source="en")
    assert out["gap_de"].tolist() == pytest.approx([0.2, 0.2])
    assert out["mean_target"][0] == pytest.approx(0.75) and math.isnan(out["mean_target"][1])  # no partial mean
    assert out["mean_gap"][0] == pytest.approx(0.15)
    assert "acc_en" in frame.columns and "gap_de" not in frame.columns  # the input is not modified
    assert target_columns(["en", "de", "fr"], "en") == [
        "acc_en",
        "acc_de",
        "acc_fr",
        "mean_target",
        "gap_de",
        "gap_fr",
        "mean_gap",
        "resid_de",
        "resid_fr",
        "transfer_residual",
        "transfer_residual_oof",
    ]
    with pytest.raises(AnalysisInputError, match="'acc_it'"):
        add_targets(frame, ["en", "it"])
    with pytest.raises(AnalysisInputError, match="no target language"):
        add_targets(frame, ["en"])


def test_mean_target_accuracy_counts_correct_rows_so_that_equal_counts_tie_exactly():
    # 14 languages of 500 rows: two units with the same number of correct rows over all of them, spread over the
    # languages differently. The float mean of 14 accuracies can differ in its last bits; the count cannot.
    rng = np.random.default_rng(3)
    langs = [f"l{i}" for i in range(14)]
    a = rng.integers(200, 400, 14)
    b = a.copy()
    b[[0, 5]] += [7, -7]
    frame = pd.DataFrame(
        {"acc_en": [0.7, 0.7], **{f"acc_{lang}": [a[i] / 500, b[i] / 500] for i, lang in enumerate(langs)}}
    )
    frame = frame.assign(**{f"rows_{lang}": [500, 500] for lang in langs})
    out = add_targets(frame, ["en", *langs])
    assert out["mean_target"][0] == out["mean_target"][1] == a.sum() / 7000
    # without the row counts the plain mean of the accuracies (here it may or may not tie)
    plain = add_targets(frame.drop(columns=[f"rows_{lang}" for lang in langs]), ["en", *langs])
    assert plain["mean_target"][0] == pytest.approx(a.sum() / 7000, abs=1e-12)
    # averaged accuracies are not counts any more: the mean is then the plain one
    frame.loc[0, "acc_l0"] += 0.0005
    assert add_targets(frame, ["en", *langs])["mean_target"][0] == pytest.approx((a.sum() + 0.25) / 7000)


def test_select_unit():
    evaluations, measures, runs, checkpoints = _tables()
    frame = build_frame(evaluations, measures, runs, checkpoints)
    assert select_unit(frame, "checkpoint") is frame
    last = select_unit(frame, "run", "last")
    assert last["checkpoint_id"].tolist() == ["r1/200", "r2/200"]
    best = select_unit(frame, "run", "best")
    assert best["checkpoint_id"].tolist() == ["r1/100", "r2/200"]
    mean = select_unit(frame, "run", "mean", value_columns=["margin", "sharpness-diff", "acc_en"])
    assert mean["margin"].tolist() == pytest.approx([1.25, 1.45])
    assert mean["sharpness-diff"].tolist() == pytest.approx([0.3, 0.1])  # NaN skipped
    assert mean["objective"].tolist() == ["adamw", "sam"] and list(mean.columns) == list(frame.columns)

    with pytest.raises(AnalysisInputError, match="'step'"):
        select_unit(frame.drop(columns="step"), "run", "last")
    with pytest.raises(AnalysisInputError, match="no best checkpoint for run\\(s\\) 'r1'"):
        select_unit(frame.assign(is_best=[0, 0, 0, 1]), "run", "best")
    with pytest.raises(AnalysisInputError, match="several best"):
        select_unit(frame.assign(is_best=[1, 1, 0, 1]), "run", "best")
    with pytest.raises(ValueError, match="unit"):
        select_unit(frame, "epoch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="run_reduce"):
        select_unit(frame, "run", "median")  # type: ignore[arg-type]
