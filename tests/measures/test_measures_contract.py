"""The contract every registered measure keeps: the model comes back bitwise unchanged (also when the measure
raises), the same seed gives the same value, sampling measures report spread and sample count; plus the
registry, configs and parameter filters."""

from __future__ import annotations

import json
import math

import pytest
import torch
from measure_models import make_bert_batches, make_tiny_bert

from xlgm.core.errors import XlgmError
from xlgm.measures import compute_measure, get_measure, list_measures, preserved, select_parameters
from xlgm.measures.base import MeasureResult

# Cheap settings, so every measure runs in well under a second on the tiny model.
CHEAP = {
    "sharpness-alpha": {"search_depth": 3, "ascent_steps": 2},
    "sharpness-alpha-mag": {"search_depth": 3, "ascent_steps": 2},
    "pacbayes-flatness": {"search_depth": 3, "num_draws": 2},
    "pacbayes-flatness-mag": {"search_depth": 3, "num_draws": 2},
    "hessian-top-eig": {"max_iters": 5},
    "hessian-trace": {"num_matvecs": 3},
    "sharpness-worst": {"steps": 3},
    "sharpness-avg": {"num_draws": 3},
    "sharpness-avg-pseudo": {"num_draws": 3},
}
SAMPLING = [
    "sharpness-diff",
    "pacbayes-flatness",
    "pacbayes-flatness-mag",
    "sharpness-avg",
    "hessian-trace",
    "sharpness-diff-pseudo",
    "sharpness-avg-pseudo",
]


def _inputs(name, model):
    """What a measure declares it needs besides the model and batches."""
    if "init_state" in get_measure(name).inputs:
        return {"init_state": {k: v.clone() + 0.01 for k, v in model.state_dict().items()}}
    return {}


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


def _assert_same(model, snap):
    state, modes, flags, grads = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k], state[k]), f"{k} changed"
        assert now[k].dtype == state[k].dtype
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)


def _train_mode_model():
    model = make_tiny_bert()
    model.train()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # one frozen parameter
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 0.5)  # a stale .grad to keep
    return model


def test_registry_lists_every_measure():
    names = list_measures()
    expected = {
        "margin",
        "logit-margin",
        "sharpness-diff",
        "sharpness-alpha",
        "sharpness-alpha-mag",
        "pacbayes-flatness",
        "pacbayes-flatness-mag",
        "sharpness-avg",
        "sharpness-worst",
        "hessian-top-eig",
        "hessian-trace",
        "fisher-trace",
        "frobenius-distance",
        "spectral-norm",
    }
    assert expected <= set(names)
    assert list_measures("group") == ["parameter-variance-across-seeds"]
    for name in list_measures(None):
        spec = get_measure(name)
        assert spec.reference and spec.doc, name  # paper and equation documented
        spec.config_cls()  # defaults are valid


@pytest.mark.parametrize("name", list_measures())
def test_measure_restores_model_and_is_deterministic(name):
    model = _train_mode_model()
    batches = make_bert_batches()
    snap = _snapshot(model)
    rng = torch.get_rng_state()
    first = compute_measure(name, model, batches, config=CHEAP.get(name), seed=3, **_inputs(name, model))
    _assert_same(model, snap)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG state changed"
    second = compute_measure(name, model, batches, config=CHEAP.get(name), seed=3, **_inputs(name, model))
    assert first.value == second.value or (math.isnan(first.value) and math.isnan(second.value))
    assert first.spread == second.spread
    assert isinstance(first, MeasureResult) and first.name == name
    json.dumps(first.to_dict())  # details are plain data
    _assert_same(model, snap)


@pytest.mark.parametrize("name", list_measures())
def test_measure_restores_model_when_it_raises(name):
    """A failure injected at the measure's last forward pass (when weights are perturbed, for most)."""
    model = _train_mode_model()
    batches = make_bert_batches()
    snap = _snapshot(model)
    calls = {"n": 0, "fail_at": None}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["fail_at"] is not None and calls["n"] == calls["fail_at"]:
            raise RuntimeError("injected failure")

    handle = model.classifier.register_forward_hook(hook)
    try:
        result = compute_measure(name, model, batches, config=CHEAP.get(name), **_inputs(name, model))
        total = calls["n"]
        _assert_same(model, snap)
        if total == 0:  # a measure of the weights alone: it says so in its cost
            assert result.details["cost"]["forward_units"] == 0
            return
        calls.update(n=0, fail_at=total)
        with pytest.raises(RuntimeError, match="injected failure"):
            compute_measure(name, model, batches, config=CHEAP.get(name), **_inputs(name, model))
    finally:
        handle.remove()
    _assert_same(model, snap)


