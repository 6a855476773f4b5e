"""Which generalization measure predicts cross-lingual accuracy? Pure functions on pandas DataFrames.

frame.py        build the analysis frame (one row per checkpoint) from the long result tables; targets; unit
fit.py          transfer beyond the fit: target's least-squares fit (degree 1-3) on source accuracy, in and out of fold
correlation.py  Kendall tau-b / Spearman / Pearson with p-values and percentile-bootstrap CIs
levels.py       within-configuration and between-configuration tests, the two-level bootstrap
verdict.py      three answers per measure (beyond the fit, target accuracy, source accuracy) and its finding
granulated.py   Jiang et al. 2020 granulated Kendall coefficient Psi (ICLR 2020, §2.2)
cmi.py          Jiang et al. 2020 conditional-mutual-information criterion K (ICLR 2020, §2.3; PGDL scoring)
report_table.py long-form tables over (measure, target), `top_correlations`, per-language and fit tables
"""

from xlgm.analysis.cmi import CMIResult, conditional_mutual_information
from xlgm.analysis.correlation import CorrelationResult, correlate
from xlgm.analysis.frame import (
    MEAN_GAP,
    MEAN_TARGET,
    TRANSFER_RESIDUAL,
    AnalysisInputError,
    acc_column,
    add_targets,
    build_frame,
    flatten_configs,
    gap_column,
    select_unit,
    target_columns,
)
from xlgm.analysis.granulated import GranulatedResult, granulated_kendall, kendall_tau_a
from xlgm.analysis.report_table import cmi_table, correlation_table, granulated_table, top_correlations

__all__ = [
    "AnalysisInputError",
    "CMIResult",
    "CorrelationResult",
    "GranulatedResult",
    "MEAN_GAP",
    "MEAN_TARGET",
    "TRANSFER_RESIDUAL",
    "acc_column",
    "add_targets",
    "build_frame",
    "cmi_table",
    "conditional_mutual_information",
    "correlate",
    "correlation_table",
    "flatten_configs",
    "gap_column",
    "granulated_kendall",
    "granulated_table",
    "kendall_tau_a",
    "select_unit",
    "target_columns",
    "top_correlations",
]
