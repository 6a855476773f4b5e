"""Label-free measures on token outputs (one row a word, one embedding a sentence) against hand computations, and
the refusals of the measures that need parallel text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xlgm.core.errors import XlgmError
from xlgm.core.types import TextOutputs
from xlgm.measures import compute_output_measure


def words(probs, sentences, labels=None, embeddings=None, language="xx") -> TextOutputs:
    """Token outputs: word i has probabilities probs[i] and belongs to sentence sentences[i]."""
    return TextOutputs(
        language,
        np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32),
        None if embeddings is None else np.asarray(embeddings, dtype=np.float32),
        None if labels is None else np.asarray(labels),
        np.asarray(sentences, dtype=np.int64),
    )


def confident(c: float) -> list[float]:
    return [c, (1 - c) / 2, (1 - c) / 2]


def one_hot(tags) -> list[list[float]]:
    return [[0.8 if j == t else 0.1 for j in range(3)] for t in tags]


def sentence_spread(per_sentence) -> float:
    return float(np.std(per_sentence, ddof=1))


def test_confidence_margin_is_over_words_and_its_spread_over_sentences():
    target = words([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.1, 0.1, 0.8]], [0, 0, 1])
    r = compute_output_measure("confidence-margin", target)
    # margins 0.5, 0.2 (sentence 0) and 0.7 (sentence 1)
    assert r.value == pytest.approx((0.5 + 0.2 + 0.7) / 3, abs=1e-6)
    assert r.num_samples == 2
    assert r.spread == pytest.approx(sentence_spread([0.35, 0.7]), abs=1e-6)


def test_prediction_entropy_over_words():
    half = [0.5, 0.25, 0.25]
    target = words([half, [1 / 3] * 3, half], [4, 7, 7])  # sentence indices need only be non-decreasing
    r = compute_output_measure("prediction-entropy", target)
    h_half, h_flat = 1.5 * math.log(2), math.log(3)
    assert r.value == pytest.approx((2 * h_half + h_flat) / 3, abs=1e-6)
    assert r.spread == pytest.approx(sentence_spread([h_half, (h_half + h_flat) / 2]), abs=1e-6)
    assert r.num_samples == 2


def source_words() -> TextOutputs:
    """English words with confidences 0.9 0.8 0.6 0.4, the first two tagged right: word accuracy 0.5."""
    return words([confident(c) for c in (0.9, 0.8, 0.6, 0.4)], [0, 0, 1, 2], labels=[0, 0, 1, 2])


def test_atc_reads_word_accuracy_and_thresholds_words():
    # The threshold is 0.6 (two of the four source words strictly above it = the source word accuracy); target
    # words 0.95 0.7 | 0.5 0.35 | 0.65: three of five above it.
    target = words([confident(c) for c in (0.95, 0.7, 0.5, 0.35, 0.65)], [0, 0, 1, 1, 2])
    r = compute_output_measure("atc-accuracy", target, source=source_words())
    assert r.details["threshold"] == pytest.approx(0.6, abs=1e-6)
    assert r.details["source_accuracy"] == 0.5
    assert r.value == pytest.approx(0.6)
    assert r.num_samples == 3 and r.spread == pytest.approx(sentence_spread([1.0, 0.0, 1.0]))


def test_doc_reads_word_accuracy_and_word_confidences():
    target = words([confident(c) for c in (0.95, 0.7, 0.5, 0.35, 0.65)], [0, 0, 1, 1, 2])
    r = compute_output_measure("doc-accuracy", target, source=source_words())
    # 0.5 - (mean source confidence 0.675 - mean target confidence 0.63)
    assert r.value == pytest.approx(0.5 - (0.675 - 0.63), abs=1e-6)
    assert r.spread == pytest.approx(sentence_spread([0.825, 0.425, 0.65]), abs=1e-6)


def test_checkpoint_agreement_over_words():
    target = words(one_hot([0, 1, 2, 2]), [0, 0, 1, 1])
    peers = [words(one_hot([0, 1, 2, 0]), [0, 0, 1, 1]), words(one_hot([1, 1, 1, 1]), [0, 0, 1, 1])]
    r = compute_output_measure("checkpoint-agreement", target, peers=peers)
    assert r.details["per_peer"] == [0.75, 0.25] and r.value == pytest.approx(0.5)
    assert r.num_samples == 2  # the spread is over peers, as for sentence pairs


def test_embedding_distance_on_sentence_embeddings():
    # five source words in two sentences, three target words in one: embeddings have a row a sentence
    src = words(one_hot([0, 1, 2, 0, 1]), [0, 0, 0, 1, 1], embeddings=[[1, 0], [3, 0]])
    tgt = words(one_hot([0, 1, 2]), [0, 0, 0], embeddings=[[0, 2]])
    r = compute_output_measure("embedding-distance", tgt, source=src)
    assert r.details["distance"] == pytest.approx(2 * math.sqrt(2), rel=1e-6)
    assert r.value == pytest.approx(2 * math.sqrt(2) / math.sqrt(5), rel=1e-6)


def test_token_values_equal_the_same_rows_read_as_sentence_pairs():
    """The formulas are the same; only the unit of the spread changes."""
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=9)
    tokens = words(probs, [0, 0, 0, 1, 1, 2, 2, 2, 2], labels=rng.integers(0, 4, 9))
    pairs = TextOutputs("xx", tokens.logits, None, tokens.labels)
    for name in ("confidence-margin", "prediction-entropy", "atc-accuracy", "doc-accuracy"):
        a = compute_output_measure(name, tokens, source=tokens)
        b = compute_output_measure(name, pairs, source=pairs)
        assert a.value == b.value and (a.num_samples, b.num_samples) == (3, 9), name


@pytest.mark.parametrize("name", ["translation-agreement", "translation-gap", "linear-cka", "retrieval-accuracy"])
def test_parallel_measures_refuse_token_outputs(name):
    tokens = words(one_hot([0, 1, 2]), [0, 0, 1], embeddings=[[1, 0], [0, 1]])
    pairs = TextOutputs("en", tokens.logits, np.ones((3, 2), np.float32))
    for target, source in ((tokens, tokens), (tokens, pairs), (pairs, tokens)):
        with pytest.raises(XlgmError, match=f"^{name} needs parallel text .* token data is not parallel") as err:
            compute_output_measure(name, target, source=source)
        assert "\n" not in str(err.value)
