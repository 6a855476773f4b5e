"""The analysis frame: one row per checkpoint, built from the long-form result tables.

Every analysis in `xlgm.analysis` works on one tidy `pandas.DataFrame` with

    run_id, checkpoint_id            identifiers
    step, is_best, is_last, ...      checkpoint columns (when a checkpoints table is given)
    objective, seed, lr, rho, ...    the run's config, flattened (hyperparameter "axes" are chosen by the caller)
    margin, sharpness-diff, ...      one column per generalization measure
    acc_en, acc_de, ...              one accuracy column per evaluated language

`build_frame` pivots the long tables of `xlgm.results` into that shape, `add_targets` derives the transfer
targets (mean target accuracy, transfer gaps, transfer residuals: `xlgm.analysis.fit`) and `select_unit`
reduces it to one row per run when the unit of correlation is the run rather than the checkpoint. All are pure
functions: nothing is read or written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from xlgm.analysis.fit import choose_degree, out_of_fold_residuals, residuals
from xlgm.core.errors import XlgmError

ACC_PREFIX = "acc_"
GAP_PREFIX = "gap_"
RESIDUAL_PREFIX = "resid_"
ROWS_PREFIX = "rows_"
MEAN_TARGET = "mean_target"
MEAN_GAP = "mean_gap"
TRANSFER_RESIDUAL = "transfer_residual"
TRANSFER_RESIDUAL_OOF = "transfer_residual_oof"
# The column naming each run's configuration (runs sharing every setting but the seed): the folds of the
# out-of-fold fit and the strata of the within-configuration tests. Without it every run is its own.
CONFIGURATION = "configuration"

Unit = Literal["checkpoint", "run"]
RunReduce = Literal["last", "best", "mean"]


class AnalysisInputError(XlgmError, ValueError):
    """The tables or frame handed to an analysis function do not have the expected shape."""


def acc_column(language: str) -> str:
    """The accuracy column of a language: ``acc_<language>``."""
    return f"{ACC_PREFIX}{language}"


def gap_column(language: str) -> str:
    """The transfer-gap column of a target language: ``gap_<language>`` = acc_<source> - acc_<language>."""
    return f"{GAP_PREFIX}{language}"


def residual_column(language: str) -> str:
    """The transfer-residual column of a target language: ``resid_<language>`` (`xlgm.analysis.fit`)."""
    return f"{RESIDUAL_PREFIX}{language}"


def rows_column(language: str) -> str:
    """The number of evaluated rows behind ``acc_<language>``: ``rows_<language>``."""
    return f"{ROWS_PREFIX}{language}"


def _examples(values: Iterable[Any], limit: int = 5) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" (and {len(values) - limit} more)" if len(values) > limit else "")


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise `AnalysisInputError` naming `what` and every column of `columns` that `frame` lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnalysisInputError(
            f"{what}: missing column(s) {_examples(missing, 20)}; has {_examples(list(frame.columns), 20)}"
        )


def _flatten(config: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in config.items():
        path = prefix + (str(key),)
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        else:
            out[path] = tuple(value) if isinstance(value, list) else value
    return out


def flatten_configs(runs: pd.DataFrame, config_column: str = "config") -> pd.DataFrame:
    """One row per run: ``run_id`` plus one column per config leaf.

    ``runs[config_column]`` holds dicts or JSON strings (as stored by `xlgm.results.ResultsDB.add_run`). Nested
    dicts are flattened to their leaf names (``objective_options.rho`` -> ``rho``) when that leaf name is unique
    over all runs' configs, and to the dotted path otherwise. Lists become tuples so that they can be grouped on.
    Without a ``config_column`` the frame is returned as is (its columns are taken to be the config already).
    """
    require_columns(runs, ["run_id"], "runs")
    if config_column not in runs.columns:
        return runs.copy()
    flat: list[dict[tuple[str, ...], Any]] = []
    for run_id, config in zip(runs["run_id"], runs[config_column]):
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except json.JSONDecodeError as err:
                raise AnalysisInputError(f"runs: config of run {run_id!r} is not valid JSON ({err.msg})") from err
        if config is None or (isinstance(config, float) and np.isnan(config)):
            config = {}
        if not isinstance(config, Mapping):
            raise AnalysisInputError(
                f"runs: config of run {run_id!r} must be a dict or a JSON object, got {type(config).__name__}"
            )
        flat.append(_flatten(config))
    paths = sorted({path for row in flat for path in row})
    leaf_count: dict[str, int] = {}
    for path in paths:
        leaf_count[path[-1]] = leaf_count.get(path[-1], 0) + 1
    names = {path: path[-1] if leaf_count[path[-1]] == 1 else ".".join(path) for path in paths}
    if "run_id" in names.values():
        raise AnalysisInputError("runs: a config key is named 'run_id', which collides with the run id column")
    records = [{names[p]: row.get(p, np.nan) for p in paths} for row in flat]
    out = pd.DataFrame.from_records(records, columns=[names[p] for p in paths], index=runs.index)
    out.insert(0, "run_id", runs["run_id"].to_numpy())
    return out


def _check_unique(frame: pd.DataFrame, keys: list[str], what: str, hint: str) -> None:
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        examples = frame.loc[dup, keys].drop_duplicates().itertuples(index=False, name=None)
        raise AnalysisInputError(
            f"{what}: {int(dup.sum())} rows share their ({', '.join(keys)}), e.g. {_examples(examples)}; {hint}"
        )


def build_frame(
    evaluations: pd.DataFrame,
    measures: pd.DataFrame,
    runs: pd.DataFrame,
    checkpoints: pd.DataFrame | None = None,
    *,
    config_column: str = "config",
) -> pd.DataFrame:
    """Pivot the long result tables into the analysis frame (one row per checkpoint).

    Args:
        evaluations: long table with ``checkpoint_id, language, accuracy`` and optionally ``num_examples`` (other
            columns such as task, split or data are ignored: filter to one evaluation setting first). Becomes
            ``acc_<language>`` columns, and ``rows_<language>`` columns with the row counts when given (so that
            `add_targets` can average integer counts of correct rows: tied units stay exactly tied).
        measures: long table with ``checkpoint_id, measure, value`` (filter to one config/data per measure first).
            Becomes one column per measure, named as the measure.
        runs: ``run_id`` plus a ``config`` column of dicts or JSON strings (flattened by `flatten_configs`), or
            ``run_id`` plus already-flat config columns.
        checkpoints: ``checkpoint_id, run_id`` and optionally ``step, epoch, is_best, is_last, dev_accuracy``
            (the `checkpoints` table of `xlgm.results`). If omitted, ``run_id`` must be a column of `evaluations`
            or `measures`.

    Returns:
        One row per checkpoint that has an evaluation or a measure: ``run_id, checkpoint_id``, the checkpoint
        columns, the run's config columns, the measure columns and the accuracy columns, sorted by
        (run_id, step if present, checkpoint_id). Missing (checkpoint, measure) or (checkpoint, language) cells
        are NaN.

    Raises:
        AnalysisInputError: a missing column, a duplicated (checkpoint, language) or (checkpoint, measure), a
            checkpoint without a run, a run without a config, or a measure name that collides with another column.
    """
    require_columns(evaluations, ["checkpoint_id", "language", "accuracy"], "evaluations")
    require_columns(measures, ["checkpoint_id", "measure", "value"], "measures")
    _check_unique(
        evaluations,
        ["checkpoint_id", "language"],
        "evaluations",
        "filter to one task/split/data before building the frame",
    )
    _check_unique(
        measures,
        ["checkpoint_id", "measure"],
        "measures",
        "filter to one config_hash/data per measure before building the frame",
    )

    acc = evaluations.pivot(index="checkpoint_id", columns="language", values="accuracy")
    acc.columns = [acc_column(str(c)) for c in acc.columns]
    if "num_examples" in evaluations.columns:
        counts = evaluations.pivot(index="checkpoint_id", columns="language", values="num_examples")
        counts.columns = [rows_column(str(c)) for c in counts.columns]
        acc = acc.join(counts)
    meas = measures.pivot(index="checkpoint_id", columns="measure", values="value")
    meas.columns = [str(c) for c in meas.columns]
    clash = sorted(set(meas.columns) & set(acc.columns))
    if clash:
        raise AnalysisInputError(f"measures: measure name(s) {_examples(clash)} collide with accuracy columns")
    wide = meas.join(acc, how="outer")
    wide.index.name = "checkpoint_id"
    wide = wide.reset_index()

    if checkpoints is None:
        sources = [t[["checkpoint_id", "run_id"]] for t in (evaluations, measures) if "run_id" in t.columns]
        if not sources:
            raise AnalysisInputError(
                "build_frame: pass a checkpoints table (checkpoint_id, run_id, ...) or a run_id column in the "
                "evaluations or measures table"
            )
        ckpt = pd.concat(sources).drop_duplicates()
        _check_unique(ckpt, ["checkpoint_id"], "evaluations/measures", "a checkpoint must belong to one run")
    else:
        require_columns(checkpoints, ["checkpoint_id", "run_id"], "checkpoints")
        _check_unique(checkpoints, ["checkpoint_id"], "checkpoints", "checkpoint ids must be unique")
        ckpt = checkpoints.drop(columns=[c for c in ("path",) if c in checkpoints.columns])
    orphans = sorted(set(wide["checkpoint_id"]) - set(ckpt["checkpoint_id"]))
    if orphans:
        raise AnalysisInputError(f"build_frame: checkpoint(s) {_examples(orphans)} have no run (not in checkpoints)")

    config = flatten_configs(runs, config_column)
    _check_unique(config, ["run_id"], "runs", "run ids must be unique")
    needed = set(ckpt.loc[ckpt["checkpoint_id"].isin(wide["checkpoint_id"]), "run_id"])
    no_config = sorted(needed - set(config["run_id"]))
    if no_config:
        raise AnalysisInputError(f"build_frame: run(s) {_examples(no_config)} are not in the runs table")

    left = ckpt.merge(config, on="run_id", how="left", suffixes=("", "@config"))
    dup_cols = [c for c in left.columns if c.endswith("@config")]
    if dup_cols:
        left = left.drop(columns=dup_cols)  # a checkpoint column (e.g. step) wins over a config key of that name
    clash = sorted((set(left.columns) - {"checkpoint_id"}) & set(wide.columns))
    if clash:
        raise AnalysisInputError(
            f"build_frame: measure/accuracy column(s) {_examples(clash)} collide with checkpoint or config columns"
        )
    out = left.merge(wide, on="checkpoint_id", how="inner")
    front = ["run_id", "checkpoint_id"]
    out = out[front + [c for c in out.columns if c not in front]]
    order = ["run_id"] + (["step"] if "step" in out.columns else []) + ["checkpoint_id"]
    return out.sort_values(order, kind="stable").reset_index(drop=True)


def target_columns(languages: Sequence[str], source: str = "en") -> list[str]:
    """The target names `add_targets` provides, in report order.

    ``acc_<l>`` for every language in `languages` (the source included if listed), ``mean_target``,
    ``gap_<l>`` for every non-source language, ``mean_gap``, ``resid_<l>`` for every non-source language,
    ``transfer_residual`` and ``transfer_residual_oof``.
    """
    targets = [lang for lang in languages if lang != source]
    return (
        [acc_column(lang) for lang in languages]
        + [MEAN_TARGET]
        + [gap_column(lang) for lang in targets]
        + [MEAN_GAP]
        + [residual_column(lang) for lang in targets]
        + [TRANSFER_RESIDUAL, TRANSFER_RESIDUAL_OOF]
    )


def _correct_counts(frame: pd.DataFrame, languages: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(correct, rows) integer arrays (units x languages) when every language has a ``rows_<l>`` column and
    accuracy x rows is a whole number everywhere (not after averaging checkpoints), else None."""
    if not all(rows_column(lang) in frame.columns for lang in languages):
        return None
    acc = frame[[acc_column(lang) for lang in languages]].to_numpy(dtype=float)
    rows = frame[[rows_column(lang) for lang in languages]].to_numpy(dtype=float)
    counts = acc * rows
    whole = np.round(counts)
    finite = np.isfinite(counts)
    if not np.allclose(counts[finite], whole[finite], rtol=0.0, atol=1e-6):
        return None
    return whole, rows


