"""Margins, distances and norms against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from measure_models import TableModel, make_bert_batches, make_tiny_bert

from xlgm.core.errors import XlgmError
from xlgm.measures import compute_group_measure, compute_measure, parameter_variance_across_seeds

LOGITS = torch.tensor(
    [
        [2.0, 0.5, -1.0],
        [0.1, 0.3, 0.2],
        [-1.0, 3.0, 0.0],
        [1.0, 1.0, 0.0],
        [0.0, -2.0, 2.5],
        [0.3, 0.2, 0.1],
        [4.0, 0.0, 1.0],
        [0.0, 0.0, 0.0],
        [1.5, 2.0, -0.5],
        [-0.2, 0.4, 0.9],
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 1, 1, 0, 2, 2, 0, 1, 1, 2])


def _table_batches():
    rows = torch.arange(len(LABELS))
    return [{"row": rows[:4], "labels": LABELS[:4]}, {"row": rows[4:], "labels": LABELS[4:]}]


def _hand_margins(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = []
    for v, y in zip(values, labels):
        others = [v[j] for j in range(len(v)) if j != y]
        out.append(v[y] - max(others))
    return np.array(out)


def test_probability_margin_matches_hand_computation():
    logits, labels = LOGITS.numpy(), LABELS.numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = _hand_margins(probs, labels)
    result = compute_measure("margin", TableModel(LOGITS), _table_batches())
    assert result.value == pytest.approx(m.mean(), abs=1e-12)
    assert result.details["min"] == pytest.approx(m.min(), abs=1e-12)
    assert result.details["std"] == pytest.approx(m.std(ddof=1), abs=1e-12)
    assert result.spread is None and result.num_samples is None


def test_logit_margin_matches_hand_computation():
    shifted = LOGITS.clone()
    shifted[torch.arange(len(LABELS)), LABELS] += 3.0  # all correct, so the 10th percentile is positive
    m = _hand_margins(shifted.numpy(), LABELS.numpy())
    gamma = np.percentile(m, 10)
    result = compute_measure("logit-margin", TableModel(shifted), _table_batches())
    assert result.details["gamma"] == pytest.approx(gamma, abs=1e-12)
    assert result.value == pytest.approx(1 / gamma**2, rel=1e-12)
    # With many errors the 10th percentile is negative: 1/γ² is reported as inf, γ kept.
    bad = compute_measure("logit-margin", TableModel(LOGITS), _table_batches())
    assert bad.details["gamma"] < 0 and bad.value == float("inf")


def test_frobenius_distance_untouched_is_zero_and_matches_hand_sum():
    model = make_tiny_bert()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    batches = make_bert_batches()
    assert compute_measure("frobenius-distance", model, batches, init_state=init).value == 0.0
    moved = {k: v.clone() for k, v in init.items()}
    moved["classifier.weight"] += 0.5
    moved["bert.encoder.layer.0.output.dense.bias"] -= 2.0
    result = compute_measure("frobenius-distance", model, batches, init_state=moved)
    expected = 0.25 * model.classifier.weight.numel() + 4.0 * model.bert.encoder.layer[0].output.dense.bias.numel()
    assert result.value == pytest.approx(expected, rel=1e-6)  # the shifts are rounded in float32
    assert result.details["per_layer"]["classifier"] == pytest.approx(0.25 * model.classifier.weight.numel())
    head = compute_measure("frobenius-distance", model, batches, param_filter="classifier", init_state=moved)
    assert head.value == pytest.approx(0.25 * model.classifier.weight.numel())


def test_frobenius_distance_from_file(tmp_path):
    from safetensors.torch import save_file

    model = make_tiny_bert()
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    result = compute_measure("frobenius-distance", model, make_bert_batches(), config={"init_state_path": str(path)})
    assert result.value == 0.0
    with pytest.raises(XlgmError, match="lacks"):
        compute_measure("frobenius-distance", model, make_bert_batches(), init_state={"classifier.weight": 0})


def test_spectral_norm_matches_numpy():
    model = make_tiny_bert()
    result = compute_measure("spectral-norm", model, make_bert_batches())
    matrices = {n: p.detach().numpy() for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n}
    norms = {n: np.linalg.svd(w, compute_uv=False)[0] for n, w in matrices.items()}
    assert set(result.details["per_layer"]) == set(norms)
    for n, v in norms.items():
        assert result.details["per_layer"][n] == pytest.approx(v, rel=1e-6)
    assert result.value == pytest.approx(sum(np.log(v) for v in norms.values()), rel=1e-6)
    assert result.details["sum"] == pytest.approx(sum(norms.values()), rel=1e-6)
    summed = compute_measure("spectral-norm", model, make_bert_batches(), config={"aggregate": "sum"})
    assert summed.value == pytest.approx(sum(norms.values()), rel=1e-6)


def test_parameter_variance_across_seeds():
    states = [make_tiny_bert(seed=s).state_dict() for s in (0, 1, 2)]
    result = parameter_variance_across_seeds(states)
    keys = [k for k, v in states[0].items() if v.is_floating_point()]
    stacked = [torch.stack([sd[k].double() for sd in states]) for k in keys]
    total = sum(float(t.var(dim=0, unbiased=True).sum()) for t in stacked)
    count = sum(t[0].numel() for t in stacked)
    assert result.value == pytest.approx(total / count, rel=1e-10)
    assert result.num_samples == 3 and result.details["num_elements"] == count
    same = compute_group_measure("parameter-variance-across-seeds", [states[0], states[0]], param_filter="classifier")
    assert same.value == 0.0
    with pytest.raises(XlgmError, match="at least 2"):
        parameter_variance_across_seeds(states[:1])
