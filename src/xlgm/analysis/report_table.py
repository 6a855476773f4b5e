"""Long-form tables of how well each measure predicts each cross-lingual target.

* `correlation_table`: Kendall tau-b / Spearman / Pearson with p-values and bootstrap CIs
  (`xlgm.analysis.correlation.correlate`) for every (measure, target);
* `granulated_table`: Jiang et al.'s Psi and per-axis psi_i (`xlgm.analysis.granulated`) for every (measure, target);
* `cmi_table`: Jiang et al.'s conditional-MI criterion K (`xlgm.analysis.cmi`) per measure vs one target
  (default: the mean target accuracy);
* `top_correlations`: the strongest rows of a correlation table, by |tau|;
* `fit_table`: the line behind the transfer residuals, in sample and out of fold;
* `language_table`: per (measure, target language), tau with the language's accuracy and with its residual.

Targets (`xlgm.analysis.frame.add_targets`): ``acc_<l>`` for each language, ``mean_target`` (mean accuracy over the
non-source languages), ``gap_<l>`` = acc_<source> - acc_<l> for each non-source language, ``mean_gap``, and the
transfer residuals (`xlgm.analysis.fit`) ``resid_<l>``, ``transfer_residual`` and ``transfer_residual_oof``.
The unit of correlation is the checkpoint (every row) or the run (`xlgm.analysis.frame.select_unit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from xlgm.analysis.cmi import conditional_mutual_information
from xlgm.analysis.correlation import correlate
from xlgm.analysis.fit import fit_summary
from xlgm.analysis.frame import (
    ACC_PREFIX,
    GAP_PREFIX,
    MEAN_GAP,
    MEAN_TARGET,
    RESIDUAL_PREFIX,
    TRANSFER_RESIDUAL,
    TRANSFER_RESIDUAL_OOF,
    AnalysisInputError,
    RunReduce,
    Unit,
    acc_column,
    add_targets,
    fold_labels,
    require_columns,
    select_unit,
    target_columns,
)
from xlgm.analysis.granulated import granulated_kendall
from xlgm.analysis.multiple import holm

CORRELATION_COLUMNS = [
    "measure",
    "target",
    "target_kind",
    "language",
    "tau",
    "tau_p",
    "tau_lo",
    "tau_hi",
    "spearman",
    "spearman_p",
    "spearman_lo",
    "spearman_hi",
    "pearson",
    "pearson_p",
    "pearson_lo",
    "pearson_hi",
    "n",
    "n_dropped",
    "n_runs",
    "n_checkpoints",
    "unit",
    "p_method",
    "p_min",
    "expected_sign",
    "agrees",
    "note",
]


def describe_target(target: str) -> tuple[str, str | None]:
    """(kind, language) of a target name: ``("accuracy", "de")`` for ``acc_de``, ``("gap", "de")`` for ``gap_de``,
    ``("residual", "de")`` for ``resid_de``, ``("mean_target", None)``, ``("mean_gap", None)``,
    ``("transfer_residual", None)``, ``("transfer_residual_oof", None)``; ``("other", None)`` for any other column."""
    if target in (MEAN_TARGET, MEAN_GAP, TRANSFER_RESIDUAL, TRANSFER_RESIDUAL_OOF):
        return target, None
    if target.startswith(RESIDUAL_PREFIX):
        return "residual", target[len(RESIDUAL_PREFIX) :]
    if target.startswith(ACC_PREFIX):
        return "accuracy", target[len(ACC_PREFIX) :]
    if target.startswith(GAP_PREFIX):
        return "gap", target[len(GAP_PREFIX) :]
    return "other", None


def expected_sign_for(target: str, sign_vs_accuracy: int | None) -> int | None:
    """The expected sign of a measure's correlation with `target`, given its expected sign with accuracy.

    Accuracy and residual targets (``acc_<l>``, ``mean_target``, ``resid_<l>``, ``transfer_residual``: more
    accuracy than the fit predicts) keep the sign; gap targets (``gap_<l>``, ``mean_gap`` =
    source accuracy - target accuracy) get the opposite sign: a measure expected to fall as target accuracy rises
    is expected to rise with the transfer gap. This is the hypothesis the table states in ``expected_sign``; the
    coefficients themselves are never flipped.
    """
    if sign_vs_accuracy is None:
        return None
    kind, _ = describe_target(target)
    return -int(sign_vs_accuracy) if kind in ("gap", "mean_gap") else int(sign_vs_accuracy)


def prepare_frame(
    frame: pd.DataFrame,
    measures: Sequence[str],
    languages: Sequence[str],
    source: str = "en",
    *,
    unit: Unit = "checkpoint",
    run_reduce: RunReduce = "last",
) -> pd.DataFrame:
    """Reduce `frame` to the unit of correlation (`select_unit`; for ``run_reduce="mean"`` the measures and
    accuracies are averaged) and add the targets (`add_targets`)."""
    require_columns(frame, list(measures), "analysis frame (measures)")
    value_columns = list(measures) + [
        acc_column(lang) for lang in dict.fromkeys([source, *languages]) if acc_column(lang) in frame.columns
    ]
    reduced = select_unit(frame, unit, run_reduce, value_columns=value_columns)
    return add_targets(reduced, languages, source)


def correlation_table(
    frame: pd.DataFrame,
    measures: Sequence[str],
    languages: Sequence[str],
    source: str = "en",
    axes: Sequence[str] | None = None,
    *,
    unit: Unit = "checkpoint",
    run_reduce: RunReduce = "last",
    targets: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    expected_signs: Mapping[str, int] | None = None,
    n_perm: int = 9999,
) -> pd.DataFrame:
    """One row per (measure, target) with Kendall tau-b, Spearman and Pearson, their p-values and bootstrap CIs.

    Args:
        frame: the analysis frame (`xlgm.analysis.frame.build_frame`), one row per checkpoint.
        measures: measure columns to correlate.
        languages: evaluated languages (``acc_<l>`` columns); those other than `source` are the zero-shot targets.
        source: the fine-tuning language.
        axes: hyperparameter columns; only checked to exist here (the correlations are over all rows).
        unit, run_reduce: correlate over checkpoints, or over runs (`xlgm.analysis.frame.select_unit`).
        targets: a subset of `xlgm.analysis.frame.target_columns(languages, source)` (default: all of them).
        n_boot, confidence, seed: the percentile bootstrap of `xlgm.analysis.correlation.correlate` (each row uses
            a fresh Generator seeded with `seed`, so a row's CI does not depend on the other rows).
        expected_signs: measure -> expected sign of its correlation with accuracy (+1/-1); for gap targets the
            expected sign is the opposite (`expected_sign_for`). Reported in ``expected_sign``/``agrees`` only.
        n_perm: permutations of the runs for the p-values (`xlgm.analysis.permutation`).

    With a ``run_id`` column, the bootstrap resamples whole runs and the p-values are run-level permutation tests
    (`xlgm.analysis.correlation`); n_runs and n_checkpoints say how many of each a row rests on.

    Returns:
        Long-form DataFrame with columns `CORRELATION_COLUMNS`: measure, target, target_kind ("accuracy",
        "mean_target", "gap", "mean_gap"), language (None for the means), tau, tau_p, tau_lo, tau_hi, spearman,
        spearman_p, spearman_lo, spearman_hi, pearson, pearson_p, pearson_lo, pearson_hi, n, n_dropped, n_runs,
        n_checkpoints, unit, p_method, p_min, expected_sign, agrees, note.
    """
    if axes:
        require_columns(frame, list(axes), "analysis frame (axes)")
    data = prepare_frame(frame, measures, languages, source, unit=unit, run_reduce=run_reduce)
    targets = _targets(targets, languages, source)
    expected_signs = dict(expected_signs or {})
    unknown = sorted(set(expected_signs) - set(measures))
    if unknown:
        raise AnalysisInputError(f"expected_signs: unknown measure(s) {unknown}")
    rows = []
    # whole runs are resampled and permuted (xlgm.analysis.correlation); checkpoints pair across runs by step
    runs = data["run_id"].to_numpy() if "run_id" in data.columns else None
    positions = (
        data["step"].to_numpy() if unit == "checkpoint" and runs is not None and "step" in data.columns else None
    )
    for measure in measures:
        x = pd.to_numeric(data[measure], errors="coerce").to_numpy(dtype=float)
        for target in targets:
            y = data[target].to_numpy(dtype=float)
            result = correlate(
                x,
                y,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
                expected_sign=expected_sign_for(target, expected_signs.get(measure)),
                runs=runs,
                positions=positions,
                n_perm=n_perm,
            )
            kind, language = describe_target(target)
            rows.append(
                {"measure": measure, "target": target, "target_kind": kind, "language": language, **result.as_dict()}
            )
    table = pd.DataFrame(rows).reindex(columns=CORRELATION_COLUMNS)
    table["expected_sign"] = table["expected_sign"].astype("Int64")
    table["agrees"] = table["agrees"].astype("boolean")
    return table


def _targets(targets: Sequence[str] | None, languages: Sequence[str], source: str) -> list[str]:
    available = target_columns(languages, source)
    if targets is None:
        return available
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise AnalysisInputError(f"unknown target(s) {unknown}; available: {available}")
    return list(targets)


def granulated_table(
    frame: pd.DataFrame,
    measures: Sequence[str],
    languages: Sequence[str],
    source: str = "en",
    axes: Sequence[str] = (),
    *,
    unit: Unit = "checkpoint",
    run_reduce: RunReduce = "last",
    targets: Sequence[str] | None = None,
    variant: Literal["a", "b"] = "a",
) -> pd.DataFrame:
    """Jiang et al. 2020 §2.2 granulated Kendall Psi for every (measure, target) (`granulated_kendall`).

    Columns: measure, target, target_kind, language, psi, n, then ``psi[<axis>]`` and ``groups[<axis>]`` (the
    number of groups averaged) for every axis, and note. ``unit="run"`` gives the paper's setting of one model per
    configuration when the runs differ only in `axes`.
    """
    axes = list(axes)
    if not axes:
        raise AnalysisInputError("granulated_table: pass the hyperparameter axes")
    data = prepare_frame(frame, measures, languages, source, unit=unit, run_reduce=run_reduce)
    rows = []
    for measure in measures:
        for target in _targets(targets, languages, source):
            result = granulated_kendall(data, measure, target, axes, variant=variant)
            kind, language = describe_target(target)
            row = {
                "measure": measure,
                "target": target,
                "target_kind": kind,
                "language": language,
                "psi": result.psi,
                "n": result.n,
            }
            for axis_row in result.per_axis.itertuples(index=False):
                row[f"psi[{axis_row.axis}]"] = axis_row.psi
                row[f"groups[{axis_row.axis}]"] = axis_row.n_groups
            row["note"] = result.note
            rows.append(row)
    return pd.DataFrame(rows)


def cmi_table(
    frame: pd.DataFrame,
    measures: Sequence[str],
    languages: Sequence[str],
    source: str = "en",
    axes: Sequence[str] = (),
    *,
    target: str = MEAN_TARGET,
    unit: Unit = "checkpoint",
    run_reduce: RunReduce = "last",
    max_conditioning: int = 2,
    pairs: Literal["differ", "all"] = "differ",
) -> pd.DataFrame:
    """Jiang et al. 2020 §2.3 conditional-MI criterion K per measure vs `target` (default: mean target accuracy).

    Columns: measure, target, k, argmin (the conditioning set attaining the minimum, as a tuple of axes), n,
    n_pairs, n_pairs_tied, and ``cmi[<S>]`` = I_hat(S) for every conditioning set S (``cmi[]`` for S = {},
    ``cmi[a,b]`` for S = {a, b}), and note. See `xlgm.analysis.cmi` for the exact quantities.
    """
    axes = list(axes)
    if not axes:
        raise AnalysisInputError("cmi_table: pass the hyperparameter axes")
    data = prepare_frame(frame, measures, languages, source, unit=unit, run_reduce=run_reduce)
    _targets([target], languages, source)
    rows = []
    for measure in measures:
        result = conditional_mutual_information(
            data, measure, target, axes, max_conditioning=max_conditioning, pairs=pairs
        )
        row = {
            "measure": measure,
            "target": target,
            "k": result.k,
            "argmin": result.argmin,
            "n": result.n,
            "n_pairs": result.n_pairs,
            "n_pairs_tied": result.n_pairs_tied,
        }
        for subset, value in zip(result.per_subset["conditioning"], result.per_subset["normalized"]):
            row[f"cmi[{','.join(subset)}]"] = value
        row["note"] = result.note
        rows.append(row)
    return pd.DataFrame(rows)


def top_correlations(
    table: pd.DataFrame,
    k: int = 10,
    *,
    by: str = "tau",
    targets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The `k` rows of a `correlation_table` with the largest |`by`| (default |tau|), NaN last, for printing.

    `targets` keeps only those targets (e.g. ``["mean_target", "mean_gap"]``). Returns the columns measure,
    target, the `by` coefficient with its p-value and CI, the adjusted p-values and what survives correction
    (p_holm, p_bh, survives_holm, survives_bh), the other coefficients, n, n_runs, n_checkpoints, unit and
    expected_sign/agrees, each when present, with a fresh index.
    """
    require_columns(table, ["measure", "target", by], "correlation table")
    rows = table if targets is None else table[table["target"].isin(list(targets))]
    order = np.argsort(-np.nan_to_num(rows[by].abs().to_numpy(dtype=float), nan=-1.0), kind="stable")
    top = rows.iloc[order[: max(int(k), 0)]]
    wanted = (
        ["measure", "target", by, f"{by}_p", f"{by}_lo", f"{by}_hi", "p_holm", "p_bh", "survives_holm", "survives_bh"]
        + [s for s in ("tau", "spearman", "pearson") if s != by]
        + ["n", "n_runs", "n_checkpoints", "unit", "expected_sign", "agrees"]
    )
    return top[[c for c in dict.fromkeys(wanted) if c in top.columns]].reset_index(drop=True)


LANGUAGE_COLUMNS = [
    "measure",
    "language",
    "tau_accuracy",
    "p_accuracy",
    "p_accuracy_holm",
    "tau_residual",
    "p_residual",
    "p_residual_holm",
    "n_runs",
    "n_checkpoints",
]


def language_table(correlations: pd.DataFrame) -> pd.DataFrame:
    """Per (measure, target language): Kendall tau and permutation p with the language's accuracy
    (``acc_<l>``) and with its transfer residual (``resid_<l>``).

    Family: ``p_accuracy_holm`` is Holm-adjusted over every (measure, language) accuracy row of the table,
    ``p_residual_holm`` over every residual row (each a family of measures x target languages). The source
    language has no residual and is left out."""
    require_columns(correlations, ["measure", "target_kind", "language", "tau", "tau_p"], "correlation table")
    parts = {}
    for kind, name in (("accuracy", "accuracy"), ("residual", "residual")):
        part = correlations[correlations["target_kind"] == kind]
        part = part[["measure", "language", "tau", "tau_p", "n_runs", "n_checkpoints"]].rename(
            columns={"tau": f"tau_{name}", "tau_p": f"p_{name}"}
        )
        part[f"p_{name}_holm"] = holm(part[f"p_{name}"].to_numpy(dtype=float))
        parts[name] = part
    table = parts["residual"][["measure", "language"]].merge(
        parts["accuracy"].drop(columns=["n_runs", "n_checkpoints"]), on=["measure", "language"], how="left"
    )
    table = table.merge(parts["residual"], on=["measure", "language"], how="left")
    return table[LANGUAGE_COLUMNS].reset_index(drop=True)


def fit_table(
    frame: pd.DataFrame,
    measures: Sequence[str],
    languages: Sequence[str],
    source: str = "en",
    *,
    unit: Unit = "checkpoint",
    run_reduce: RunReduce = "last",
) -> pd.DataFrame:
    """How the transfer residuals are made (`xlgm.analysis.fit`): per target (the mean target accuracy, then each
    target language) the least-squares fit (degree 1-3) on source accuracy over the units, its in-sample and
    out-of-fold R^2 (folds: `xlgm.analysis.frame.fold_labels`) and how each residual relates to the source
    accuracy."""
    data = prepare_frame(frame, measures, languages, source, unit=unit, run_reduce=run_reduce)
    folds = fold_labels(data)
    src = data[acc_column(source)].to_numpy(dtype=float)
    targets = [(MEAN_TARGET, None)] + [(acc_column(lang), lang) for lang in languages if lang != source]
    rows = []
    for column, language in targets:
        summary = fit_summary(src, data[column].to_numpy(dtype=float), folds)
        rows.append({"target": column, "language": language, **summary.as_dict()})
    return pd.DataFrame(rows)
