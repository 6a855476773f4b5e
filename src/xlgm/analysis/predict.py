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
languages share (its source accuracy, on a few hundred rows, is itself a noisy anchor). v_l is the language's
own offset: the part of its gap that the features do not explain and that the study's checkpoints share (how
hard the language's test rows are, and how far it is from the source). Three parts are fitted:
- anchored, for a checkpoint with labelled rows in other target languages (its *anchors*): (b, w) fitted on
  the variation within each checkpoint (gaps and design centred per checkpoint: a fixed-effects regression),
  and u_c = the sum of the anchors' residuals over their number plus one, the source language counting as one
  more anchor of residual 0 (exactly so on parallel text, where s = 0 for the source; elsewhere a shrinkage
  towards the pooled intercept);
- by language, for a checkpoint without anchors in a language that other checkpoints have labelled rows of
  (a new model of the study's languages): (b, w) fitted on the variation within each language, and v_l = the
  mean residual of the language's labelled rows. Its features then only have to tell checkpoints apart within a
  language, not languages apart, which a language's other checkpoints already do;
- pooled, for a checkpoint without anchors in a language without labelled rows: (b, w) fitted on the gaps as
  they are, u_c = v_l = 0.
Which rows anchor is the caller's: in leave-one-language-out, the checkpoint's other target languages; in
leave-one-run-out, the other runs' rows of the same language (the held-out run's target labels are all hidden);
for a new language's text, every labelled target language of the study.

Each part's ridge penalty is chosen from `alphas` by a grouped cross-validation inside the training rows, each
held-out group predicted the way the part is used: anchored by language; by language and pooled by model
(`model_groups`: runs, or configurations when seeds of one configuration must not help each other).

Cross-validation is by groups: leave-one-language-out (every row of the held-out language leaves the training
and anchor rows, so no language's accuracy reaches its own prediction), leave-one-run-out and
leave-one-configuration-out (a run's other seeds leave with it). Each prediction is compared with (a) the naive
baseline "same as the source language", (b) the source accuracy plus the language's mean gap over the training
checkpoints (the same anchors without features), (c) the mean accuracy of the checkpoint's other target
languages (which uses their labels, as the anchors do: not a rival for a model without target labels) and
(d) the pooled part alone (the source as the only anchor).

On a token task (UD-POS, PAN-X) the accuracy columns hold the task's metric (token accuracy, entity F1), the
rows' outputs are words (measures/label_free.py), and the features that need parallel text are not available
(token data is not parallel across languages; `applicable_features`). ATC and DoC estimate word accuracy, so
their gaps are taken to the source's word accuracy (`SOURCE_WORD_ACCURACY`): for UD-POS the metric itself, for
PAN-X a proxy whose relation to the entity-F1 gap the regression learns.
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
    "atc-gap": "atc-accuracy - source accuracy (Garg et al. 2022); token tasks: word accuracies",
    "doc-gap": "doc-accuracy - source accuracy (Guillory et al. 2021); token tasks: word accuracies",
    "margin-gap": "confidence-margin on the target - on the source",
    "entropy-gap": "prediction-entropy on the target - on the source",
    "checkpoint-agreement": "mean agreement with the study's other checkpoints on the same text",
    "linear-cka": "linear CKA of source and target sentence embeddings (needs parallel)",
    "embedding-distance": "distance between source and target mean embeddings, relative to the source scale",
    "retrieval-accuracy": "translation retrieval accuracy by nearest neighbour (needs parallel)",
}
PARALLEL_ONLY = ("disagreement", "translation-gap", "linear-cka", "retrieval-accuracy")
# The source's share of rows predicted right, where the accuracy columns hold another metric (a token task's
# word accuracy): what ATC and DoC estimate, so what their gaps are taken to. Absent: `source_accuracy`.
SOURCE_WORD_ACCURACY = "source_word_accuracy"
DEFAULT_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def derive_features(rows: pd.DataFrame) -> pd.DataFrame:
    """Add the FEATURES columns to a frame holding the label-free measure columns and the source-side columns
    `source_accuracy`, `source_confidence-margin`, `source_prediction-entropy` (and, for a token task,
    `SOURCE_WORD_ACCURACY`)."""
    out = rows.copy()
    estimated = SOURCE_WORD_ACCURACY if SOURCE_WORD_ACCURACY in out.columns else "source_accuracy"
    derived = {
        "disagreement": lambda f: 1.0 - f["translation-agreement"],
        "atc-gap": lambda f: f["atc-accuracy"] - f[estimated],
        "doc-gap": lambda f: f["doc-accuracy"] - f[estimated],
        "margin-gap": lambda f: f["confidence-margin"] - f["source_confidence-margin"],
        "entropy-gap": lambda f: f["prediction-entropy"] - f["source_prediction-entropy"],
    }
    for name, fn in derived.items():
        try:
            out[name] = fn(out)
        except KeyError:
            pass  # its inputs are absent (e.g. no parallel text): the feature is simply unavailable
    return out


def applicable_features(wanted: Sequence[str] | None, not_parallel: str | None = None) -> list[str] | None:
    """The features the study's text allows. `not_parallel`: why its text is not parallel (None when it is).
    Auto (`wanted` None) then leaves out the PARALLEL_ONLY features; naming one of them is refused in one line."""
    if not_parallel is None:
        return None if wanted is None else list(wanted)
    if wanted is None:
        return [f for f in FEATURES if f not in PARALLEL_ONLY]
    named = [f for f in wanted if f in PARALLEL_ONLY]
    if named:
        raise XlgmError(f"prediction.features: {', '.join(named)} need(s) parallel text, and {not_parallel}")
    return list(wanted)


def available_features(frame: pd.DataFrame, wanted: Sequence[str] | None = None) -> list[str]:
    """The wanted features (default: all) that the frame has with no missing value."""
    names = list(wanted) if wanted else list(FEATURES)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise XlgmError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}")
    return [n for n in names if n in frame.columns and frame[n].notna().all()]


