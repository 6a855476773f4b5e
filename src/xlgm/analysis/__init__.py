"""Which generalization measure predicts cross-lingual accuracy? Pure functions on pandas DataFrames.

frame.py        build the analysis frame (one row per checkpoint) from the long result tables; targets; unit
correlation.py  Kendall tau-b / Spearman / Pearson with p-values and percentile-bootstrap CIs
granulated.py   Jiang et al. 2020 granulated Kendall coefficient Psi (ICLR 2020, §2.2)
cmi.py          Jiang et al. 2020 conditional-mutual-information criterion K (ICLR 2020, §2.3; PGDL scoring)
report_table.py long-form tables over (measure, target) and `top_correlations`
"""

from xlgm.analysis.cmi import CMIResult, conditional_mutual_information
from xlgm.analysis.correlation import CorrelationResult, correlate
from xlgm.analysis.frame import (
    MEAN_GAP,
    MEAN_TARGET,
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
