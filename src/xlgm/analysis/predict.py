"""Predict a checkpoint's accuracy in a language from label-free measures, and test that prediction honestly.

The rows are (checkpoint, target language) pairs. What is known for each: the checkpoint's accuracy on the
labelled source language (English) and the label-free measures of its outputs on the target language's text
(measures/label_free.py). What is predicted: its accuracy in that language.

The model predicts the *gap* to the source accuracy with a ridge regression on standardised features:

    accuracy_hat = source_accuracy + s * (b + w . z) + u_c     s = disagreement when the text is parallel, else 1

On parallel text, `disagreement` (1 - translation-agreement) is the share of rows whose prediction changes
under translation; rows whose prediction survives have the same correctness in both languages (their label is
the same), so the gap is exactly a sum over the changed rows: it is zero when nothing changes and bounded by s.
Scaling by s builds that in (a checkpoint that predicts one class everywhere gets the source accuracy).

u_c is the checkpoint's own offset: the part of its gap that its features do not explain and that its target
languages share (its source accuracy, on a few hundred rows, is itself a noisy anchor). Two parts are fitted:
- anchored, for a checkpoint with labelled rows in other target languages (its *anchors*): (b, w) fitted on
  the variation within each checkpoint (gaps and design centred per checkpoint: a fixed-effects regression),
  and u_c = the sum of the anchors' residuals over their number plus one, the source language counting as one
  more anchor of residual 0 (exactly so on parallel text, where s = 0 for the source; elsewhere a shrinkage
  towards the pooled intercept);
- pooled, for a checkpoint without anchors: (b, w) fitted on the gaps as they are, u_c = 0.
Which rows anchor is the caller's: in leave-one-language-out, the checkpoint's other target languages; in
leave-one-run-out, none (the held-out run's target labels are all hidden, so the source alone anchors); for a
new language's text, every labelled target language of the study.

Each part's ridge penalty is chosen from `alphas` by a grouped cross-validation inside the training rows, each
held-out group predicted the way the part is used: anchored by language, pooled by run.

Cross-validation is by groups: leave-one-language-out (every row of the held-out language leaves the training
and anchor rows, so no language's accuracy reaches its own prediction) and leave-one-run-out. Each prediction
is compared with (a) the naive baseline "same as the source language", (b) the mean accuracy of the
checkpoint's other target languages (which uses their labels, as the anchors do) and (c) the pooled part alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from xlgm.core.errors import XlgmError

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
class _Fit:
    """One fitted part of the predictor: gap = x . coef + intercept (+ the checkpoint's offset when anchored)."""

    coef: np.ndarray
    intercept: float
    alpha: float

    def gap(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef + self.intercept


@dataclass
class GapRegressor:
    """accuracy_hat = source_accuracy + s * (b + w . z) + u_c; see the module docstring.

    Two parts are fitted: `anchored` (within-checkpoint fit, u_c from anchor rows) predicts the rows whose
    checkpoint has anchors; `pooled` (fit on the gaps as they are, u_c = 0) predicts the others."""

    features: list[str]
    alphas: Sequence[float] = DEFAULT_ALPHAS
    scale_by_disagreement: bool = True
    use_anchors: bool = True
    anchored: _Fit | None = field(default=None, repr=False)
    pooled: _Fit | None = field(default=None, repr=False)
    scaler: Any = field(default=None, repr=False)  # a fitted sklearn StandardScaler

    @property
    def scaled(self) -> bool:
        return self.scale_by_disagreement and "disagreement" in self.features

    def _design(self, frame: pd.DataFrame) -> np.ndarray:
        z = self.scaler.transform(frame[self.features].to_numpy(dtype=np.float64))
        if self.scaled:
            s = frame["disagreement"].to_numpy(dtype=np.float64)[:, None]
            return np.hstack([s, s * z])  # the first column is the scaled intercept b
        return z

    @staticmethod
    def _gap(frame: pd.DataFrame) -> np.ndarray:
        return (frame["accuracy"] - frame["source_accuracy"]).to_numpy(dtype=np.float64)

    def _solve(self, x: np.ndarray, y: np.ndarray, checkpoints: np.ndarray, alpha: float, within: bool) -> _Fit:
        """Ridge for one penalty, on the within-checkpoint variation (gaps and design centred per checkpoint)
        or pooled. The scaled design has no free intercept: zero disagreement means zero gap."""
        from sklearn.linear_model import Ridge

        if within:
            coef = (
                Ridge(alpha=alpha, fit_intercept=False)
                .fit(x - _group_mean(x, checkpoints), y - _group_mean(y, checkpoints))
                .coef_
            )
            return _Fit(coef, 0.0 if self.scaled else float(np.mean(y - x @ coef)), alpha)
        model = Ridge(alpha=alpha, fit_intercept=not self.scaled).fit(x, y)
        return _Fit(model.coef_, 0.0 if self.scaled else float(model.intercept_), alpha)

    def _offsets(
        self, fit: _Fit, x: np.ndarray, y: np.ndarray, checkpoints: np.ndarray, wanted: np.ndarray
    ) -> np.ndarray:
        """u_c for each checkpoint in `wanted`: the sum of its anchor rows' residuals over their number plus
        one (the source, residual 0); NaN for a checkpoint without anchors."""
        residual = pd.Series(y - fit.gap(x)).groupby(checkpoints)
        offset = residual.sum() / (residual.count() + 1)
        return pd.Series(wanted).map(offset).to_numpy(dtype=np.float64)

    def _choose(self, x: np.ndarray, y: np.ndarray, checkpoints: np.ndarray, groups: np.ndarray, within: bool) -> _Fit:
        """The penalty with the least squared error in a grouped cross-validation inside these rows, each
        held-out group predicted the way the part is used (anchored on the other groups' rows, or not)."""
        names = pd.unique(groups)
        alphas = list(self.alphas)
        if len(alphas) > 1 and len(names) >= 3:
            errors = []
            for alpha in alphas:
                sq = 0.0
                for g in names:
                    held = groups == g
                    fit = self._solve(x[~held], y[~held], checkpoints[~held], alpha, within)
                    pred = fit.gap(x[held])
                    if within:
                        pred = pred + np.nan_to_num(
                            self._offsets(fit, x[~held], y[~held], checkpoints[~held], checkpoints[held])
                        )
                    sq += float(np.sum((pred - y[held]) ** 2))
                errors.append(sq)
            alpha = alphas[int(np.argmin(errors))]  # ties: the first listed
        else:
            alpha = alphas[len(alphas) // 2]
        return self._solve(x, y, checkpoints, float(alpha), within)

    def fit(self, frame: pd.DataFrame) -> GapRegressor:
        from sklearn.preprocessing import StandardScaler

        if not self.features:
            raise XlgmError("no features to fit on")
        if len(frame) < 3:
            raise XlgmError(f"too few rows to fit a predictor ({len(frame)}; need at least 3)")
        self.scaler = StandardScaler().fit(frame[self.features].to_numpy(dtype=np.float64))
        x, y = self._design(frame), self._gap(frame)
        checkpoints = frame["checkpoint_id"].to_numpy()
        languages = frame["language"].to_numpy()
        runs = frame["run_id"].to_numpy() if "run_id" in frame.columns else checkpoints
        # each part's penalty is tested the way the part is used: anchored on new languages, pooled on new runs
        self.pooled = self._choose(x, y, checkpoints, runs if len(pd.unique(runs)) >= 3 else languages, False)
        self.anchored = self._choose(x, y, checkpoints, languages, True) if self.use_anchors else None
        return self

    def predict(self, frame: pd.DataFrame, anchors: pd.DataFrame | None = None) -> np.ndarray:
        """Predicted accuracy of each row. `anchors` are labelled rows of other languages: a row whose checkpoint
        has some is predicted by the anchored part, the others by the pooled part. The caller keeps a row's own
        language (and, for a new run, its checkpoints) out of the anchors."""
        if self.pooled is None:
            raise XlgmError("the predictor is not fitted")
        x = self._design(frame)
        gap = self.pooled.gap(x)
        if self.anchored is not None and anchors is not None and len(anchors):
            fit = self.anchored
            offset = self._offsets(
                fit,
                self._design(anchors),
                self._gap(anchors),
                anchors["checkpoint_id"].to_numpy(),
                frame["checkpoint_id"].to_numpy(),
            )
            has = ~np.isnan(offset)
            gap[has] = fit.gap(x[has]) + offset[has]
        return np.clip(frame["source_accuracy"].to_numpy(dtype=np.float64) + gap, 0.0, 1.0)

    def coefficients(self) -> dict[str, dict[str, float]]:
        names = (["scale"] if self.scaled else []) + self.features
        out = {}
        for part, fit in (("anchored", self.anchored), ("pooled", self.pooled)):
            if fit is None:
                continue
            out[part] = dict(zip(names, map(float, np.ravel(fit.coef))))
            if not self.scaled:
                out[part]["intercept"] = fit.intercept
            out[part]["alpha"] = fit.alpha
        return out


def _group_mean(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row (or value) replaced by the mean over its group."""
    _, index = np.unique(groups, return_inverse=True)
    counts = np.bincount(index).astype(np.float64)
    if x.ndim == 1:
        return (np.bincount(index, weights=x) / counts)[index]
    sums = np.stack([np.bincount(index, weights=col) for col in x.T], axis=1)
    return (sums / counts[:, None])[index]


def other_languages_mean(frame: pd.DataFrame) -> np.ndarray:
    """Baseline (b): for each row, the mean accuracy of the same checkpoint's other target languages."""
    sums = frame.groupby("checkpoint_id")["accuracy"].transform("sum")
    counts = frame.groupby("checkpoint_id")["accuracy"].transform("count")
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((sums - frame["accuracy"]) / (counts - 1)).to_numpy(dtype=np.float64)


SCHEMES = {"leave-one-language-out": "language", "leave-one-run-out": "run_id"}


def cross_validate(
    frame: pd.DataFrame,
    features: Sequence[str],
    scheme: str = "leave-one-language-out",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    scale_by_disagreement: bool = True,
    use_anchors: bool = True,
) -> pd.DataFrame:
    """One prediction per row, each from a model fitted, and anchored, without the row's group (its language
    or its run): the held-out rows are neither training rows, nor anchors, nor in the penalty's inner CV.

    Returns the keys, the actual accuracy, the prediction, both baselines and the absolute errors."""
    if scheme not in SCHEMES:
        raise XlgmError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    group = SCHEMES[scheme]
    groups = frame[group].unique()
    if len(groups) < 2:
        raise XlgmError(f"{scheme} needs at least two values of {group}, got {len(groups)}")
    pred = np.full(len(frame), np.nan)
    pooled = np.full(len(frame), np.nan)  # the same models with the source as the only anchor
    for g in groups:
        held = (frame[group] == g).to_numpy()
        train = frame.loc[~held]
        model = GapRegressor(list(features), alphas, scale_by_disagreement, use_anchors).fit(train)
        pred[held] = model.predict(frame.loc[held], anchors=train)
        pooled[held] = model.predict(frame.loc[held])
    out = frame[list(KEYS) + ["accuracy", "source_accuracy"]].copy()
    out["scheme"] = scheme
    out["predicted"] = pred
    out["predicted_source_anchor"] = pooled
    out["baseline_source"] = frame["source_accuracy"].to_numpy(dtype=np.float64)
    out["baseline_other_languages"] = other_languages_mean(frame)
    for col, name in (
        ("predicted", "error"),
        ("predicted_source_anchor", "error_source_anchor"),
        ("baseline_source", "error_source"),
        ("baseline_other_languages", "error_other_languages"),
    ):
        out[name] = (out[col] - out["accuracy"]).abs()
    return out.reset_index(drop=True)


# The predictor's rivals: the errors cross_validate writes for each.
BASELINES = {
    "same_as_source": "error_source",
    "other_languages": "error_other_languages",
    "source_anchor_only": "error_source_anchor",
}
ROUNDING = 1e-12  # MAE differences below this are floating-point noise, not a win
BASELINE_COLUMNS = [
    "scheme",
    "baseline",
    "mae_predictor",
    "mae_baseline",
    "ratio",
    "difference",
    "ci_low",
    "ci_high",
    "share_better",
    "beats",
    "best_rival",
    "n_languages",
    "rows",
]


def compare_with_baselines(
    cv: pd.DataFrame, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """The predictor against each rival, with a paired bootstrap over languages.

    For each baseline of `BASELINES` (rows where the baseline is undefined, e.g. "other languages" for a
    checkpoint with one target language, are left out of that comparison): the MAE of the predictor and of the
    baseline over the same rows, their ratio and difference (predictor - baseline; negative = the predictor is
    better), and a percentile interval of the difference from `n_boot` resamples of the languages (with
    replacement; a language's rows stay together, so the languages are the independent units and both errors of
    a row are always drawn together). ``share_better`` is the share of resamples in which the predictor's MAE is
    lower by more than rounding (1e-12); ``beats`` is whether the whole interval lies below 0 by more than that.
    ``best_rival`` marks the baseline(s) with the lowest MAE (the one to beat).
    """
    rows = []
    languages = cv["language"].to_numpy()
    names, index = np.unique(languages, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    weights = np.stack([np.bincount(d, minlength=len(names)) for d in draws]).astype(float) if n_boot else None
    alpha = (1.0 - confidence) / 2.0
    for baseline, column in BASELINES.items():
        both = cv["error"].notna() & cv[column].notna()
        if not both.any():
            continue
        idx = index[both.to_numpy()]
        count = np.bincount(idx, minlength=len(names)).astype(float)
        pred = np.bincount(idx, weights=cv.loc[both, "error"].to_numpy(dtype=float), minlength=len(names))
        base = np.bincount(idx, weights=cv.loc[both, column].to_numpy(dtype=float), minlength=len(names))
        mae_pred, mae_base = pred.sum() / count.sum(), base.sum() / count.sum()
        lo = hi = share = np.nan
        if weights is not None:
            n = weights @ count
            with np.errstate(invalid="ignore", divide="ignore"):
                diff = (weights @ pred) / n - (weights @ base) / n
            diff = diff[np.isfinite(diff)]
            if diff.size:
                lo, hi = np.quantile(diff, [alpha, 1.0 - alpha])
                share = float(np.mean(diff < -ROUNDING))
        rows.append(
            {
                "scheme": str(cv["scheme"].iloc[0]),
                "baseline": baseline,
                "mae_predictor": float(mae_pred),
                "mae_baseline": float(mae_base),
                "ratio": float(mae_pred / mae_base) if mae_base > 0 else np.nan,
                "difference": float(mae_pred - mae_base),
                "ci_low": float(lo),
                "ci_high": float(hi),
                "share_better": share,
                "beats": bool(np.isfinite(hi) and hi < -ROUNDING),
                "n_languages": int((count > 0).sum()),
                "rows": int(both.sum()),
            }
        )
    table = pd.DataFrame(rows, columns=[c for c in BASELINE_COLUMNS if c != "best_rival"])
    table.insert(
        BASELINE_COLUMNS.index("best_rival"),
        "best_rival",
        table["mae_baseline"] == table["mae_baseline"].min() if len(table) else [],
    )
    return table


def summarize(cv: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean absolute errors of the predictor and the baselines, overall and per language, and the predictor
    against each baseline and its best rival (`compare_with_baselines`)."""

    def maes(rows: pd.DataFrame) -> dict:
        return {
            "predicted": float(rows["error"].mean()),
            "predicted_source_anchor": float(rows["error_source_anchor"].mean()),
            "same_as_source": float(rows["error_source"].mean()),
            "other_languages": float(rows["error_other_languages"].mean()),
            "rows": int(len(rows)),
        }

    overall = maes(cv)
    ratio = overall["predicted"] / overall["same_as_source"] if overall["same_as_source"] > 0 else float("nan")
    versus = compare_with_baselines(cv, n_boot=n_boot, seed=seed)
    best = versus[versus["best_rival"]].iloc[0] if versus["best_rival"].any() else None
    return {
        "scheme": str(cv["scheme"].iloc[0]),
        "mae": overall,
        "ratio_to_same_as_source": ratio,
        "best_rival": None if best is None else str(best["baseline"]),
        "ratio_to_best_rival": float("nan") if best is None else float(best["ratio"]),
        "beats_best_rival": bool(best is not None and best["beats"]),
        "versus": {
            r["baseline"]: {k: r[k] for k in BASELINE_COLUMNS if k not in ("scheme", "baseline")}
            for r in versus.to_dict("records")
        },
        "per_language": {lang: maes(rows) for lang, rows in cv.groupby("language", sort=False)},
    }