@dataclass
class _Fit:
    """One fitted part of the predictor: gap = x . coef + intercept (+ the unit's offset when anchored)."""

    coef: np.ndarray
    intercept: float
    alpha: float

    def gap(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef + self.intercept


# How many rows of residual 0 each anchored part's offset is shrunk with: a checkpoint's source language counts
# as one more anchor (its gap is 0 by definition); a language has no such row.
_PRIOR_ROWS = {"checkpoint_id": 1, "language": 0}


@dataclass
class GapRegressor:
    """accuracy_hat = source_accuracy + s * (b + w . z) + u_c (or + v_l); see the module docstring.

    Three parts are fitted: `anchored` (within-checkpoint fit, u_c from the checkpoint's anchor rows) predicts
    the rows whose checkpoint has anchors; `by_language` (within-language fit, v_l from the language's anchor
    rows) the rows whose language has them; `pooled` (fit on the gaps as they are) the others. `model_groups`
    is the column whose values the pooled and by-language parts' penalty is cross-validated over (a new model:
    `run_id`, or a configuration column so that a run's seed-mates never help predict it)."""

    features: list[str]
    alphas: Sequence[float] = DEFAULT_ALPHAS
    scale_by_disagreement: bool = True
    use_anchors: bool = True
    model_groups: str = "run_id"
    anchored: _Fit | None = field(default=None, repr=False)
    by_language: _Fit | None = field(default=None, repr=False)
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

    def _solve(self, x: np.ndarray, y: np.ndarray, units: np.ndarray | None, alpha: float) -> _Fit:
        """Ridge for one penalty, on the variation within each unit (gaps and design centred per checkpoint or
        per language: the units' offsets come from their anchors) or, with no units, pooled. The scaled design
        has no free intercept: zero disagreement means zero gap."""
        from sklearn.linear_model import Ridge

        if units is not None:
            coef = (
                Ridge(alpha=alpha, fit_intercept=False).fit(x - _group_mean(x, units), y - _group_mean(y, units)).coef_
            )
            return _Fit(coef, 0.0 if self.scaled else float(np.mean(y - x @ coef)), alpha)
        model = Ridge(alpha=alpha, fit_intercept=not self.scaled).fit(x, y)
        return _Fit(model.coef_, 0.0 if self.scaled else float(model.intercept_), alpha)

    @staticmethod
    def _offsets(
        fit: _Fit, x: np.ndarray, y: np.ndarray, units: np.ndarray, wanted: np.ndarray, prior: int
    ) -> np.ndarray:
        """The offset of each unit in `wanted`: the sum of its anchor rows' residuals over their number plus
        `prior` (rows of residual 0); NaN for a unit without anchors."""
        residual = pd.Series(y - fit.gap(x)).groupby(units)
        offset = residual.sum() / (residual.count() + prior)
        return pd.Series(wanted).map(offset).to_numpy(dtype=np.float64)

    def _choose(self, x: np.ndarray, y: np.ndarray, units: pd.Series | None, groups: np.ndarray) -> _Fit:
        """The penalty with the least squared error in a grouped cross-validation inside these rows, each
        held-out group predicted the way the part is used: offset by its units' rows in the other groups (a
        held-out row whose unit has none gets no offset), or with no offset for the pooled part."""
        names = pd.unique(groups)
        alphas = list(self.alphas)
        unit = None if units is None else units.to_numpy()
        prior = 0 if units is None else _PRIOR_ROWS[str(units.name)]
        if len(alphas) > 1 and len(names) >= 3:
            errors = []
            for alpha in alphas:
                sq = 0.0
                for g in names:
                    held = groups == g
                    fit = self._solve(x[~held], y[~held], None if unit is None else unit[~held], alpha)
                    pred = fit.gap(x[held])
                    if unit is not None:
                        pred = pred + np.nan_to_num(
                            self._offsets(fit, x[~held], y[~held], unit[~held], unit[held], prior)
                        )
                    sq += float(np.sum((pred - y[held]) ** 2))
                errors.append(sq)
            alpha = alphas[int(np.argmin(errors))]  # ties: the first listed
        else:
            alpha = alphas[len(alphas) // 2]
        return self._solve(x, y, unit, float(alpha))

    def fit(self, frame: pd.DataFrame) -> GapRegressor:
        from sklearn.preprocessing import StandardScaler

        if not self.features:
            raise XlgmError("no features to fit on")
        if len(frame) < 3:
            raise XlgmError(f"too few rows to fit a predictor ({len(frame)}; need at least 3)")
        self.scaler = StandardScaler().fit(frame[self.features].to_numpy(dtype=np.float64))
        x, y = self._design(frame), self._gap(frame)
        languages = frame["language"].to_numpy()
        # each part's penalty is tested the way the part is used: anchored on new languages, the others on new
        # models (the finest grouping that leaves at least 3 groups: configurations, runs, checkpoints)
        by_model = next(
            frame[c].to_numpy()
            for c in (self.model_groups, "run_id", "checkpoint_id")
            if c in frame.columns and (frame[c].nunique() >= 3 or c == "checkpoint_id")
        )
        self.pooled = self._choose(x, y, None, by_model)
        self.anchored = self._choose(x, y, frame["checkpoint_id"], languages) if self.use_anchors else None
        self.by_language = self._choose(x, y, frame["language"], by_model) if self.use_anchors else None
        return self

    def _anchor_offsets(self, part: str, frame: pd.DataFrame, x: np.ndarray, anchors: pd.DataFrame) -> np.ndarray:
        """The offset of each row's checkpoint (part `anchored`) or language (`by_language`) from the anchor rows
        (NaN where there are none), plus the part's gap."""
        fit = self.anchored if part == "anchored" else self.by_language
        assert fit is not None
        unit = "checkpoint_id" if part == "anchored" else "language"
        offset = self._offsets(
            fit,
            self._design(anchors),
            self._gap(anchors),
            anchors[unit].to_numpy(),
            frame[unit].to_numpy(),
            _PRIOR_ROWS[unit],
        )
        return fit.gap(x) + offset

    def predict(self, frame: pd.DataFrame, anchors: pd.DataFrame | None = None) -> np.ndarray:
        """Predicted accuracy of each row. `anchors` are labelled rows the row's own labels are not among: a row
        whose checkpoint has some is predicted by the anchored part; else a row whose language has some (of other
        checkpoints) by the by-language part; else by the pooled part. The caller keeps a row's own language (and,
        for a new model, its checkpoints) out of the anchors."""
        if self.pooled is None:
            raise XlgmError("the predictor is not fitted")
        x = self._design(frame)
        gap = self.pooled.gap(x)
        if self.anchored is not None and self.by_language is not None and anchors is not None and len(anchors):
            for part in ("by_language", "anchored"):  # the checkpoint's own anchors, where it has any, win
                anchored = self._anchor_offsets(part, frame, x, anchors)
                has = ~np.isnan(anchored)
                gap[has] = anchored[has]
        return np.clip(frame["source_accuracy"].to_numpy(dtype=np.float64) + gap, 0.0, 1.0)

    def coefficients(self) -> dict[str, dict[str, float]]:
        names = (["scale"] if self.scaled else []) + self.features
        out = {}
        for part, fit in (("anchored", self.anchored), ("by_language", self.by_language), ("pooled", self.pooled)):
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
    """Baseline (c): for each row, the mean accuracy of the same checkpoint's other target languages."""
    sums = frame.groupby("checkpoint_id")["accuracy"].transform("sum")
    counts = frame.groupby("checkpoint_id")["accuracy"].transform("count")
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((sums - frame["accuracy"]) / (counts - 1)).to_numpy(dtype=np.float64)


def language_gap(frame: pd.DataFrame, train: pd.DataFrame) -> np.ndarray:
    """Baseline (b): each row's source accuracy plus its language's mean gap over the `train` rows (other
    checkpoints' labels only); NaN for a language `train` has no rows of."""
    mean_gap = (train["accuracy"] - train["source_accuracy"]).groupby(train["language"]).mean()
    return (frame["source_accuracy"] + frame["language"].map(mean_gap)).to_numpy(dtype=np.float64)


# scheme -> the column whose values are held out one at a time. A configuration is a run without its seed
# (the caller's `configuration` column): holding a run out leaves its seed-mates among the training rows.
SCHEMES = {
    "leave-one-language-out": "language",
    "leave-one-run-out": "run_id",
    "leave-one-configuration-out": "configuration",
}


def cross_validate(
    frame: pd.DataFrame,
    features: Sequence[str],
    scheme: str = "leave-one-language-out",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    scale_by_disagreement: bool = True,
    use_anchors: bool = True,
) -> pd.DataFrame:
    """One prediction per row, each from a model fitted, and anchored, without the row's group (its language,
    run or configuration): the held-out rows are neither training rows, nor anchors, nor in the penalty's inner
    CV. Holding out models, the penalty's inner CV holds out the same kind of group.

    Returns the keys, the actual accuracy, the prediction, the baselines and the absolute errors."""
    if scheme not in SCHEMES:
        raise XlgmError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    group = SCHEMES[scheme]
    if group not in frame.columns:
        raise XlgmError(f"{scheme} needs a {group} column in the rows")
    groups = frame[group].unique()
    if len(groups) < 2:
        raise XlgmError(f"{scheme} needs at least two values of {group}, got {len(groups)}")
    model_groups = "run_id" if group == "language" else group
    pred = np.full(len(frame), np.nan)
    pooled = np.full(len(frame), np.nan)  # the same models with the source as the only anchor
    by_language = np.full(len(frame), np.nan)
    for g in groups:
        held = (frame[group] == g).to_numpy()
        train = frame.loc[~held]
        model = GapRegressor(list(features), alphas, scale_by_disagreement, use_anchors, model_groups).fit(train)
        pred[held] = model.predict(frame.loc[held], anchors=train)
        pooled[held] = model.predict(frame.loc[held])
        by_language[held] = language_gap(frame.loc[held], train)
    out = frame[list(KEYS) + ["accuracy", "source_accuracy"]].copy()
    out["scheme"] = scheme
    out["predicted"] = pred
    out["predicted_source_anchor"] = pooled
    out["baseline_source"] = frame["source_accuracy"].to_numpy(dtype=np.float64)
    out["baseline_language_gap"] = by_language
    out["baseline_other_languages"] = other_languages_mean(frame)
    for col, name in (
        ("predicted", "error"),
        ("predicted_source_anchor", "error_source_anchor"),
        ("baseline_source", "error_source"),
        ("baseline_language_gap", "error_language_gap"),
        ("baseline_other_languages", "error_other_languages"),
    ):
        out[name] = (out[col] - out["accuracy"]).abs()
    return out.reset_index(drop=True)


# The predictor's rivals: the errors cross_validate writes for each.
BASELINES = {
    "same_as_source": "error_source",
    "language_gap": "error_language_gap",
    "other_languages": "error_other_languages",
    "source_anchor_only": "error_source_anchor",
}
# The rivals that use target labels of the checkpoint they predict (its other languages'): no rival for a model
# that has none (leave-one-run-out, leave-one-configuration-out).
USES_OWN_TARGET_LABELS = ("other_languages",)
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
    "uses_own_target_labels",
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
        if column not in cv.columns:  # a table written before this rival existed
            continue
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
                "uses_own_target_labels": baseline in USES_OWN_TARGET_LABELS,
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
            "language_gap": float(rows["error_language_gap"].mean()) if "error_language_gap" in rows else np.nan,
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
