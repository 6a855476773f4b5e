"""Predict a checkpoint's accuracy in a language from label-free measures, and test that prediction honestly.

The rows are (checkpoint, target language) pairs. What is known for each: the checkpoint's accuracy on the
labelled source language (English) and the label-free measures of its outputs on the target language's text
(measures/label_free.py). What is predicted: its accuracy in that language.

The model predicts the *gap* to the source accuracy, with a ridge regression (scikit-learn `RidgeCV`: the
penalty chosen by efficient leave-one-out on the training rows only) on standardised features:

    accuracy_hat = source_accuracy + s * (b + w . z)        s = disagreement when the text is parallel, else 1

On parallel text, `disagreement` (1 - translation-agreement) is the share of rows whose prediction changes
under translation; rows whose prediction survives have the same correctness in both languages (their label is
the same), so the gap is exactly a sum over the changed rows: it is zero when nothing changes and bounded by s.
Scaling by s builds that in (a checkpoint that predicts one class everywhere gets the source accuracy exactly).

Cross-validation is by groups: leave-one-language-out (every row of the held-out language leaves the training
set, so no language's accuracy reaches its own prediction) and leave-one-run-out. Each prediction is compared
with (a) the naive baseline "same as the source language" and (b) the mean accuracy of the checkpoint's other
target languages (which uses their labels: a strong baseline, not a label-free one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xlgm.errors import XlgmError

KEYS = ("checkpoint_id", "run_id", "language")

# The features the regression may use, from the label-free measures (columns named after them) and the source
# side. Derived ones are differences to the source, so that the model reads "how much less confident than in
# English" rather than raw levels that differ between checkpoints.
FEATURES: dict[str, str] = {
    "disagreement": "1 - translation-agreement: share of parallel rows whose prediction changes (needs parallel)",
    "translation-gap": "expected accuracy change under the source posterior (needs parallel)",
    "atc-gap": "atc-accuracy - source accuracy (Garg et al. 2022)",
    "doc-gap": "doc-accuracy - source accuracy (Guillory et al. 2021)",
    "margin-gap": "confidence-margin on the target - on the source",
    "entropy-gap": "prediction-entropy on the target - on the source",
    "checkpoint-agreement": "mean agreement with the study's other checkpoints on the same text",
    "linear-cka": "linear CKA of source and target sentence embeddings (needs parallel)",
    "embedding-distance": "distance between source and target mean embeddings, relative to the source scale",
    "retrieval-accuracy": "translation retrieval accuracy by nearest neighbour (needs parallel)",
}
PARALLEL_ONLY = ("disagreement", "translation-gap", "linear-cka", "retrieval-accuracy")
DEFAULT_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def derive_features(rows: pd.DataFrame) -> pd.DataFrame:
    """Add the FEATURES columns to a frame holding the label-free measure columns and the source-side columns
    `source_accuracy`, `source_confidence-margin`, `source_prediction-entropy`."""
    out = rows.copy()
    derived = {
        "disagreement": lambda f: 1.0 - f["translation-agreement"],
        "atc-gap": lambda f: f["atc-accuracy"] - f["source_accuracy"],
        "doc-gap": lambda f: f["doc-accuracy"] - f["source_accuracy"],
        "margin-gap": lambda f: f["confidence-margin"] - f["source_confidence-margin"],
        "entropy-gap": lambda f: f["prediction-entropy"] - f["source_prediction-entropy"],
    }
    for name, fn in derived.items():
        try:
            out[name] = fn(out)
        except KeyError:
            pass  # its inputs are absent (e.g. no parallel text): the feature is simply unavailable
    return out


def available_features(frame: pd.DataFrame, wanted: Sequence[str] | None = None) -> list[str]:
    """The wanted features (default: all) that the frame has with no missing value."""
    names = list(wanted) if wanted else list(FEATURES)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise XlgmError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}")
    return [n for n in names if n in frame.columns and frame[n].notna().all()]


@dataclass
class GapRegressor:
    """accuracy_hat = source_accuracy + s * ridge(z); see the module docstring."""

    features: list[str]
    alphas: Sequence[float] = DEFAULT_ALPHAS
    scale_by_disagreement: bool = True
    model: object = field(default=None, repr=False)
    scaler: object = field(default=None, repr=False)

    @property
    def scaled(self) -> bool:
        return self.scale_by_disagreement and "disagreement" in self.features

    def _design(self, frame: pd.DataFrame) -> np.ndarray:
        z = self.scaler.transform(frame[self.features].to_numpy(dtype=np.float64))
        if self.scaled:
            s = frame["disagreement"].to_numpy(dtype=np.float64)[:, None]
            return np.hstack([s, s * z])  # the first column is the scaled intercept b
        return z

    def fit(self, frame: pd.DataFrame) -> "GapRegressor":
        from sklearn.linear_model import RidgeCV
        from sklearn.preprocessing import StandardScaler

        if not self.features:
            raise XlgmError("no features to fit on")
        if len(frame) < 3:
            raise XlgmError(f"too few rows to fit a predictor ({len(frame)}; need at least 3)")
        self.scaler = StandardScaler().fit(frame[self.features].to_numpy(dtype=np.float64))
        target = (frame["accuracy"] - frame["source_accuracy"]).to_numpy(dtype=np.float64)
        self.model = RidgeCV(alphas=list(self.alphas), fit_intercept=not self.scaled).fit(self._design(frame), target)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.model is None:
            raise XlgmError("the predictor is not fitted")
        gap = self.model.predict(self._design(frame))
        return np.clip(frame["source_accuracy"].to_numpy(dtype=np.float64) + gap, 0.0, 1.0)

    def coefficients(self) -> dict[str, float]:
        coef = list(np.ravel(self.model.coef_))
        names = (["scale"] if self.scaled else []) + self.features
        out = dict(zip(names, map(float, coef)))
        if not self.scaled:
            out["intercept"] = float(self.model.intercept_)
        out["alpha"] = float(self.model.alpha_)
        return out


def other_languages_mean(frame: pd.DataFrame) -> np.ndarray:
    """Baseline (b): for each row, the mean accuracy of the same checkpoint's other target languages."""
    sums = frame.groupby("checkpoint_id")["accuracy"].transform("sum")
    counts = frame.groupby("checkpoint_id")["accuracy"].transform("count")
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((sums - frame["accuracy"]) / (counts - 1)).to_numpy(dtype=np.float64)


