"""Mixed precision: the fp16 loss-scale handling (with a stand-in GradScaler) and bf16 autocast."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from objectives_testlib import (
    make_batch,
    make_rows,
    single_thread,  # noqa: F401  (autouse fixture)
    split,
    tiny_model,
    wordpiece_tokenizer,
)

from xlgm.objectives import OBJECTIVES as REGISTERED
from xlgm.objectives import build_objective
from xlgm.objectives.base import StepContext


class FakeScaler:
    def __init__(self, scale: float):
        self.scale = scale

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.scale


class ScalingAccelerator:
    """What accelerate does under fp16 as far as an objective can tell: backward of loss * scale."""

    def __init__(self, scale: float):
        self.scaler = FakeScaler(scale)

    def backward(self, loss):
        (loss * self.scaler.get_scale()).backward()

    def no_sync(self, model):
        return contextlib.nullcontext()


# Every registered objective, with options off their defaults where that exercises more of the objective.
OPTIONS = {"sam": {"rho": 0.2}, "fisher": {"lam": 0.5}, "mvr": {"rate": 0.3}}
OBJECTIVES = [(name, OPTIONS.get(name, {})) for name in REGISTERED]


@pytest.fixture(scope="module")
def data():
    tok = wordpiece_tokenizer()
    rows = make_rows(8, seed=12)
    return tok, rows, make_batch(tok, rows, range(8), max_length=24)


def grads_after(name, options, data, accelerator):
    tok, rows, batch = data
    model = tiny_model(vocab_size=len(tok), seed=13)
    objective = build_objective(name, **options)
    objective.setup(model, tok, rows)
    generator = torch.Generator().manual_seed(1)
    logs = []
    for i, part in enumerate(split(batch, [4, 4])):
        logs.append(objective.micro_step(model, part, StepContext(accelerator, 0, i, 2, generator=generator)))
    return [p.grad for p in model.parameters()], logs


@pytest.mark.parametrize("name,options", OBJECTIVES)
def test_fp16_loss_scale_is_undone_where_it_must_be(name, options, data):
    scale = 1024.0
    reference, ref_logs = grads_after(name, options, data, None)
    scaled, logs = grads_after(name, options, data, ScalingAccelerator(scale))
    # .grad carries the scale (the GradScaler unscales before clipping and stepping) and nothing else:
    # SAM's perturbation and Fisher's penalty do not depend on it
    for a, b in zip(reference, scaled):
        torch.testing.assert_close(b / scale, a, rtol=1e-4, atol=1e-7)
    for a, b in zip(ref_logs, logs):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        if "fisher_penalty" in a:
            assert b["fisher_penalty"] == pytest.approx(a["fisher_penalty"], rel=1e-4)


@pytest.mark.parametrize("name", ["sam", "asam"])
def test_sam_skips_the_perturbation_on_overflow(name, data):
    tok, rows, batch = data
    model = tiny_model(vocab_size=len(tok), seed=13)
    before = [p.detach().clone() for p in model.parameters()]
    objective = build_objective(name)
    logs = objective.micro_step(model, batch, StepContext(ScalingAccelerator(math.inf), 0, 0, 1))
    assert logs["sam_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name,options", OBJECTIVES)
def test_bf16_autocast(name, options, data):
    tok, rows, batch = data
    model = tiny_model(vocab_size=len(tok), seed=14)
    objective = build_objective(name, **options)
    objective.setup(model, tok, rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logs = objective.micro_step(model, batch, StepContext(None, 0, 0, 1, generator=generator))
    assert math.isfinite(logs["loss"])
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
