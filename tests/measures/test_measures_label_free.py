"""Label-free measures against hand computations (measures/label_free.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from measure_models import make_bert_batches, make_tiny_bert

from xlgm.core.errors import XlgmError
from xlgm.measures import compute_measure, compute_output_measure, list_measures
from xlgm.measures.label_free import atc_threshold, linear_cka
from xlgm.recipes.evaluate import TextOutputs


def outputs_from_probs(probs, labels=None, embeddings=None, language="xx") -> TextOutputs:
    p = np.asarray(probs, dtype=np.float64)
    return TextOutputs(
        language,
        np.log(p).astype(np.float32),
        None if embeddings is None else np.asarray(embeddings, dtype=np.float32),
        None if labels is None else np.asarray(labels),
    )


def confident(c: float) -> list[float]:
    """A 3-class distribution whose largest probability is c (>= 1/3)."""
    return [c, (1 - c) / 2, (1 - c) / 2]


def test_outputs_measures_are_registered_apart_from_model_measures():
    outputs = list_measures("outputs")
    assert {
        "confidence-margin",
        "prediction-entropy",
        "atc-accuracy",
        "doc-accuracy",
        "translation-agreement",
        "checkpoint-agreement",
        "translation-gap",
        "linear-cka",
        "embedding-distance",
        "retrieval-accuracy",
    } <= set(outputs)
    assert not set(outputs) & set(list_measures("model"))
    with pytest.raises(XlgmError, match="not a measure of model outputs"):
        compute_output_measure("margin", outputs_from_probs([[0.5, 0.5]]))


def test_confidence_margin_by_hand():
    target = outputs_from_probs([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.1, 0.1, 0.8]])
    r = compute_output_measure("confidence-margin", target)
    margins = [0.5, 0.2, 0.7]
    assert r.value == pytest.approx(np.mean(margins), abs=1e-6)
    assert r.spread == pytest.approx(np.std(margins, ddof=1), abs=1e-6)
    assert r.num_samples == 3
    assert r.details["min"] == pytest.approx(0.2, abs=1e-6)


def test_prediction_entropy_by_hand():
    target = outputs_from_probs([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    r = compute_output_measure("prediction-entropy", target)
    expected = (1.5 * math.log(2) + math.log(3)) / 2
    assert r.value == pytest.approx(expected, abs=1e-6)
    assert r.details["normalized"] == pytest.approx(expected / math.log(3), abs=1e-6)


def test_atc_threshold_and_prediction_by_hand():
    # Source: confidences 0.9 0.8 0.6 0.4, the first two right -> accuracy 0.5; the threshold is 0.6 (two rows
    # strictly above it). Target confidences 0.95 0.7 0.5 0.35 0.65: three above 0.6 -> 0.6.
    source = outputs_from_probs([confident(c) for c in (0.9, 0.8, 0.6, 0.4)], labels=[0, 0, 1, 2])
    target = outputs_from_probs([confident(c) for c in (0.95, 0.7, 0.5, 0.35, 0.65)])
    r = compute_output_measure("atc-accuracy", target, source=source)
    assert r.details["threshold"] == pytest.approx(0.6, abs=1e-6)
    assert r.details["source_accuracy"] == 0.5
    assert r.value == pytest.approx(0.6)
    # On the source itself ATC returns the source accuracy (its defining property).
    assert compute_output_measure("atc-accuracy", source, source=source).value == 0.5
    assert atc_threshold(np.array([0.3, 0.2]), np.array([1.0, 1.0])) == -np.inf


def test_atc_needs_labelled_source():
    target = outputs_from_probs([confident(0.5)])
    with pytest.raises(XlgmError, match="source"):
        compute_output_measure("atc-accuracy", target)
    with pytest.raises(XlgmError, match="labelled source"):
        compute_output_measure("atc-accuracy", target, source=outputs_from_probs([confident(0.5)], labels=[-1]))


def test_doc_by_hand():
    source = outputs_from_probs([confident(c) for c in (0.9, 0.8, 0.6, 0.4)], labels=[0, 0, 1, 2])
    target = outputs_from_probs([confident(c) for c in (0.5, 0.6)])
    r = compute_output_measure("doc-accuracy", target, source=source)
    assert r.value == pytest.approx(0.5 - (0.675 - 0.55), abs=1e-6)


def test_translation_and_checkpoint_agreement_by_hand():
    def preds(labels):
        return outputs_from_probs([[0.8 if j == y else 0.1 for j in range(3)] for y in labels])

    target = preds([0, 1, 2, 2])
    r = compute_output_measure("translation-agreement", target, source=preds([0, 1, 1, 0]))
    assert r.value == 0.5 and r.num_samples == 4
    r = compute_output_measure("checkpoint-agreement", target, peers=[preds([0, 1, 2, 0]), preds([1, 1, 1, 1])])
    assert r.value == pytest.approx((0.75 + 0.25) / 2)
    assert r.details["per_peer"] == [0.75, 0.25]
    with pytest.raises(XlgmError, match="parallel"):
        compute_output_measure("translation-agreement", target, source=preds([0, 1]))
    with pytest.raises(XlgmError, match="at least one other model"):
        compute_output_measure("checkpoint-agreement", target)


def test_translation_gap_by_hand():
    source = outputs_from_probs([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    # Target predictions 1, 1, 0: row 0 moves to a class the source gives 0.3 (shift -0.3), row 1 stays
    # (0), row 2 moves to a class the source gives 0.1 (shift -0.7).
    target = outputs_from_probs([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.2, 0.3]])
    r = compute_output_measure("translation-gap", target, source=source)
    assert r.value == pytest.approx((-0.3 + 0 - 0.7) / 3, abs=1e-6)
    assert compute_output_measure("translation-gap", source, source=source).value == 0.0


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from its definition with Gram matrices and the centering matrix (Kornblith et al. 2019, Eq. 3-4)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_matches_the_gram_definition_and_its_invariances():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 4))
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert linear_cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-10)  # rotation, scale, shift
    src = TextOutputs("en", np.zeros((12, 3), np.float32), x.astype(np.float32))
    tgt = TextOutputs("de", np.zeros((12, 3), np.float32), y.astype(np.float32))
    r = compute_output_measure("linear-cka", tgt, source=src)
    assert r.value == pytest.approx(hsic_cka(x, y), rel=1e-5)


def test_embedding_distance_by_hand():
    src = TextOutputs("en", np.zeros((2, 3), np.float32), np.array([[1, 0], [3, 0]], np.float32))
    tgt = TextOutputs("de", np.zeros((3, 3), np.float32), np.array([[0, 1], [0, 3], [0, 2]], np.float32))
    r = compute_output_measure("embedding-distance", tgt, source=src)  # not parallel: 2 vs 3 rows is fine
    assert r.details["distance"] == pytest.approx(2 * math.sqrt(2), rel=1e-6)
    assert r.details["source_rms_norm"] == pytest.approx(math.sqrt(5), rel=1e-6)
    assert r.value == pytest.approx(2 * math.sqrt(2) / math.sqrt(5), rel=1e-6)
    assert r.details["cosine_distance"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(XlgmError, match="embeddings"):
        compute_output_measure("embedding-distance", TextOutputs("de", np.zeros((2, 3), np.float32)), source=src)


def test_retrieval_accuracy_by_hand():
    src = TextOutputs("en", np.zeros((3, 2), np.float32), np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    # Target row 0 is nearest to source row 0, row 1 nearest to source row 2 (a miss), row 2 to source row 2.
    tgt = TextOutputs("de", np.zeros((3, 2), np.float32), np.array([[1, 0.1], [0.8, 1], [1, 0.9]], np.float32))
    r = compute_output_measure("retrieval-accuracy", tgt, source=src, config={"center": False})
    # Source->target: source 0 -> target 0 (hit), source 1 [0,1] -> target 1 (cos .78 vs .67, hit),
    # source 2 [1,1] -> target 2 (hit).
    assert r.details["target_to_source"] == pytest.approx(2 / 3)
    assert r.details["source_to_target"] == pytest.approx(1.0)
    assert r.value == pytest.approx(5 / 6)
    identical = compute_output_measure("retrieval-accuracy", src, source=src)
    assert identical.value == 1.0


def test_text_outputs_round_trip(tmp_path):
    out = outputs_from_probs([[0.2, 0.8], [0.6, 0.4]], labels=[1, 1], embeddings=[[1.5, 2.0], [0.25, -1]])
    out.save(tmp_path / "o.npz")
    back = TextOutputs.load(tmp_path / "o.npz")
    assert back.language == "xx" and back.accuracy == 0.5
    np.testing.assert_array_equal(back.logits, out.logits)
    np.testing.assert_array_equal(back.embeddings, out.embeddings)  # exact in float16 for these values


@pytest.mark.parametrize(
    "name, base, options",
    [
        ("sharpness-diff-pseudo", "sharpness-diff", {"num_draws": 2}),
        ("sharpness-avg-pseudo", "sharpness-avg", {"num_draws": 2}),
    ],
)
def test_pseudo_label_sharpness_equals_sharpness_on_predicted_labels(name, base, options):
    model = make_tiny_bert()
    batches = make_bert_batches()
    model.eval()
    with torch.no_grad():
        predicted = [
            {**b, "labels": model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1)} for b in batches
        ]
    unlabelled = [{**b, "labels": torch.full_like(b["labels"], -1)} for b in batches]
    model.train()
    pseudo = compute_measure(name, model, unlabelled, options, seed=3)
    reference = compute_measure(base, model, predicted, options, seed=3)
    assert pseudo.value == pytest.approx(reference.value, rel=1e-6, abs=1e-9)
    assert pseudo.spread == pytest.approx(reference.spread, rel=1e-6, abs=1e-9)
    assert model.training