SCHEMES = {"leave-one-language-out": "language", "leave-one-run-out": "run_id"}


def cross_validate(frame: pd.DataFrame, features: Sequence[str], scheme: str = "leave-one-language-out",
                   alphas: Sequence[float] = DEFAULT_ALPHAS, scale_by_disagreement: bool = True) -> pd.DataFrame:
    """One prediction per row, each from a model fitted without the row's group (its language or its run).

    Returns the keys, the actual accuracy, the prediction, both baselines and the absolute errors."""
    if scheme not in SCHEMES:
        raise XlgmError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    group = SCHEMES[scheme]
    groups = frame[group].unique()
    if len(groups) < 2:
        raise XlgmError(f"{scheme} needs at least two values of {group}, got {len(groups)}")
    pred = np.full(len(frame), np.nan)
    for g in groups:
        held = (frame[group] == g).to_numpy()
        model = GapRegressor(list(features), alphas, scale_by_disagreement).fit(frame.loc[~held])
        pred[held] = model.predict(frame.loc[held])
    out = frame[list(KEYS) + ["accuracy", "source_accuracy"]].copy()
    out["scheme"] = scheme
    out["predicted"] = pred
    out["baseline_source"] = frame["source_accuracy"].to_numpy(dtype=np.float64)
    out["baseline_other_languages"] = other_languages_mean(frame)
    for col, name in (("predicted", "error"), ("baseline_source", "error_source"),
                      ("baseline_other_languages", "error_other_languages")):
        out[name] = (out[col] - out["accuracy"]).abs()
    return out.reset_index(drop=True)


def summarize(cv: pd.DataFrame) -> dict:
    """Mean absolute errors of the predictor and both baselines, overall and per language."""
    def maes(rows: pd.DataFrame) -> dict:
        return {"predicted": float(rows["error"].mean()), "same_as_source": float(rows["error_source"].mean()),
                "other_languages": float(rows["error_other_languages"].mean()), "rows": int(len(rows))}

    overall = maes(cv)
    ratio = overall["predicted"] / overall["same_as_source"] if overall["same_as_source"] > 0 else float("nan")
    return {"scheme": str(cv["scheme"].iloc[0]), "mae": overall, "ratio_to_same_as_source": ratio,
            "per_language": {lang: maes(rows) for lang, rows in cv.groupby("language", sort=False)}}
