"""Curvature *algorithms*: eigenvalues and traces of a symmetric operator from matrix-vector products only.

Every algorithm takes an operator with `matvec(v)`, `size`, `device` and `dtype` (see `operators.py`) and a
`torch.Generator` for its random vectors, and reports how many operator applications it used.

- `power_iteration`: the dominant (largest |λ|) eigenvalue; top-k by deflation (A - Σ λ_j u_j u_jᵀ).
  Stops when the Rayleigh quotient changes by less than tol (relative). Converges at rate |λ2/λ1|.
- `lanczos`: the k largest (algebraic) eigenvalues from the Krylov subspace. Ritz values come from
  `scipy.linalg.eigh_tridiagonal`; it stops when every top-k Ritz pair has residual
  ||A y - θ y|| = β_j |s_j| <= tol |θ| (then some eigenvalue lies within tol |θ| of θ, Bauer-Fike).
  Full reorthogonalization (every Lanczos vector kept: memory (iterations + 1) x size) when that fits in
  `memory_limit` bytes (2 GiB by default), else the plain three-term recurrence (3 vectors), whose top Ritz
  value converges just as well but may later repeat as "ghost" copies -- so with k > 1 on a model too large
  for full reorthogonalization, the k values may contain duplicates of λ_max (details say which was used).
- `hutchinson`: tr(A) ≈ mean_i z_iᵀ A z_i, z_i Rademacher (Hutchinson 1989); std over the probes reported.
- `hutchpp`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): tr(A) = tr(Qᵀ A Q) + Hutchinson on the
  residual (I - QQᵀ) A (I - QQᵀ), Q an orthonormal basis of A S for a Rademacher sketch S; m matvecs split
  m/3 (sketch), m/3 (QᵀAQ), m/3 (residual probes). Much lower variance when the spectrum decays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from xlgm.measures.base import mean_and_spread
from xlgm.measures.params import dot64


@dataclass(frozen=True)
class EigenResult:
    eigenvalues: list[float]  # descending (power: in order found, i.e. by decreasing |λ|)
    applications: int  # operator applications used
    iterations: int
    converged: bool
    residuals: list[float]  # ||A u - λ u|| (Lanczos: the β_j |s_j| bound) per eigenvalue
    history: list[float] = field(default_factory=list)  # the top estimate after each application
    eigenvectors: list[torch.Tensor] | None = None
    reorthogonalized: bool | None = None  # Lanczos: full reorthogonalization used


@dataclass(frozen=True)
class TraceEstimate:
    value: float
    spread: float | None  # std (ddof=1) of the random probes' values
    num_samples: int  # random probes
    applications: int  # operator applications used
    samples: list[float]
    deterministic_part: float = 0.0  # Hutch++: tr(Qᵀ A Q)


def _random_unit(op, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(op.size, generator=generator, device=generator.device, dtype=op.dtype).to(op.device)
    return v / v.norm()


def _rademacher(size: int, op, generator: torch.Generator, cols: int | None = None) -> torch.Tensor:
    shape = (size,) if cols is None else (size, cols)
    z = torch.randint(0, 2, shape, generator=generator, device=generator.device).to(op.device, op.dtype)
    return z * 2 - 1


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    return dot64(a, b)


def power_iteration(op, generator: torch.Generator, k: int = 1, max_iters: int = 100, tol: float = 1e-4) -> EigenResult:
    """The k dominant eigenvalues by power iteration with deflation."""
    eigenvalues: list[float] = []
    vectors: list[torch.Tensor] = []
    residuals: list[float] = []
    history: list[float] = []
    start = op.applications
    all_converged = True
    iterations = 0
    for _ in range(min(k, op.size)):
        v = _random_unit(op, generator)
        for u in vectors:
            v = v - _dot64(u, v) * u
        v = v / v.norm()
        lam, converged, residual = 0.0, False, float("inf")
        for it in range(max_iters):
            w = op.matvec(v)
            for lam_j, u in zip(eigenvalues, vectors):  # deflation
                w = w - lam_j * _dot64(u, v) * u
            new_lam = _dot64(v, w)
            residual = float((w - new_lam * v).norm())
            history.append(new_lam)
            iterations += 1
            w_norm = w.norm()
            if w_norm == 0:
                lam, converged = 0.0, True
                break
            converged = it > 0 and abs(new_lam - lam) <= tol * abs(new_lam)
            lam, v = new_lam, w / w_norm
            if converged:
                break
        all_converged &= converged
        eigenvalues.append(lam)
        vectors.append(v)
        residuals.append(residual)
    return EigenResult(eigenvalues, op.applications - start, iterations, all_converged, residuals, history, vectors)


def lanczos(
    op,
    generator: torch.Generator,
    k: int = 1,
    max_iters: int = 60,
    tol: float = 1e-3,
    return_vectors: bool = False,
    reorthogonalize: bool | None = None,
    memory_limit: int = 2 * 1024**3,
) -> EigenResult:
    """The k largest eigenvalues by Lanczos (full reorthogonalization when it fits in memory_limit bytes)."""
    m = min(max_iters, op.size)
    k = min(k, op.size)
    if reorthogonalize is None:
        itemsize = torch.empty((), dtype=op.dtype).element_size()
        reorthogonalize = return_vectors or (m + 1) * op.size * itemsize <= memory_limit
    start = op.applications
    q = _random_unit(op, generator)
    basis = [q]  # every Lanczos vector (full reorthogonalization) or the last two
    prev: torch.Tensor | None = None
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    theta = np.zeros(0)
    s = np.zeros((0, 0))
    converged = False
    residuals: list[float] = []
    for _ in range(m):
        current = basis[-1]
        w = op.matvec(current)
        alpha = _dot64(current, w)
        w = w - alpha * current
        if prev is not None:
            w = w - betas[-1] * prev
        if reorthogonalize:
            for _ in range(2):  # twice is enough (Kahan/Parlett)
                for b in basis:
                    w = w - _dot64(b, w) * b
        beta = float(w.norm())
        alphas.append(alpha)
        theta, s = eigh_tridiagonal(np.array(alphas), np.array(betas))
        order = np.argsort(theta)[::-1][:k]
        history.append(float(theta[order[0]]))
        residuals = [float(beta * abs(s[-1, i])) for i in order]
        scale = max(abs(float(theta[order[0]])), 1e-30)
        converged = len(order) >= k and all(
            r <= tol * max(abs(float(theta[i])), 1e-30) for r, i in zip(residuals, order)
        )
        if converged or beta <= 1e-10 * scale:  # converged, or an invariant subspace: the Ritz values are exact
            converged = True
            break
        betas.append(beta)
        prev = current
        nxt = w / beta
        if reorthogonalize:
            basis.append(nxt)
        else:
            basis = [nxt]
    order = np.argsort(theta)[::-1][:k]
    vectors = None
    if return_vectors:
        stacked = torch.stack(basis[: len(alphas)], dim=1)
        vectors = [stacked @ torch.as_tensor(s[:, i], dtype=stacked.dtype, device=stacked.device) for i in order]
    return EigenResult(
        [float(theta[i]) for i in order],
        op.applications - start,
        len(alphas),
        converged,
        residuals,
        history,
        vectors,
        reorthogonalized=reorthogonalize,
    )


def hutchinson(op, generator: torch.Generator, num_samples: int) -> TraceEstimate:
    """tr(A) ≈ (1/n) Σ z_iᵀ A z_i with Rademacher z_i."""
    start = op.applications
    samples = []
    for _ in range(num_samples):
        z = _rademacher(op.size, op, generator)
        samples.append(_dot64(z, op.matvec(z)))
    value, spread = mean_and_spread(samples)
    return TraceEstimate(value, spread, num_samples, op.applications - start, samples)


def hutchpp(op, generator: torch.Generator, num_matvecs: int) -> TraceEstimate:
    """Hutch++ with `num_matvecs` operator applications (at least 3)."""
    if num_matvecs < 3:
        raise ValueError("Hutch++ needs at least 3 matvecs")
    start = op.applications
    k = min(num_matvecs // 3, op.size)
    n_probe = num_matvecs - 2 * k
    sketch = _rademacher(op.size, op, generator, cols=k)
    ys = torch.stack([op.matvec(sketch[:, i]) for i in range(k)], dim=1)
    q, _ = torch.linalg.qr(ys)  # memory: 3 x size x k values
    deterministic = sum(_dot64(q[:, i], op.matvec(q[:, i])) for i in range(k))
    samples = []
    for _ in range(n_probe):
        g = _rademacher(op.size, op, generator)
        g = g - q @ (q.T @ g)
        samples.append(_dot64(g, op.matvec(g)))
    if samples:
        residual, spread = mean_and_spread(samples)
    else:
        residual, spread = 0.0, None
    return TraceEstimate(deterministic + residual, spread, n_probe, op.applications - start, samples, deterministic)
