"""Generalization measures of a trained classifier: margins, sharpness, flatness, curvature, norms, distances.

    from xlgm.measures import compute_measure, list_measures
    result = compute_measure("sharpness-diff", model, batches, config={"mode": "paper"}, seed=0)
    result.value, result.spread, result.num_samples, result.details

Every measure runs inside the same guard (`guard.preserved`): the model comes back bitwise unchanged, in the
mode it was in, whatever happens. Each module holds one idea:

- base.py            MeasureResult, the registry, MeasureContext, compute_measure / compute_group_measure
- guard.py           the restore-everything context manager
- params.py          parameter filters, flatten/unflatten, vector arithmetic on tensor lists
- loss.py            mean cross-entropy, error rate, full-data gradient over batches; cost meter
- search.py          the bisection shared by sharpness-alpha and pacbayes-flatness
- margin.py          margin (Bassi et al. 2024), logit-margin (Jiang et al. 2020)
- sharpness_diff.py  sharpness-diff (Bassi et al. 2024; modes `default` and `paper`)
- sharpness_alpha.py sharpness-alpha, sharpness-alpha-mag (Jiang et al. 2020)
- pacbayes.py        pacbayes-flatness, pacbayes-flatness-mag (Jiang et al. 2020)
- sharpness_avg.py   sharpness-avg; sharpness_worst.py sharpness-worst (Andriushchenko et al. 2023)
- curvature/         operators (Hessian, Fisher/GGN), algorithms (power, Lanczos, Hutchinson, Hutch++),
                     measures hessian-top-eig, hessian-trace, fisher-trace
- distance.py        frobenius-distance; spectral.py spectral-norm
- seed_variance.py   parameter-variance-across-seeds (a measure of a group of runs)
- label_free.py      label-free measures of a model's outputs on unlabelled text (confidence, entropy, ATC,
                     DoC, agreement, CKA, embedding distance, retrieval) and pseudo-label sharpness
"""

import sys

from xlgm.core.modules import import_submodules
from xlgm.measures.base import (
    MeasureContext,
    MeasureResult,
    MeasureSpec,
    compute_group_measure,
    compute_measure,
    compute_output_measure,
    get_measure,
    list_measures,
    register_measure,
)
from xlgm.measures.guard import preserved
from xlgm.measures.params import select_parameters
from xlgm.measures.seed_variance import parameter_variance_across_seeds

# Importing the package's modules registers their measures: a new measure is one module.
import_submodules(sys.modules[__name__])

__all__ = [
    "MeasureContext",
    "MeasureResult",
    "MeasureSpec",
    "compute_group_measure",
    "compute_measure",
    "compute_output_measure",
    "get_measure",
    "list_measures",
    "register_measure",
    "preserved",
    "select_parameters",
    "parameter_variance_across_seeds",
]
