"""The label-free accuracy predictor (analysis/predict.py): its model, baselines and cross-validation splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.predict import (
    BASELINE_COLUMNS,
    GapRegressor,
    available_features,
    compare_with_baselines,
    cross_validate,
    derive_features,
    other_languages_mean,
    summarize,
)
from xlgm.core.errors import XlgmError

LANGS = ["de", "fr", "sw", "zh"]


def synthetic(seed: int = 0, checkpoints: int = 6, noise: float = 0.0, offset: float = 0.0) -> pd.DataFrame:
    """Rows whose gap to the source is disagreement * (-0.3 + 0.1 * z) exactly (plus optional noise, and
    plus a per-checkpoint offset u_c = offset * (c - 2.5) shared by its languages, column `u`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(checkpoints):
        src = rng.uniform(0.5, 0.8)
        u = offset * (c - 2.5)
        for lang in LANGS:
            d = rng.uniform(0.05, 0.5)
            z = rng.normal()
            gap = u + d * (-0.3 + 0.1 * z) + noise * rng.normal()
            rows.append(
                {
                    "checkpoint_id": f"r{c % 3}/c{c}",
                    "run_id": f"r{c % 3}",
                    "language": lang,
                    "source_accuracy": src,
                    "accuracy": src + gap,
                    "disagreement": d,
                    "cka": z,
                    "other": rng.normal(),
                    "u": u,
                }
            )
    return pd.DataFrame(rows)


def test_gap_regressor_recovers_an_exact_scaled_relation():
    frame = synthetic()
    model = GapRegressor(["disagreement", "cka"], alphas=(1e-8,)).fit(frame)
    np.testing.assert_allclose(model.predict(frame), frame["accuracy"], atol=1e-6)
    # no disagreement -> exactly the source accuracy, whatever the other features say
    still = frame.assign(disagreement=0.0, cka=5.0)
    np.testing.assert_allclose(model.predict(still), frame["source_accuracy"])


def test_gap_regressor_without_disagreement_is_plain_ridge():
    frame = synthetic()
    model = GapRegressor(["cka", "other"], alphas=(1.0,)).fit(frame)
    coef = model.coefficients()
    assert not model.scaled and "intercept" in coef["pooled"] and "intercept" in coef["anchored"]
    assert model.predict(frame).shape == (len(frame),)


def test_anchored_part_recovers_checkpoint_offsets_by_hand():
    """gap = u_c + d * (-0.3 + 0.1 z): the within-checkpoint fit recovers (-0.3, 0.1) whatever u_c is; a row
    anchored on its checkpoint's n other languages gets u_c * n / (n + 1) (the source counts as an anchor with
    residual 0), computed here by hand; without anchors it gets the pooled part."""
    frame = synthetic(offset=0.02)
    model = GapRegressor(["disagreement", "cka"], alphas=(1e-10,)).fit(frame)
    scale = model.scaler.scale_[1]
    mean = model.scaler.mean_[1]
    # design (s, s * z_disagreement, s * (z - mean) / scale) . (b', 0, w') == s * (-0.3 + 0.1 z)
    np.testing.assert_allclose(model.anchored.coef, [-0.3 + 0.1 * mean, 0.0, 0.1 * scale], atol=1e-6)
    held = (frame.language == "sw").to_numpy()
    anchors = frame.loc[~held]
    got = model.predict(frame.loc[held], anchors=anchors)
    n = len(LANGS) - 1
    f = frame.loc[held]
    by_hand = f.source_accuracy + f.disagreement * (-0.3 + 0.1 * f.cka) + f.u * n / (n + 1)
    np.testing.assert_allclose(got, by_hand, atol=1e-6)
    # a checkpoint without anchor rows falls back to the pooled part
    alone = anchors[anchors.checkpoint_id != f.checkpoint_id.iloc[0]]
    mixed = model.predict(f, anchors=alone)
    np.testing.assert_allclose(mixed[1:], got[1:])
    np.testing.assert_allclose(mixed[:1], model.predict(f.iloc[:1]))


def test_anchoring_beats_the_source_alone_when_checkpoints_have_offsets():
    frame = synthetic(offset=0.03, noise=0.005, checkpoints=9)
    cv = cross_validate(frame, ["disagreement", "cka"])
    assert cv["error"].mean() < 0.5 * cv["error_source_anchor"].mean()
    # and on data with no offsets the anchored model loses little against the pooled one
    plain = cross_validate(synthetic(noise=0.005, checkpoints=9), ["disagreement", "cka"])
    assert plain["error"].mean() < 1.5 * plain["error_source_anchor"].mean()


def test_other_languages_mean_by_hand():
    frame = pd.DataFrame({"checkpoint_id": ["a", "a", "a", "b", "b"], "accuracy": [0.3, 0.6, 0.9, 0.5, 0.7]})
    np.testing.assert_allclose(other_languages_mean(frame), [0.75, 0.6, 0.45, 0.7, 0.5])


def test_leave_one_language_out_never_sees_the_held_out_language():
    frame = synthetic(noise=0.02)
    features = ["disagreement", "cka", "other"]
    base = cross_validate(frame, features)
    assert len(base) == len(frame) and set(base["scheme"]) == {"leave-one-language-out"}
    rng = np.random.default_rng(1)
    for lang in LANGS:
        mask = (frame.language == lang).to_numpy()
        changed = frame.copy()
        changed.loc[mask, "accuracy"] = rng.uniform(0, 1, mask.sum())  # the language's labels, replaced
        again = cross_validate(changed, features)
        np.testing.assert_allclose(again.loc[mask, "predicted"], base.loc[mask, "predicted"])
        # the other languages' predictions do move: the check above could have failed
        assert not np.allclose(again.loc[~mask, "predicted"], base.loc[~mask, "predicted"])


def test_leave_one_run_out_never_sees_the_held_out_run():
    frame = synthetic(noise=0.02)
    base = cross_validate(frame, ["disagreement", "cka"], "leave-one-run-out")
    mask = (frame.run_id == "r1").to_numpy()
    changed = frame.copy()
    changed.loc[mask, "accuracy"] = 0.0
    again = cross_validate(changed, ["disagreement", "cka"], "leave-one-run-out")
    np.testing.assert_allclose(again.loc[mask, "predicted"], base.loc[mask, "predicted"])
    # a held-out run has no labelled rows of its own: its languages' rows in the other runs anchor it
    model = GapRegressor(["disagreement", "cka"], model_groups="run_id").fit(frame.loc[~mask])
    np.testing.assert_allclose(base.loc[mask, "predicted"], model.predict(frame.loc[mask], anchors=frame.loc[~mask]))
    assert not np.allclose(base["predicted"], base["predicted_source_anchor"])


def model_study(signal: float, seed: int = 0, noise: float = 0.005) -> pd.DataFrame:
    """9 runs (3 configurations x 3 seeds, 2 checkpoints each) x 5 languages whose gap is the language's own
    offset (-0.04 .. -0.20, which no feature measures) plus `signal` times a label-free feature `z` that varies
    between checkpoints, plus noise; `junk` is a feature unrelated to the gap."""
    rng = np.random.default_rng(seed)
    languages = {"ar": -0.20, "de": -0.04, "hi": -0.16, "sw": -0.12, "zh": -0.08}
    rows = []
    for run in range(9):
        for step in range(2):
            src = rng.uniform(0.6, 0.8)
            for lang, offset in languages.items():
                z = rng.normal()
                rows.append(
                    {
                        "checkpoint_id": f"r{run}/s{step}",
                        "run_id": f"r{run}",
                        "configuration": f"c{run % 3}",
                        "language": lang,
                        "source_accuracy": src,
                        "accuracy": src + offset + signal * z + noise * rng.normal(),
                        "z": z,
                        "junk": rng.normal(),
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("scheme", ["leave-one-run-out", "leave-one-configuration-out"])
def test_a_new_model_is_predicted_from_its_features_beyond_its_languages_mean_gap(scheme):
    """Features that tell checkpoints apart within a language beat every rival without target labels; the
    language offsets, which no feature measures, come from the other models' rows of the language."""
    cv = cross_validate(model_study(signal=0.02), ["z", "junk"], scheme)
    maes = cv[["error", "error_source_anchor", "error_language_gap", "error_source"]].mean()
    assert maes["error"] < 0.5 * maes["error_language_gap"]  # the features add what the language's mean misses
    assert maes["error"] < 0.2 * maes["error_source_anchor"]  # and the language offsets what the features miss
    assert maes["error_language_gap"] < maes["error_source"]
    versus = compare_with_baselines(cv, n_boot=200).set_index("baseline")
    assert versus.loc[["same_as_source", "language_gap", "source_anchor_only"], "beats"].all()
    assert versus.loc["other_languages", "uses_own_target_labels"]
    assert not versus.loc["language_gap", "uses_own_target_labels"]


def test_features_without_signal_cost_little_against_the_languages_mean_gap():
    for seed in range(3):
        cv = cross_validate(model_study(signal=0.0, seed=seed), ["z", "junk"], "leave-one-run-out")
        assert cv["error"].mean() < 1.05 * cv["error_language_gap"].mean()


def test_leave_one_configuration_out_never_sees_the_held_out_runs_seed_mates():
    frame = model_study(signal=0.02)
    base = cross_validate(frame, ["z", "junk"], "leave-one-configuration-out")
    mask = (frame.configuration == "c1").to_numpy()
    changed = frame.copy()
    changed.loc[mask, "accuracy"] = 0.0
    again = cross_validate(changed, ["z", "junk"], "leave-one-configuration-out")
    np.testing.assert_allclose(again.loc[mask, "predicted"], base.loc[mask, "predicted"])
    # leave one run out, a run's seed-mates do reach its prediction: the check above could have failed
    runs = cross_validate(changed, ["z", "junk"], "leave-one-run-out")
    base_runs = cross_validate(frame, ["z", "junk"], "leave-one-run-out")
    assert not np.allclose(runs.loc[mask, "predicted"], base_runs.loc[mask, "predicted"])
    with pytest.raises(XlgmError, match="configuration column"):
        cross_validate(frame.drop(columns="configuration"), ["z"], "leave-one-configuration-out")


def test_summary_and_errors():
    cv = cross_validate(synthetic(noise=0.01), ["disagreement", "cka"])
    s = summarize(cv)
    assert s["mae"]["predicted"] == pytest.approx(cv["error"].mean())
    assert s["mae"]["same_as_source"] == pytest.approx((cv["source_accuracy"] - cv["accuracy"]).abs().mean())
    assert s["mae"]["predicted_source_anchor"] == pytest.approx(cv["error_source_anchor"].mean())
    assert s["ratio_to_same_as_source"] < 0.5  # the relation is nearly exact: the predictor beats "same as en"
    assert set(s["per_language"]) == set(LANGS)
    with pytest.raises(XlgmError, match="at least two"):
        cross_validate(synthetic()[lambda f: f.language == "de"], ["disagreement"])
    with pytest.raises(XlgmError, match="unknown scheme"):
        cross_validate(synthetic(), ["disagreement"], "k-fold")


def _errors(pred, source, other, anchor) -> pd.DataFrame:
    """A hand-made cv table: 3 languages x 2 checkpoints, the given absolute errors row by row."""
    return pd.DataFrame(
        {
            "scheme": "leave-one-language-out",
            "language": ["de", "de", "fr", "fr", "sw", "sw"],
            "error": pred,
            "error_source": source,
            "error_other_languages": other,
            "error_source_anchor": anchor,
        }
    )


def test_predictor_against_each_rival_by_hand():
    cv = _errors(
        pred=[0.02, 0.04, 0.01, 0.03, 0.02, 0.02],
        source=[0.05, 0.07, 0.04, 0.06, 0.05, 0.05],
        other=[0.01, 0.02, 0.01, 0.02, 0.01, np.nan],
        anchor=[0.02, 0.04, 0.01, 0.03, 0.02, 0.02],
    )
    table = compare_with_baselines(cv, n_boot=500, seed=1)
    assert list(table.columns) == BASELINE_COLUMNS
    t = table.set_index("baseline")
    # same as source: 0.14 / 6 vs 0.32 / 6; the predictor is 0.03 better in every language: every resample agrees
    assert t.loc["same_as_source", "mae_predictor"] == pytest.approx(0.14 / 6)
    assert t.loc["same_as_source", "mae_baseline"] == pytest.approx(0.32 / 6)
    assert t.loc["same_as_source", "ratio"] == pytest.approx(0.14 / 0.32)
    assert t.loc["same_as_source", "ci_low"] == pytest.approx(-0.03) and t.loc[
        "same_as_source", "ci_high"
    ] == pytest.approx(-0.03)
    assert t.loc["same_as_source", "beats"] and t.loc["same_as_source", "share_better"] == 1.0
    # other languages: undefined on the last row, so both MAEs are over the 5 others (0.12 / 5 vs 0.07 / 5)
    assert t.loc["other_languages", "rows"] == 5 and t.loc["other_languages", "n_languages"] == 3
    assert t.loc["other_languages", "mae_predictor"] == pytest.approx(0.12 / 5)
    assert t.loc["other_languages", "mae_baseline"] == pytest.approx(0.07 / 5)
    assert t.loc["other_languages", "best_rival"] and not t.loc["other_languages", "beats"]
    assert t.loc["other_languages", "ci_low"] > 0  # worse in every language: the whole interval above 0
    # a tie: the difference is 0 in every resample, no resample better
    assert t.loc["source_anchor_only", "difference"] == 0 and t.loc["source_anchor_only", "share_better"] == 0
    assert t["best_rival"].sum() == 1


def test_paired_bootstrap_resamples_languages_together():
    # the predictor wins by 0.05 in de and loses by 0.01 in fr and sw: the per-resample difference is the
    # row-weighted mean of the per-language differences, between -0.05 and +0.01
    cv = _errors(
        pred=[0.0, 0.0, 0.02, 0.02, 0.02, 0.02],
        source=[0.05, 0.05, 0.01, 0.01, 0.01, 0.01],
        other=[0.1] * 6,
        anchor=[0.1] * 6,
    )
    row = compare_with_baselines(cv, n_boot=2000, seed=0).set_index("baseline").loc["same_as_source"]
    assert row["difference"] == pytest.approx((0.08 - 0.14) / 6)
    assert -0.05 - 1e-12 <= row["ci_low"] < row["difference"] < row["ci_high"] <= 0.01 + 1e-12
    assert not row["beats"] and 0.2 < row["share_better"] < 0.9  # de drawn at least once in 1 - (2/3)^3 = 70%


def test_summary_names_the_best_rival():
    cv = cross_validate(synthetic(noise=0.01), ["disagreement", "cka"])
    s = summarize(cv, n_boot=200)
    # leave one language out, the held-out language has no mean gap to add: that rival has no rows
    assert set(s["versus"]) == {"same_as_source", "other_languages", "source_anchor_only"}
    maes = {k: v["mae_baseline"] for k, v in s["versus"].items()}
    assert s["best_rival"] == min(maes, key=maes.get)
    assert s["ratio_to_best_rival"] == pytest.approx(s["mae"]["predicted"] / maes[s["best_rival"]])
    assert s["versus"]["same_as_source"]["mae_baseline"] == pytest.approx(s["mae"]["same_as_source"])


def test_derived_features_and_availability():
    frame = pd.DataFrame(
        {
            "translation-agreement": [0.9, 0.6],
            "atc-accuracy": [0.5, 0.4],
            "source_accuracy": [0.6, 0.6],
            "linear-cka": [0.8, np.nan],
        }
    )
    out = derive_features(frame)
    np.testing.assert_allclose(out["disagreement"], [0.1, 0.4])
    np.testing.assert_allclose(out["atc-gap"], [-0.1, -0.2])
    assert "doc-gap" not in out  # its input is absent
    assert available_features(out) == ["disagreement", "atc-gap"]  # linear-cka has a missing value
    with pytest.raises(XlgmError, match="unknown feature"):
        available_features(out, ["nope"])


def test_applicable_features_leave_out_or_refuse_the_parallel_ones():
    from xlgm.analysis.predict import FEATURES, PARALLEL_ONLY, applicable_features

    assert applicable_features(None) is None and applicable_features(["atc-gap"]) == ["atc-gap"]
    reason = "task udpos labels words, and token data is not parallel across languages"
    assert applicable_features(None, reason) == [f for f in FEATURES if f not in PARALLEL_ONLY]
    assert applicable_features(["atc-gap", "margin-gap"], reason) == ["atc-gap", "margin-gap"]
    with pytest.raises(XlgmError, match=f"^prediction.features: linear-cka need\\(s\\) parallel text, and {reason}$"):
        applicable_features(["atc-gap", "linear-cka"], reason)


def test_atc_and_doc_gaps_are_to_the_source_word_accuracy_where_the_frame_has_it():
    from xlgm.analysis.predict import SOURCE_WORD_ACCURACY

    rows = pd.DataFrame(
        {"atc-accuracy": [0.7], "doc-accuracy": [0.6], "source_accuracy": [0.5], SOURCE_WORD_ACCURACY: [0.9]}
    )
    derived = derive_features(rows)
    assert derived["atc-gap"].iloc[0] == pytest.approx(-0.2) and derived["doc-gap"].iloc[0] == pytest.approx(-0.3)
    pairs = derive_features(rows.drop(columns=SOURCE_WORD_ACCURACY))
    assert pairs["atc-gap"].iloc[0] == pytest.approx(0.2)  # sentence pairs: to the source accuracy, as before
