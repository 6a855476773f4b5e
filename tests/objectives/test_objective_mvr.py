"""MVR: the loss against its formula, the rate-0 / λ=0 reductions, the sampled view's batch."""

from __future__ import annotations

import copy

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
    unigram_tokenizer,
    wordpiece_tokenizer,
)

from xlgm.core.errors import XlgmError
from xlgm.objectives import AdamWObjective, MVRConfig, MVRObjective
from xlgm.objectives.base import StepContext, model_inputs
from xlgm.objectives.mvr import consistency_kl

TOKENIZERS = {"wordpiece": wordpiece_tokenizer, "unigram": unigram_tokenizer}


def setup_mvr(kind, **options):
    tok = TOKENIZERS[kind]()
    rows = make_rows(16, seed=5)
    objective = MVRObjective(MVRConfig(**options))
    model = tiny_model(vocab_size=len(tok), seed=8)
    objective.setup(model, tok, rows)
    return tok, rows, objective, model


def gen_ctx(seed=0, step=0, i=0, n=1, **extras):
    return StepContext(None, step, i, n, generator=torch.Generator().manual_seed(seed), extras=extras)


@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_rate0_is_cross_entropy_bit_for_bit(lam):
    tok, rows, objective, model = setup_mvr("wordpiece", lam=lam, rate=0.0)
    steps = [split(make_batch(tok, rows, range(8 * s, 8 * s + 8)), [4, 4]) for s in range(2)]
    base = tiny_model(vocab_size=len(tok), seed=8)
    base_logs = run_steps(AdamWObjective(), base, steps)
    logs = run_steps(objective, model, steps)
    assert all(entry["mvr_kl"] == 0.0 for entry in logs)
    assert [e["loss"] for e in logs] == [e["loss"] for e in base_logs]
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), model.parameters()))


@pytest.mark.parametrize("kind", list(TOKENIZERS))
@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_loss_and_gradient_match_the_formula(kind, lam):
    tok, rows, objective, model = setup_mvr(kind, lam=lam, rate=0.3, max_length=40)
    batch = make_batch(tok, rows, [3, 1, 4, 5, 9], max_length=40, token_type_ids=kind == "wordpiece")
    reference = copy.deepcopy(model)

    captured = {}
    original = objective.sampled_batch

    def capture(*args, **kwargs):
        captured["batch"] = original(*args, **kwargs)
        return captured["batch"]

    objective.sampled_batch = capture
    logs = objective.micro_step(model, batch, gen_ctx(seed=11, n=2))  # loss_scale 1/2
    sampled = captured["batch"]
    assert not torch.equal(sampled["input_ids"][:, : batch["input_ids"].shape[1]], batch["input_ids"])

    logits = reference(**model_inputs(batch)).logits
    logits_s = reference(**model_inputs(sampled)).logits
    p = logits.softmax(-1)
    kl = (p * (logits.log_softmax(-1) - logits_s.log_softmax(-1))).sum(-1).mean()
    y = batch["labels"]
    loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(logits_s, y) + lam * kl
    (0.5 * loss).backward()
    assert logs["objective"] == pytest.approx(float(loss.detach()), rel=1e-6)
    assert logs["loss"] == pytest.approx(float(F.cross_entropy(logits, y).detach()), rel=1e-6)
    assert logs["mvr_kl"] == pytest.approx(float(kl.detach()), rel=1e-5, abs=1e-9)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_consistency_kl_direction():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    p, q = a.softmax(-1), b.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(consistency_kl(a, b), expected)
    assert not torch.allclose(consistency_kl(b, a), expected)  # KL(p_det || p_sampled), not symmetric
    assert float(consistency_kl(a, a)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_sampled_batch_shape_keys_and_reproducibility(kind):
    tok, rows, objective, _ = setup_mvr(kind, rate=0.4)
    with_types = kind == "wordpiece"
    batch = make_batch(tok, rows, [0, 2, 7], max_length=16, token_type_ids=with_types)
    import random

    view = objective.sampled_batch(batch, random.Random(3), gen_ctx(max_length=16))
    assert ("token_type_ids" in view) == with_types
    assert torch.equal(view["labels"], batch["labels"]) and torch.equal(view["idx"], batch["idx"])
    lengths = view["attention_mask"].sum(1)
    assert int(lengths.max()) == view["input_ids"].shape[1] <= 16  # dynamic padding, truncated to max_length
    pad = view["input_ids"][view["attention_mask"] == 0]
    assert bool((pad == tok.pad_token_id).all())
    again = objective.sampled_batch(batch, random.Random(3), gen_ctx(max_length=16))
    assert all(torch.equal(view[k], again[k]) for k in view)
    # the micro-step draws its seed from ctx.generator: same generator state, same view
    seen = []
    original = objective.sampled_batch
    objective.sampled_batch = lambda *a, **k: seen.append(original(*a, **k)) or seen[-1]
    model = tiny_model(vocab_size=len(tok), seed=1)
    objective.micro_step(model, batch, gen_ctx(seed=4, max_length=16))
    objective.micro_step(model, batch, gen_ctx(seed=4, max_length=16))
    objective.micro_step(model, batch, gen_ctx(seed=5, max_length=16))
    assert torch.equal(seen[0]["input_ids"], seen[1]["input_ids"])
    assert not torch.equal(seen[0]["input_ids"], seen[2]["input_ids"])


def test_mvr_trains_with_accumulation_and_none_grads():
    tok, rows, objective, model = setup_mvr("unigram", rate=0.2)
    before = [p.detach().clone() for p in model.parameters()]
    steps = [split(make_batch(tok, rows, range(8 * s, 8 * s + 8), token_type_ids=False), [4, 4]) for s in range(2)]
    logs = run_steps(objective, model, steps)
    assert all(entry["mvr_kl"] >= -1e-6 for entry in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_mvr_user_errors():
    tok = wordpiece_tokenizer()
    rows = make_rows(4)
    objective = MVRObjective(MVRConfig())
    with pytest.raises(XlgmError, match="tokenizer"):
        objective.setup(None, None, rows)
    with pytest.raises(XlgmError, match="setup"):
        objective.micro_step(tiny_model(len(tok)), make_batch(tok, rows, [0, 1]), gen_ctx())
    objective.setup(None, tok, rows)
    batch = make_batch(tok, rows, [0, 1])
    del batch["idx"]
    with pytest.raises(XlgmError, match="idx"):
        objective.micro_step(tiny_model(len(tok)), batch, gen_ctx())
