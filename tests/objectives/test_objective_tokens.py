"""The objectives on a token task: a tiny token classifier, batches of tagged words (each tag on the word's first
subword, -100 elsewhere), and each objective's gradient against a hand computation of the token loss."""

from __future__ import annotations

import random

import pytest
import torch
from objectives_testlib import (
    CORPUS,
    single_thread,  # noqa: F401  (autouse fixture)
    split,
    wordpiece_tokenizer,
)
from torch.func import functional_call
from transformers import BertForTokenClassification

from token_testlib import tiny_bert_tagger
from xlgm.core.errors import XlgmError
from xlgm.core.tensors import cross_entropy
from xlgm.core.types import TaggedSentence
from xlgm.data.tagging import IGNORE_INDEX, TaggedBatchCollator, tokenize_tagged
from xlgm.objectives import (
    AdamWObjective,
    ASAMConfig,
    ASAMObjective,
    FisherConfig,
    FisherObjective,
    MVRObjective,
    SAMConfig,
    SAMObjective,
)
from xlgm.objectives.base import StepContext, model_inputs
from xlgm.objectives.fisher import math_attention, sample_labels
from xlgm.objectives.sam import is_adaptive_parameter

NUM_TAGS = 5


def tagged_sentences(n: int, seed: int = 0) -> list[TaggedSentence]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = tuple(rng.choice(CORPUS).split())
        out.append(TaggedSentence(words, tuple(rng.randrange(NUM_TAGS) for _ in words)))
    return out


def token_model(vocab_size: int, seed: int = 0, dtype=torch.float32) -> BertForTokenClassification:
    return tiny_bert_tagger(vocab_size, NUM_TAGS, seed).to(dtype)


@pytest.fixture(scope="module")
def data():
    tok = wordpiece_tokenizer()
    sentences = tagged_sentences(8, seed=1)
    tagged = tokenize_tagged(tok, sentences, max_length=48)
    batch = TaggedBatchCollator(tok, tagged)(list(range(8)))
    return tok, sentences, batch


def hand_token_loss(model, batch, params=None, labels=None):
    """-log p(tag | x) at each labelled position (labels != -100), averaged over those positions: the token loss
    written out, without torch's ignore_index."""
    labels = batch["labels"] if labels is None else labels
    inputs = model_inputs(batch)
    out = model(**inputs) if params is None else functional_call(model, params, args=(), kwargs=inputs)
    mask = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(out.logits[mask].double(), dim=-1)
    return -log_probs.gather(1, labels[mask][:, None]).mean()


def hand_grads(model, batch, params=None):
    params = params if params is not None else {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    grads = torch.autograd.grad(hand_token_loss(model, batch, params), list(params.values()))
    return dict(zip(params, grads))


def ctx(step=0, i=0, n=1, seed=0):
    return StepContext(None, step, micro_index=i, num_micro=n, generator=torch.Generator().manual_seed(seed))


def test_batches_label_each_word_once_and_the_loss_is_huggingfaces(data):
    tok, sentences, batch = data
    assert batch["labels"].dim() == 2
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(len(s.words) for s in sentences)
    model = token_model(len(tok))
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
        assert logits.shape == (*batch["labels"].shape, NUM_TAGS)
        ours = float(cross_entropy(logits, batch["labels"]))
        assert ours == pytest.approx(float(hand_token_loss(model, batch)), rel=1e-6)
        assert ours == pytest.approx(float(model(**model_inputs(batch), labels=batch["labels"]).loss), rel=1e-6)


def test_adamw_gradient_is_the_token_loss_gradient(data):
    tok, _, batch = data
    model = token_model(len(tok))
    expected = hand_grads(model, batch)
    micro = split(batch, [3, 5])
    objective = AdamWObjective()
    for i, b in enumerate(micro):
        objective.micro_step(model, b, ctx(i=i, n=2))
    # Two micro-batches: the mean of their token means (each micro-batch's words weigh by its own count).
    reference = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for b in micro:
        for n, g in hand_grads(model, b).items():
            reference[n] += 0.5 * g
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), reference[n], rtol=1e-4, atol=1e-7)
    # and one micro-batch is the whole batch's gradient
    whole = token_model(len(tok))
    AdamWObjective().micro_step(whole, batch, ctx())
    for n, p in whole.named_parameters():
        torch.testing.assert_close(p.grad.double(), expected[n].double(), rtol=1e-4, atol=1e-7)


