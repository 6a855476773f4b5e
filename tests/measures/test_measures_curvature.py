"""Curvature operators, algorithms and measures against closed forms and full Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from measure_models import LinearSoftmax, linear_batches, make_bert_batches, make_tiny_bert

from xlgm.measures import compute_measure
from xlgm.measures.curvature import (
    FisherOperator,
    HessianOperator,
    MatrixOperator,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
)
from xlgm.measures.loss import double_backward_safe, logits_of


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _symmetric(eigenvalues, seed=0):
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


# ---------------------------------------------------------------------------------------------------------
# Algorithms on explicit matrices
# ---------------------------------------------------------------------------------------------------------


def test_lanczos_top_k_exact_on_a_known_spectrum():
    spectrum = [10.0, 6.0, 5.5] + list(np.linspace(-2.0, 3.0, 37))
    op = MatrixOperator(_symmetric(spectrum))
    res = lanczos(op, _gen(), k=3, max_iters=40, tol=1e-10)
    assert res.converged
    assert res.eigenvalues == pytest.approx([10.0, 6.0, 5.5], rel=1e-8)
    assert res.applications == op.applications == res.iterations <= 40
    assert len(res.history) == res.iterations


def test_lanczos_without_reorthogonalization_finds_the_top():
    spectrum = [10.0, 6.0, 5.5] + list(np.linspace(-2.0, 3.0, 97))
    res = lanczos(
        MatrixOperator(_symmetric(spectrum, seed=3)), _gen(), k=1, max_iters=60, tol=1e-10, reorthogonalize=False
    )
    assert res.reorthogonalized is False
    assert res.eigenvalues[0] == pytest.approx(10.0, rel=1e-8)


def test_thick_restarted_lanczos_resolves_a_tight_top_cluster_in_a_small_basis():
    # Eigenvalues 10.0, 9.98, 9.96, ... at the top: the case that left plain Lanczos short of its tolerance.
    spectrum = list(10.0 - 0.02 * np.arange(12)) + list(np.linspace(-2.0, 3.0, 188))
    op = MatrixOperator(_symmetric(spectrum, seed=5))
    small = lanczos(op, _gen(), k=2, max_iters=800, tol=1e-9, max_basis=8)
    assert small.reorthogonalized and small.converged
    assert small.iterations > 8  # it restarted
    assert small.applications == small.iterations == len(small.history)
    assert small.eigenvalues == pytest.approx([10.0, 9.98], abs=1e-7)
    assert small.residuals[0] <= 1e-9 * small.eigenvalues[0]
    # The basis size comes from the memory limit: 6 float64 vectors of 200 beside the next one.
    limited = lanczos(op, _gen(), k=1, max_iters=800, tol=1e-7, memory_limit=7 * 200 * 8)
    assert limited.reorthogonalized and limited.converged
    assert limited.eigenvalues[0] == pytest.approx(10.0, abs=1e-6)
    assert limited.iterations > 6
    assert limited.applications == limited.iterations  # this call's own, on an operator used before
    # Not even k + 2 vectors fit: a basis of k + 2 all the same.
    tight = lanczos(op, _gen(), k=1, max_iters=2000, tol=1e-7, memory_limit=2 * 200 * 8)
    assert tight.reorthogonalized and tight.converged
    assert tight.eigenvalues[0] == pytest.approx(10.0, abs=1e-6)


def test_thick_restart_rotates_the_basis_a_slice_of_columns_at_a_time(monkeypatch):
    from xlgm.measures.curvature import algorithms

    spectrum = list(10.0 - 0.02 * np.arange(12)) + list(np.linspace(-2.0, 3.0, 188))
    op = MatrixOperator(_symmetric(spectrum, seed=5))
    whole = lanczos(op, _gen(), k=1, max_iters=300, tol=1e-8, max_basis=8)
    monkeypatch.setattr(algorithms, "_RESTART_COLUMNS", 7)  # 200 columns: 29 slices, the last one short
    sliced = lanczos(op, _gen(), k=1, max_iters=300, tol=1e-8, max_basis=8)
    assert whole.iterations > 8 and sliced.converged
    # the same numbers up to the rounding of a differently blocked product
    assert sliced.history == pytest.approx(whole.history, rel=1e-9)


def test_lanczos_does_not_stop_on_the_second_of_a_tight_top_pair():
    # λ1 = 10.0 and λ2 = 9.96 (0.4% apart), the start vector nearly orthogonal to λ1's eigenvector: after 6
    # steps λ2's Ritz pair meets the residual test while λ1 is still unseen.
    n = 300
    start = torch.randn(n, generator=_gen(0), dtype=torch.float64)  # the vector lanczos draws first
    start = start / start.norm()
    other = torch.randn(n, generator=_gen(7), dtype=torch.float64)
    other = other - (other @ start) * start
    top = other / other.norm() * np.sqrt(1 - 1e-8) + 1e-4 * start
    columns = torch.randn(n, n, generator=_gen(8), dtype=torch.float64)
    columns[:, 0] = top
    q, _ = torch.linalg.qr(columns)
    spectrum = torch.tensor([10.0, 9.96] + list(np.linspace(-1.0, 3.0, n - 2)), dtype=torch.float64)
    op = MatrixOperator(q @ torch.diag(spectrum) @ q.T)
    early = lanczos(op, _gen(0), k=1, max_iters=100, tol=1e-3, min_iters=1)
    assert early.converged and early.iterations < 10
    assert early.eigenvalues[0] == pytest.approx(9.96, abs=1e-3)  # a true eigenvalue, not the largest
    res = lanczos(op, _gen(0), k=1, max_iters=100, tol=1e-3)  # min_iters 20
    assert res.converged and res.iterations >= 20
    assert res.eigenvalues[0] == pytest.approx(10.0, abs=1e-3)


def test_thick_restarted_lanczos_returns_the_ritz_vectors_of_its_values():
    spectrum = [10.0, 6.0, 5.5] + list(np.linspace(-2.0, 3.0, 37))
    op = MatrixOperator(_symmetric(spectrum))
    whole = lanczos(op, _gen(), k=3, max_iters=40, tol=1e-10, return_vectors=True)
    assert whole.reorthogonalized and whole.converged
    matrix = _symmetric(spectrum)
    # Stopped by the cap right after a restart would have been due: the vectors still belong to the values.
    capped = lanczos(op, _gen(), k=1, max_iters=6, tol=1e-12, return_vectors=True, max_basis=6)
    assert not capped.converged and capped.iterations == 6
    vector = (capped.eigenvectors or [])[0]
    rayleigh = float(vector @ matrix @ vector)
    assert rayleigh == pytest.approx(capped.eigenvalues[0], rel=1e-10)
    for value, vector in zip(whole.eigenvalues, whole.eigenvectors or []):
        assert float(vector.norm()) == pytest.approx(1.0, abs=1e-10)
        assert float((matrix @ vector - value * vector).norm()) <= 1e-8


def test_power_iteration_with_deflation():
    spectrum = [10.0, -6.0] + list(np.linspace(-2.0, 3.0, 28))
    op = MatrixOperator(_symmetric(spectrum, seed=1))
    res = power_iteration(op, _gen(), k=2, max_iters=2000, tol=1e-12)
    assert res.eigenvalues == pytest.approx([10.0, -6.0], rel=1e-6)  # dominant |λ| first, signs kept
    assert res.applications == op.applications


def test_hutchinson_exact_on_diagonal_and_unbiased():
    diag = torch.diag(torch.tensor([3.0, -1.0, 0.5, 7.0], dtype=torch.float64))
    est = hutchinson(MatrixOperator(diag), _gen(), num_samples=5)
    assert est.value == pytest.approx(9.5) and est.spread == pytest.approx(0.0, abs=1e-12)
    dense = _symmetric(list(np.linspace(-1, 4, 20)), seed=2)
    est = hutchinson(MatrixOperator(dense), _gen(3), num_samples=2000)
    stderr = est.spread / np.sqrt(est.num_samples)
    assert abs(est.value - float(torch.trace(dense))) < 4 * stderr
    assert est.applications == 2000


def test_hutchpp_exact_for_low_rank():
    low_rank = _symmetric([5.0, 3.0, 2.0, 1.0, 0.5] + [0.0] * 95, seed=4)
    est = hutchpp(MatrixOperator(low_rank), _gen(), num_matvecs=30)
    assert est.value == pytest.approx(11.5, rel=1e-8)
    assert est.applications == 30 and est.num_samples == 10


# ---------------------------------------------------------------------------------------------------------
# Operators and measures on multinomial logistic regression (closed-form Hessian and Fisher)
# ---------------------------------------------------------------------------------------------------------


def _closed_forms(model: LinearSoftmax, batches):
    """H = (1/N) Σ J_iᵀ (diag p - p pᵀ) J_i and F_emp = (1/N) Σ J_iᵀ e eᵀ J_i, parameters (W row-major, b)."""
    x = torch.cat([b["features"] for b in batches]).numpy()
    y = torch.cat([b["labels"] for b in batches]).numpy()
    w = model.linear.weight.detach().numpy()
    bias = model.linear.bias.detach().numpy()
    n, d = x.shape
    c = w.shape[0]
    size = c * d + c
    hess = np.zeros((size, size))
    emp = np.zeros((size, size))
    for xi, yi in zip(x, y):
        z = w @ xi + bias
        p = np.exp(z - z.max())
        p /= p.sum()
        jac = np.zeros((c, size))
        for k in range(c):
            jac[k, k * d : (k + 1) * d] = xi
            jac[k, c * d + k] = 1.0
        hess += jac.T @ (np.diag(p) - np.outer(p, p)) @ jac / n
        e = p - np.eye(c)[yi]
        emp += jac.T @ np.outer(e, e) @ jac / n
    return hess, emp


@pytest.fixture
def linear_problem():
    model = LinearSoftmax()
    batches = linear_batches()
    hess, emp = _closed_forms(model, batches)
    return model, batches, hess, emp


def test_operators_match_closed_forms(linear_problem):
    model, batches, hess, emp = linear_problem
    params = list(model.parameters())
    v = torch.randn(hess.shape[0], generator=_gen(5), dtype=torch.float64)
    h_op = HessianOperator(model, batches, params)
    assert h_op.matvec(v).numpy() == pytest.approx(hess @ v.numpy(), abs=1e-12)
    true_op = FisherOperator(model, batches, params, kind="true")
    assert true_op.matvec(v).numpy() == pytest.approx(hess @ v.numpy(), abs=1e-12)  # GGN = Hessian (linear)
    emp_op = FisherOperator(model, batches, params, kind="empirical")
    assert emp_op.matvec(v).numpy() == pytest.approx(emp @ v.numpy(), abs=1e-12)
    assert h_op.applications == true_op.applications == emp_op.applications == 1


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_hessian_top_eig_matches_closed_form(linear_problem, method):
    model, batches, hess, _ = linear_problem
    eig = np.sort(np.linalg.eigvalsh(hess))[::-1]
    config = {"method": method, "k": 2, "tol": 1e-10, "max_iters": 15 if method == "lanczos" else 3000}
    result = compute_measure("hessian-top-eig", model, batches, config=config)
    assert result.value == pytest.approx(eig[0], rel=1e-6)
    assert result.details["eigenvalues"] == pytest.approx(eig[:2], rel=1e-5)
    assert result.details["hvps"] == len(result.details["history"])


def test_hessian_and_fisher_traces_match_closed_form(linear_problem):
    model, batches, hess, emp = linear_problem
    size = hess.shape[0]
    exact_hpp = compute_measure("hessian-trace", model, batches, config={"method": "hutchpp", "num_matvecs": 3 * size})
    assert exact_hpp.value == pytest.approx(np.trace(hess), rel=1e-9)
    hutch = compute_measure("hessian-trace", model, batches, config={"num_matvecs": 400})
    assert abs(hutch.value - np.trace(hess)) < 4 * hutch.spread / np.sqrt(hutch.num_samples)
    assert hutch.num_samples == 400 and hutch.details["hvps"] == 400
    for kind, matrix in (("empirical", emp), ("true", hess)):
        exact = compute_measure("fisher-trace", model, batches, config={"fisher": kind})
        assert exact.value == pytest.approx(np.trace(matrix), rel=1e-10)
        assert exact.details["estimated"] is False and exact.spread is None
        estimated = compute_measure(
            "fisher-trace", model, batches, config={"fisher": kind, "method": "hutchpp", "num_matvecs": 3 * size}
        )
        assert estimated.value == pytest.approx(np.trace(matrix), rel=1e-9)
        assert estimated.details["estimated"] is True


# ---------------------------------------------------------------------------------------------------------
# The tiny transformer: Lanczos vs the full Hessian of a parameter subset
# ---------------------------------------------------------------------------------------------------------

SUBSET = r"classifier|pooler|encoder\.layer\.1\.output\."


def _full_hessian(model, batches, names):
    model.eval()
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    n_total = sum(b["labels"].shape[0] for b in batches)

    def loss_of(flat):
        chunks = torch.split(flat, sizes)
        override = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        total = 0.0
        for batch in batches:
            logits = torch.func.functional_call(
                model, override, args=(), kwargs={k: v for k, v in batch.items() if k not in ("labels", "idx")}
            ).logits
            total = total + torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        return total / n_total

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    with double_backward_safe():
        return torch.autograd.functional.hessian(loss_of, flat, vectorize=True)


def test_tiny_bert_top_eigenvalue_matches_full_hessian():
    model, batches = make_tiny_bert(), make_bert_batches()
    model.train()
    names = [n for n, _ in model.named_parameters() if __import__("re").search(SUBSET, n)]
    result = compute_measure("hessian-top-eig", model, batches, param_filter=SUBSET)  # default: Lanczos, ≤ 60 HVPs
    hess = _full_hessian(model, batches, names).double()
    assert hess.shape[0] == result.details["num_parameters"]
    eig = torch.linalg.eigvalsh((hess + hess.T) / 2)
    assert result.value == pytest.approx(float(eig[-1]), rel=1e-3)
    assert result.details["converged"] and result.details["hvps"] <= 60
    # k = 2 with a tighter tolerance: the second eigenvalue too (power iteration is checked on closed forms:
    # here |λ2/λ1| ≈ 0.975 and negative eigenvalues of similar size make it need hundreds of HVPs).
    two = compute_measure("hessian-top-eig", model, batches, param_filter=SUBSET, config={"k": 2, "tol": 1e-6})
    assert two.details["eigenvalues"] == pytest.approx([float(eig[-1]), float(eig[-2])], rel=1e-4)


def test_tiny_bert_restarted_lanczos_matches_full_hessian():
    # |λ2/λ1| ≈ 0.975 here: a basis of 6 vectors must restart many times to resolve both.
    model, batches = make_tiny_bert(), make_bert_batches()
    model.eval()
    names = [n for n, _ in model.named_parameters() if __import__("re").search(SUBSET, n)]
    params = [p for n, p in model.named_parameters() if n in names]
    hess = _full_hessian(model, batches, names).double()
    eig = torch.linalg.eigvalsh((hess + hess.T) / 2)
    op = HessianOperator(model, batches, params)
    res = lanczos(op, _gen(), k=2, max_iters=1000, tol=1e-6, max_basis=6)
    assert res.converged and res.reorthogonalized and res.iterations > 6
    assert res.eigenvalues == pytest.approx([float(eig[-1]), float(eig[-2])], rel=1e-4)


def test_tiny_bert_operator_is_symmetric_and_eval_mode():
    """v'Hu = u'Hv on the transformer (dropout would break this) and matches finite differences of gradients."""
    model, batches = make_tiny_bert(), make_bert_batches()
    model.eval()
    params = [p for n, p in model.named_parameters() if "encoder.layer.1" in n or "classifier" in n]
    op = HessianOperator(model, batches, params)
    u = torch.randn(op.size, generator=_gen(1))
    v = torch.randn(op.size, generator=_gen(2))
    hu, hv = op.matvec(u), op.matvec(v)
    assert float(v @ hu) == pytest.approx(float(u @ hv), rel=1e-4)
    # Sanity: logits are deterministic in eval mode.
    assert torch.equal(logits_of(model, batches[0]), logits_of(model, batches[0]))