def fold_labels(frame: pd.DataFrame) -> np.ndarray:
    """The fold of each row for out-of-fold fits: its configuration, else its run, else the row itself."""
    for column in (CONFIGURATION, "run_id"):
        if column in frame.columns:
            return frame[column].astype(str).to_numpy()
    return np.arange(len(frame)).astype(str)


def add_targets(frame: pd.DataFrame, languages: Sequence[str], source: str = "en") -> pd.DataFrame:
    """Add the cross-lingual targets to a copy of `frame`.

    With T = the languages of `languages` other than `source` (zero-shot targets):

        gap_<l>     = acc_<source> - acc_<l>                 for l in T (the transfer gap)
        mean_target = sum_{l in T} correct_l / sum_{l in T} rows_l   (from integer counts when ``rows_<l>``
                      columns are there, so that units with the same number of correct rows are exactly tied;
                      else the mean of the acc_<l>); NaN if any acc_<l> is NaN (no partial means)
        mean_gap    = acc_<source> - mean_target
        resid_<l>, transfer_residual: acc_<l> and mean_target less their fit (degree 1-3) on acc_<source> across
                      the rows of `frame` (`xlgm.analysis.fit.residuals`)
        transfer_residual_oof: the same residual with the fit made without the row's configuration
                      (`fold_labels`; `xlgm.analysis.fit.out_of_fold_residuals`)

    With equal row counts in every language the count-based mean equals the mean of the accuracies. Raises
    `AnalysisInputError` if an ``acc_<l>`` column (the source's included) is missing or T is empty.
    """
    targets = [lang for lang in languages if lang != source]
    if not targets:
        raise AnalysisInputError(f"add_targets: no target language besides the source {source!r} in {list(languages)}")
    require_columns(frame, [acc_column(lang) for lang in [source, *targets]], "analysis frame")
    out = frame.copy()
    src = out[acc_column(source)].astype(float)
    for lang in targets:
        out[gap_column(lang)] = src - out[acc_column(lang)].astype(float)
    counts = _correct_counts(out, targets)
    if counts is not None:
        correct, rows = counts
        with np.errstate(invalid="ignore"):
            out[MEAN_TARGET] = correct.sum(axis=1) / rows.sum(axis=1)
    else:
        out[MEAN_TARGET] = out[[acc_column(lang) for lang in targets]].astype(float).mean(axis=1, skipna=False)
    out[MEAN_GAP] = src - out[MEAN_TARGET]
    folds = fold_labels(out)
    for lang in targets:
        out[residual_column(lang)] = residuals(src, out[acc_column(lang)].astype(float), folds)
    degree = choose_degree(src, out[MEAN_TARGET], folds)
    out[TRANSFER_RESIDUAL] = residuals(src, out[MEAN_TARGET], degree=degree)
    out[TRANSFER_RESIDUAL_OOF] = out_of_fold_residuals(src, out[MEAN_TARGET], folds, degree=degree)
    return out


