"""Fisher Penalty: the double-backprop gradient against finite differences, λ=0, every-k, sub-batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from objectives_testlib import (
    make_batch,
    make_rows,
    run_steps,
    single_thread,  # noqa: F401  (autouse fixture)
    split,
    tiny_model,
    wordpiece_tokenizer,
)
from torch.func import functional_call

from xlgm.objectives import AdamWObjective, FisherConfig, FisherObjective
from xlgm.objectives.base import StepContext, model_inputs
from xlgm.objectives.fisher import math_attention, sample_labels


@pytest.fixture(scope="module")
def data():
    tok = wordpiece_tokenizer()
    rows = make_rows(16, seed=2)
    return tok, rows, make_batch(tok, rows, range(4), max_length=20)


def fisher_value(model, params, batch, y_hat, lam, m):
    """f(θ) = CE(θ; y) + λ ‖∇θ CE(θ; ŷ) on the first m rows‖², with first-order autograd only."""
    names = list(params)
    inputs = model_inputs(batch)
    sub_inputs = {k: v[:m] for k, v in inputs.items()}
    with math_attention():
        logits = functional_call(model, params, args=(), kwargs=inputs).logits
        ce = F.cross_entropy(logits, batch["labels"])
        leaves = {n: params[n].detach().requires_grad_(True) for n in names}
        sub_logits = functional_call(model, leaves, args=(), kwargs=sub_inputs).logits
        g = torch.autograd.grad(F.cross_entropy(sub_logits, y_hat), list(leaves.values()))
    return float(ce) + lam * float(sum((x**2).sum() for x in g))


@pytest.mark.parametrize("sub_batch", [None, 2])
def test_fisher_gradient_matches_finite_differences(data, sub_batch):
    tok, _, batch = data
    model = tiny_model(vocab_size=len(tok), seed=3, dtype=torch.float64)
    lam, seed = 0.7, 123
    objective = FisherObjective(FisherConfig(lam=lam, sub_batch=sub_batch))
    ctx = StepContext(None, 0, 0, 1, generator=torch.Generator().manual_seed(seed))
    logs = objective.micro_step(model, batch, ctx)
    assert logs["fisher_active"] == 1.0 and logs["fisher_penalty"] > 0
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    m = batch["labels"].shape[0] if sub_batch is None else sub_batch
    with torch.no_grad():
        logits = model(**{k: v[:m] for k, v in model_inputs(batch).items()}).logits
    y_hat = sample_labels(logits, torch.Generator().manual_seed(seed))  # the same draw as the objective's

    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    value = fisher_value(model, theta, batch, y_hat, lam, m)
    assert logs["objective"] == pytest.approx(value, rel=1e-9)
    gen = torch.Generator().manual_seed(7)
    h = 1e-5
    for _ in range(3):
        v = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in theta.items()}
        norm = torch.sqrt(sum((x**2).sum() for x in v.values()))
        v = {n: x / norm for n, x in v.items()}
        plus = fisher_value(model, {n: theta[n] + h * v[n] for n in theta}, batch, y_hat, lam, m)
        minus = fisher_value(model, {n: theta[n] - h * v[n] for n in theta}, batch, y_hat, lam, m)
        fd = (plus - minus) / (2 * h)
        analytic = float(sum((grads[n] * v[n]).sum() for n in theta))
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_fisher_gradient_differs_from_plain_ce(data):
    tok, _, batch = data
    a = tiny_model(vocab_size=len(tok), seed=3)
    b = tiny_model(vocab_size=len(tok), seed=3)
    AdamWObjective().micro_step(a, batch, StepContext(None, 0, 0, 1))
    FisherObjective(FisherConfig(lam=1.0)).micro_step(b, batch, StepContext(None, 0, 0, 1, torch.Generator()))
    assert not all(torch.allclose(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))


def test_fisher_lambda0_is_adamw_bit_for_bit(data):
    tok, rows, _ = data
    steps = [split(make_batch(tok, rows, range(4 * s, 4 * s + 4), max_length=20), [2, 2]) for s in range(2)]
    a = tiny_model(vocab_size=len(tok), seed=4)
    b = tiny_model(vocab_size=len(tok), seed=4)
    run_steps(AdamWObjective(), a, steps)
    logs = run_steps(FisherObjective(FisherConfig(lam=0.0)), b, steps)
    assert all(entry["fisher_active"] == 0.0 for entry in logs)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fisher_every_k_steps(data):
    tok, _, batch = data
    objective = FisherObjective(FisherConfig(lam=0.5, every=3))
    assert [objective.is_active(s) for s in range(7)] == [True, False, False, True, False, False, True]
    a = tiny_model(vocab_size=len(tok), seed=5)
    b = tiny_model(vocab_size=len(tok), seed=5)
    AdamWObjective().micro_step(a, batch, StepContext(None, 1, 0, 1))
    logs = objective.micro_step(b, batch, StepContext(None, 1, 0, 1, torch.Generator()))
    assert logs["fisher_active"] == 0.0
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))


def test_fisher_accumulates_with_none_grads_and_loss_scale(data):
    tok, _, batch = data
    model = tiny_model(vocab_size=len(tok), seed=6)
    objective = FisherObjective(FisherConfig(lam=0.3))
    parts = split(batch, [2, 2])
    singles = []
    for part in parts:
        ref = tiny_model(vocab_size=len(tok), seed=6)
        objective.micro_step(ref, part, StepContext(None, 0, 0, 1, torch.Generator().manual_seed(9)))
        singles.append([p.grad for p in ref.parameters()])
    for i, part in enumerate(parts):
        objective.micro_step(model, part, StepContext(None, 0, i, 2, torch.Generator().manual_seed(9)))
    for k, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.grad, 0.5 * singles[0][k] + 0.5 * singles[1][k], rtol=1e-5, atol=1e-7)