def _perturbed_descent(model, batch, eps):
    """∇ of the token loss at w + eps, with functional_call (the model's parameters untouched)."""
    w = {n: p.detach() for n, p in model.named_parameters()}
    return hand_grads(model, batch, {n: (w[n] + eps[n]).requires_grad_(True) for n in w})


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_and_asam_gradient_is_the_token_loss_gradient_at_the_hand_made_ascent_point(data, adaptive):
    tok, _, batch = data
    model = token_model(len(tok))
    rho, eta = (0.5, 0.01) if adaptive else (0.2, 0.0)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = hand_grads(model, batch)
    t = {n: (w[n].abs() + eta) if adaptive and is_adaptive_parameter(n) else torch.ones_like(w[n]) for n in w}
    norm = torch.sqrt(sum(((t[n].double() * g[n]) ** 2).sum() for n in w))
    eps = {n: (rho * t[n].double() ** 2 * g[n] / norm).float() for n in w}
    expected = _perturbed_descent(model, batch, eps)
    objective = ASAMObjective(ASAMConfig(rho=rho, eta=eta)) if adaptive else SAMObjective(SAMConfig(rho=rho))
    logs = objective.micro_step(model, batch, ctx())
    assert logs["objective"] > logs["loss"]  # the ascent went up the token loss
    assert logs["loss"] == pytest.approx(float(hand_token_loss(model, batch).detach()), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), expected[n].double(), rtol=1e-3, atol=1e-6)
    assert all(torch.equal(p, w[n]) for n, p in model.named_parameters())  # w restored


def test_fisher_samples_tags_only_at_labelled_words(data):
    tok, _, batch = data
    logits = token_model(len(tok))(**model_inputs(batch)).logits
    y_hat = sample_labels(logits, torch.Generator().manual_seed(3), batch["labels"])
    mask = batch["labels"] != IGNORE_INDEX
    assert torch.equal(y_hat != IGNORE_INDEX, mask)
    assert y_hat[mask].min() >= 0 and y_hat[mask].max() < NUM_TAGS
    with pytest.raises(ValueError, match="true labels"):
        sample_labels(logits)


def _fisher_value(model, params, batch, y_hat, lam, m):
    """CE(θ; y) + λ‖∇θ CE(θ; ŷ) on the first m rows‖², the token losses written out by hand."""
    with math_attention():
        ce = hand_token_loss(model, batch, params)
        leaves = {n: params[n].detach().requires_grad_(True) for n in params}
        sub = {k: v[:m] for k, v in batch.items()}
        g = torch.autograd.grad(hand_token_loss(model, sub, leaves, labels=y_hat), list(leaves.values()))
    return float(ce) + lam * float(sum((x**2).sum() for x in g))


@pytest.mark.parametrize("sub_batch", [None, 3])
def test_fisher_gradient_on_tokens_matches_finite_differences(data, sub_batch):
    tok, _, batch = data
    model = token_model(len(tok), seed=3, dtype=torch.float64)
    lam, seed = 0.7, 11
    logs = FisherObjective(FisherConfig(lam=lam, sub_batch=sub_batch)).micro_step(model, batch, ctx(seed=seed))
    assert logs["fisher_active"] == 1.0 and logs["fisher_penalty"] > 0
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    m = batch["labels"].shape[0] if sub_batch is None else sub_batch
    with torch.no_grad():
        logits = model(**{k: v[:m] for k, v in model_inputs(batch).items()}).logits
    y_hat = sample_labels(logits, torch.Generator().manual_seed(seed), batch["labels"][:m])  # the objective's draw
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert logs["objective"] == pytest.approx(_fisher_value(model, theta, batch, y_hat, lam, m), rel=1e-9)
    gen, h = torch.Generator().manual_seed(7), 1e-5
    for _ in range(2):
        v = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in theta.items()}
        norm = torch.sqrt(sum((x**2).sum() for x in v.values()))
        v = {n: x / norm for n, x in v.items()}
        plus = _fisher_value(model, {n: theta[n] + h * v[n] for n in theta}, batch, y_hat, lam, m)
        minus = _fisher_value(model, {n: theta[n] - h * v[n] for n in theta}, batch, y_hat, lam, m)
        analytic = float(sum((grads[n] * v[n]).sum() for n in theta))
        assert analytic == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-8)


def test_mvr_refuses_token_tasks_in_one_line(data):
    tok, sentences, _ = data
    with pytest.raises(XlgmError) as err:
        MVRObjective().setup(token_model(len(tok)), tok, sentences)
    assert "token tasks" in str(err.value) and "\n" not in str(err.value)
