"""Curvature of the loss: operators (Hessian, Fisher/GGN products), algorithms (power iteration, Lanczos,
Hutchinson, Hutch++) and the measures built from them (hessian-top-eig, hessian-trace, fisher-trace)."""

from xlgm.measures.curvature.algorithms import (
    EigenResult,
    TraceEstimate,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
)
from xlgm.measures.curvature.operators import FisherOperator, HessianOperator, LinearOperator, MatrixOperator

__all__ = [
    "EigenResult",
    "TraceEstimate",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "power_iteration",
    "FisherOperator",
    "HessianOperator",
    "LinearOperator",
    "MatrixOperator",
]
