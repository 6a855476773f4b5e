"""SAM / ASAM: bitwise baseline at rho=0, the ascent point, accumulation, restore, accelerate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from objectives_testlib import (
    make_batch,
    make_rows,
    params_of,
    run_steps,
    same_params,
    single_thread,  # noqa: F401  (autouse fixture)
    split,
    tiny_model,
    wordpiece_tokenizer,
)
from torch.func import functional_call

from xlgm.objectives import (
    AdamWObjective,
    ASAMConfig,
    ASAMObjective,
    SAMConfig,
    SAMObjective,
    asam_perturbation,
    sam_perturbation,
)
from xlgm.objectives.base import StepContext, model_inputs


@pytest.fixture(scope="module")
def data():
    tok = wordpiece_tokenizer()
    rows = make_rows(24, seed=1)
    batch8 = make_batch(tok, rows, range(8))
    steps = [split(make_batch(tok, rows, range(8 * s, 8 * s + 8)), [4, 4]) for s in range(3)]
    return tok, rows, batch8, steps


def model_for(tok, seed=0):
    return tiny_model(vocab_size=len(tok), seed=seed)


def ctx(step=0, i=0, n=1, accelerator=None):
    return StepContext(accelerator, step, micro_index=i, num_micro=n, generator=torch.Generator().manual_seed(0))


def ce_of(model, batch, params=None):
    inputs = model_inputs(batch)
    if params is None:
        out = model(**inputs)
    else:
        out = functional_call(model, params, args=(), kwargs=inputs)
    return F.cross_entropy(out.logits.float(), batch["labels"])


def plain_grads(model, batch):
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(ce_of(model, batch), list(model.parameters()))
    return dict(zip(names, grads))


def capture_forward_weights(model):
    """A forward pre-hook that records a copy of every parameter at each forward call."""
    seen = []

    def hook(module, args, kwargs):
        seen.append({n: p.detach().clone() for n, p in module.named_parameters()})

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def test_sam_rho0_reproduces_adamw_bit_for_bit(data):
    tok, _, _, steps = data
    base, sam = model_for(tok), model_for(tok)
    assert same_params(params_of(base), params_of(sam))
    run_steps(AdamWObjective(), base, steps)
    run_steps(SAMObjective(SAMConfig(rho=0.0)), sam, steps)
    assert all(torch.equal(a, b) for a, b in zip(base.parameters(), sam.parameters()))


@pytest.mark.parametrize("shared", [False, True])
def test_sam_rho0_shared_also_reproduces_adamw(data, shared):
    tok, _, _, steps = data
    base, sam = model_for(tok), model_for(tok)
    run_steps(AdamWObjective(), base, steps)
    run_steps(SAMObjective(SAMConfig(rho=0.0, shared_perturbation=shared)), sam, steps)
    assert all(torch.equal(a, b) for a, b in zip(base.parameters(), sam.parameters()))


def test_sam_ascent_point_is_w_plus_rho_g_over_norm(data):
    tok, _, batch8, _ = data
    model = model_for(tok)
    rho = 0.3
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = plain_grads(model, batch8)
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in g.values()))
    expected = {n: w[n] + (rho * g[n].double() / norm).float() for n in w}

    seen, handle = capture_forward_weights(model)
    try:
        SAMObjective(SAMConfig(rho=rho)).micro_step(model, batch8, ctx())
    finally:
        handle.remove()
    assert len(seen) == 2  # ascent at w, descent at w + eps
    assert all(torch.equal(seen[0][n], w[n]) for n in w)
    for n in w:
        torch.testing.assert_close(seen[1][n], expected[n], rtol=0, atol=1e-6)
    moved = sum(float((seen[1][n] - w[n]).double().pow(2).sum()) for n in w) ** 0.5
    assert moved == pytest.approx(rho, rel=1e-4)
    # w is restored bitwise
    assert all(torch.equal(p, w[n]) for n, p in model.named_parameters())


def test_sam_perturbation_pure_function():
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5)]
    grads = [torch.randn(3, 4), None]
    eps = sam_perturbation(grads, params, 0.2)
    assert eps[1] is None
    torch.testing.assert_close(eps[0], 0.2 * grads[0] / grads[0].norm())
    zero = sam_perturbation([torch.zeros(2)], [torch.ones(2)], 0.5)
    assert torch.equal(zero[0], torch.zeros(2))  # no division by zero


def test_sam_changes_params_and_differs_from_plain_gradient(data):
    tok, _, batch8, _ = data
    model = model_for(tok)
    before = params_of(model)
    plain = plain_grads(model, batch8)
    assert all(p.grad is None for p in model.parameters())  # torch 2: grads start as None
    objective = SAMObjective(SAMConfig(rho=0.5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    logs = objective.micro_step(model, batch8, ctx())
    assert logs["objective"] > logs["loss"]  # the loss at w + eps is higher: the ascent did go up
    sam_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert not all(torch.allclose(sam_grads[n], plain[n]) for n in plain)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    after = params_of(model)
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(before) // 2


def _hand_sam_descent(model, batch, rho):
    """∇CE(w + rho g/|g|) by hand, with functional_call (parameters untouched)."""
    w = {n: p.detach() for n, p in model.named_parameters()}
    g = plain_grads(model, batch)
    norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
    perturbed = {n: (w[n] + rho * g[n] / (norm + 1e-12)).requires_grad_(True) for n in w}
    loss = ce_of(model, batch, perturbed)
    grads = torch.autograd.grad(loss, list(perturbed.values()))
    return dict(zip(perturbed, grads))


def test_sam_per_micro_batch_matches_hand_reference(data):
    tok, _, batch8, _ = data
    model = model_for(tok)
    micro = split(batch8, [3, 5])
    rho = 0.2
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for b in micro:
        for n, g in _hand_sam_descent(model, b, rho).items():
            expected[n] += 0.5 * g
    objective = SAMObjective(SAMConfig(rho=rho))
    for i, b in enumerate(micro):
        objective.micro_step(model, b, ctx(i=i, n=2))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6)


def test_sam_shared_perturbation_two_micro_batches_equal_one_batch(data):
    tok, _, batch8, _ = data
    rho = 0.2
    whole, shared, per_micro = model_for(tok), model_for(tok), model_for(tok)
    SAMObjective(SAMConfig(rho=rho)).micro_step(whole, batch8, ctx())
    obj = SAMObjective(SAMConfig(rho=rho, shared_perturbation=True))
    for i, b in enumerate(split(batch8, [4, 4])):
        logs = obj.micro_step(shared, b, ctx(i=i, n=2))
        if i == 0:
            assert all(p.grad is None for p in shared.parameters())  # descent deferred to the last
    assert "objective" in logs
    obj = SAMObjective(SAMConfig(rho=rho))
    for i, b in enumerate(split(batch8, [4, 4])):
        obj.micro_step(per_micro, b, ctx(i=i, n=2))
    for (_n, a), b, _c in zip(whole.named_parameters(), shared.parameters(), per_micro.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)
    # the default (per-micro-batch perturbation) is a different algorithm (m-sharpness)
    diff = max(float((a.grad - c.grad).abs().max()) for a, c in zip(whole.parameters(), per_micro.parameters()))
    assert diff > 1e-5
    # shared mode restores w and does not leak state across steps
    assert obj._shared_batches == []


def test_asam_perturbation_matches_formula():
    torch.manual_seed(1)
    params = [torch.randn(4, 3), torch.randn(3), torch.randn(2)]
    grads = [torch.randn(4, 3), torch.randn(3), None]
    adaptive = [True, False, True]
    rho, eta = 0.5, 0.01
    eps = asam_perturbation(grads, params, rho, eta, adaptive)
    t0 = params[0].abs() + eta
    tg = torch.cat([(t0 * grads[0]).flatten(), grads[1].flatten()])
    norm = tg.norm()
    torch.testing.assert_close(eps[0], rho * t0 * t0 * grads[0] / norm)
    torch.testing.assert_close(eps[1], rho * grads[1] / norm)
    assert eps[2] is None
    # with T = 1 everywhere ASAM is SAM
    plain = asam_perturbation(grads, params, rho, 0.0, [False, False, False])
    ref = sam_perturbation(grads, params, rho)
    torch.testing.assert_close(plain[0], ref[0])
    torch.testing.assert_close(plain[1], ref[1])


def test_asam_ascent_point(data):
    tok, _, batch8, _ = data
    model = model_for(tok)
    rho, eta = 0.5, 0.01
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = plain_grads(model, batch8)
    t = {n: (w[n].abs() + eta) if "weight" in n else torch.ones_like(w[n]) for n in w}
    norm = torch.sqrt(sum(((t[n] * g[n]).double() ** 2).sum() for n in w))
    expected = {n: w[n] + (rho * (t[n] ** 2 * g[n]).double() / norm).float() for n in w}
    seen, handle = capture_forward_weights(model)
    try:
        ASAMObjective(ASAMConfig(rho=rho, eta=eta)).micro_step(model, batch8, ctx())
    finally:
        handle.remove()
    for n in w:
        torch.testing.assert_close(seen[1][n], expected[n], rtol=0, atol=1e-5)
    assert all(torch.equal(p, w[n]) for n, p in model.named_parameters())


def test_sam_with_accelerate_matches_plain_loop(data):
    accelerate = pytest.importorskip("accelerate")
    tok, _, _, steps = data
    accelerator = accelerate.Accelerator(cpu=True)
    ref = model_for(tok)
    run_steps(SAMObjective(SAMConfig(rho=0.1)), ref, steps)

    model = model_for(tok)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = params_of(model)
    run_steps(SAMObjective(SAMConfig(rho=0.1)), model, steps, accelerator=accelerator, optimizer=optimizer)
    assert not same_params(before, params_of(model))
    for a, b in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
