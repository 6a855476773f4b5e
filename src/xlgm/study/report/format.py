"""How the report writes numbers and names: p-values, signed coefficients with their interval, accuracies with
their 95% Wilson interval, and a target's reader-facing name."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from xlgm.analysis.intervals import wilson_interval

TARGET_NAMES = {
    "mean_target": "mean target accuracy",
    "mean_accuracy": "mean target accuracy",
    "mean_gap": "mean transfer gap",
    "transfer_residual": "transfer residual",
    "transfer_residual_oof": "transfer residual (out of fold)",
    "source_accuracy": "source accuracy",
}


def target_name(target: Any) -> str:
    """A target as a reader names it: `mean target accuracy`, `accuracy de`, `gap de`."""
    text = str(target)
    if text in TARGET_NAMES:
        return TARGET_NAMES[text]
    for prefix, name in (("acc_", "accuracy"), ("gap_", "gap"), ("resid_", "residual")):
        if text.startswith(prefix):
            return f"{name} {text[len(prefix) :]}"
    return text


def heading_case(text: str) -> str:
    """`token accuracy` -> `Token accuracy`, `entity F1` -> `Entity F1` (unlike str.capitalize)."""
    return text[:1].upper() + text[1:]


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def fmt(value: Any, digits: int = 3) -> str:
    if is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        small_or_large = abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3)
        return f"{value:.{digits}g}" if small_or_large else f"{value:.{digits}f}"
    return str(value)


def fmt_signed(value: Any, digits: int = 2) -> str:
    return "" if is_missing(value) else f"{float(value):+.{digits}f}"


def fmt_pvalue(value: Any) -> str:
    if is_missing(value):
        return ""
    value = float(value)
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def fmt_coefficient(value: Any, low: Any, high: Any) -> str:
    """`+0.58 [+0.14, +0.90]`; `n/a` for an undefined coefficient."""
    if is_missing(value):
        return "n/a"
    ci = "" if is_missing(low) or is_missing(high) else f" [{fmt_signed(low)}, {fmt_signed(high)}]"
    return f"{fmt_signed(value)}{ci}"


def to_number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt_count(value: Any) -> str:
    number = to_number(value)
    return "?" if math.isnan(number) else str(int(number))


def interval_text(accuracy: Any, rows: int | None) -> str:
    """`0.412 [0.37, 0.46]`: an accuracy on `rows` rows with its 95% Wilson interval (the accuracy alone when the
    number of rows is unknown)."""
    accuracy = to_number(accuracy)
    if math.isnan(accuracy):
        return ""
    if not rows:
        return f"{accuracy:.3f}"
    low, high = wilson_interval(accuracy * rows, rows)
    return f"{accuracy:.3f} [{low:.2f}, {high:.2f}]"


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return not is_missing(value) and bool(value)