def select_unit(
    frame: pd.DataFrame,
    unit: Unit = "checkpoint",
    run_reduce: RunReduce = "last",
    value_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The rows to correlate over: every checkpoint, or one row per run.

    ``unit="checkpoint"`` returns `frame` unchanged. ``unit="run"`` returns one row per ``run_id``:

    * ``run_reduce="last"``: the checkpoint with the largest ``step`` (needs a ``step`` column);
    * ``run_reduce="best"``: the checkpoint with ``is_best`` true (needs ``is_best``; each run must have exactly
      one, as `xlgm.results` keeps it);
    * ``run_reduce="mean"``: the mean over the run's checkpoints (NaN skipped) of `value_columns` (default: every
      numeric column except ``step``/``epoch``/``is_best``/``is_last``), the first value of every other column
      (the run's config is the same for all its checkpoints). ``checkpoint_id`` is then the first checkpoint's.
    """
    if unit == "checkpoint":
        return frame
    if unit != "run":
        raise ValueError(f"unit must be 'checkpoint' or 'run', got {unit!r}")
    require_columns(frame, ["run_id"], "analysis frame")
    if run_reduce == "last":
        require_columns(frame, ["step"], "analysis frame (unit='run', run_reduce='last')")
        idx = frame.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=False).tail(1).index
        return frame.loc[idx].sort_values("run_id", kind="stable").reset_index(drop=True)
    if run_reduce == "best":
        require_columns(frame, ["is_best"], "analysis frame (unit='run', run_reduce='best')")
        best = frame[frame["is_best"].fillna(False).astype(bool)]
        counts = best.groupby("run_id").size()
        none = sorted(set(frame["run_id"]) - set(counts.index))
        many = sorted(counts.index[counts > 1])
        if none or many:
            parts = ([f"no best checkpoint for run(s) {_examples(none)}"] if none else []) + (
                [f"several best checkpoints for run(s) {_examples(many)}"] if many else []
            )
            raise AnalysisInputError("select_unit(run_reduce='best'): " + "; ".join(parts))
        return best.sort_values("run_id", kind="stable").reset_index(drop=True)
    if run_reduce == "mean":
        if value_columns is None:
            skip = {"step", "epoch", "is_best", "is_last"}
            value_columns = [
                c
                for c in frame.columns
                if c not in skip
                and pd.api.types.is_numeric_dtype(frame[c])
                and not pd.api.types.is_bool_dtype(frame[c])
            ]
        require_columns(frame, value_columns, "analysis frame (unit='run', run_reduce='mean')")
        grouped = frame.groupby("run_id", sort=True, dropna=False)
        means = grouped[list(value_columns)].mean()
        firsts = grouped[[c for c in frame.columns if c not in value_columns and c != "run_id"]].first()
        out = firsts.join(means).reset_index()
        return out[[c for c in frame.columns if c in out.columns]]
    raise ValueError(f"run_reduce must be 'last', 'best' or 'mean', got {run_reduce!r}")