@pytest.mark.parametrize("name", list_measures())
def test_measure_restores_model_on_a_bad_batch(name):
    model = _train_mode_model()
    batches = make_bert_batches()
    cost = compute_measure(name, model, batches[:1], config=CHEAP.get(name), **_inputs(name, model)).details["cost"]
    if cost["forward_units"] == 0:
        pytest.skip("a measure of the weights alone reads no batch")
    bad = dict(batches[1])
    bad["input_ids"] = bad["input_ids"] + 1000  # out of the vocabulary: the embedding lookup fails
    snap = _snapshot(model)
    with pytest.raises((IndexError, RuntimeError)):
        compute_measure(name, model, [batches[0], bad], config=CHEAP.get(name))
    _assert_same(model, snap)


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_measures_report_spread_and_samples(name):
    result = compute_measure(name, make_tiny_bert(), make_bert_batches(), config=CHEAP.get(name))
    assert result.num_samples is not None and result.num_samples >= 2
    assert result.spread is not None and result.spread >= 0


def test_fisher_trace_estimated_reports_spread():
    result = compute_measure(
        "fisher-trace", make_tiny_bert(), make_bert_batches(), config={"method": "hutchinson", "num_matvecs": 4}
    )
    assert result.details["estimated"] is True
    assert result.num_samples == 4 and result.spread is not None


def test_different_seeds_differ_for_sampling_measure():
    model, batches = make_tiny_bert(), make_bert_batches()
    a = compute_measure("sharpness-avg", model, batches, config={"num_draws": 2}, seed=0)
    b = compute_measure("sharpness-avg", model, batches, config={"num_draws": 2}, seed=1)
    assert a.value != b.value


def test_guard_restores_rebound_data_and_buffers():
    model = make_tiny_bert()
    snap = _snapshot(model)
    weight = model.classifier.weight
    with preserved(model, seed=0) as gen:
        assert not any(m.training for m in model.modules())
        weight.data = torch.zeros_like(weight)  # rebinding .data, as some published code does
        model.bert.embeddings.position_ids.add_(1)
        torch.randn(3, generator=gen)
    assert model.classifier.weight is weight
    _assert_same(model, snap)


def test_config_validation_and_errors():
    model, batches = make_tiny_bert(), make_bert_batches()
    with pytest.raises(XlgmError, match="unknown option"):
        compute_measure("sharpness-diff", model, batches, config={"nope": 1})
    with pytest.raises(XlgmError, match="mode"):
        compute_measure("sharpness-diff", model, batches, config={"mode": "other"})
    with pytest.raises(XlgmError, match="unknown measure"):
        compute_measure("no-such-measure", model, batches)
    with pytest.raises(XlgmError, match="at least one batch"):
        compute_measure("margin", model, [])
    with pytest.raises(XlgmError, match="labelled"):
        compute_measure("margin", model, [{k: v for k, v in batches[0].items() if k != "labels"}])
    with pytest.raises(XlgmError, match="takes no input"):
        compute_measure("margin", model, batches, init_state={})
    with pytest.raises(XlgmError, match="needs the initial weights"):
        compute_measure("frobenius-distance", model, batches)
    with pytest.raises(XlgmError, match="group"):
        compute_measure("parameter-variance-across-seeds", model, batches)


def test_parameter_filters():
    model = make_tiny_bert()
    assert [n for n, _ in select_parameters(model, "classifier")] == ["classifier.weight", "classifier.bias"]
    layer = [n for n, _ in select_parameters(model, r"encoder\.layer\.1\.")]
    assert layer and all(".layer.1." in n for n in layer)
    assert len(select_parameters(model, lambda n: n.endswith("bias"))) == sum(
        n.endswith("bias") for n, _ in model.named_parameters()
    )
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    default = [n for n, _ in select_parameters(model)]
    assert "bert.embeddings.word_embeddings.weight" not in default
    assert len(default) == len(list(model.parameters())) - 1
    with pytest.raises(XlgmError, match="selects no parameter"):
        select_parameters(model, "nothing-matches")
    with pytest.raises(XlgmError, match="invalid"):
        select_parameters(model, "(")


def test_filter_restricts_what_moves():
    """With a head-only filter, sharpness perturbs only the head: the details count its parameters."""
    model, batches = make_tiny_bert(), make_bert_batches()
    result = compute_measure("sharpness-diff", model, batches, param_filter="classifier")
    assert result.details["num_parameters"] == model.classifier.weight.numel() + model.classifier.bias.numel()
    assert result.details["param_filter"] == "regex:classifier"
