"""Token-task scores: entity F1 equal to seqeval's, broken spans included; token accuracy with its Wilson
interval; the bootstrap over sentences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from seqeval.metrics import f1_score

from xlgm.analysis.frame import AnalysisInputError
from xlgm.analysis.token_metrics import entity_counts, entity_f1, metric_value, score_words, token_accuracy
from xlgm.data.tasks import PANX

NAMES = PANX.label_names  # O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC

# gold, predicted: IOB2 sentences, broken spans included
FIXED = [
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),  # all right
    (["B-PER", "I-PER", "O"], ["I-PER", "I-PER", "O"]),  # I- without B-: opens the same span
    (["O", "B-ORG", "I-ORG", "I-ORG"], ["O", "B-ORG", "I-ORG", "O"]),  # span too short
    (
        ["B-LOC", "O", "O"],
        ["I-LOC", "I-ORG", "O"],
    ),  # I- at the start opens (and matches) a span; I- of another type opens a new one
    (["B-PER", "B-PER", "O"], ["B-PER", "I-PER", "O"]),  # two entities read as one
    (["O", "O", "O"], ["O", "I-LOC", "I-LOC"]),  # an entity where there is none, at the end
    (["B-ORG", "I-ORG", "I-ORG"], ["B-ORG", "I-LOC", "I-ORG"]),  # a type switch inside a span
    (["I-PER", "O", "B-LOC", "I-LOC"], ["B-PER", "O", "B-LOC", "I-LOC"]),  # broken gold span
]


def ids(tags: list[str]) -> np.ndarray:
    return np.array([NAMES.index(t) for t in tags])


def test_entity_f1_equals_seqeval_on_fixed_sequences():
    gold = [g for g, _ in FIXED]
    predicted = [p for _, p in FIXED]
    score = entity_f1([ids(p) for p in predicted], [ids(g) for g in gold], NAMES)
    assert score.value == pytest.approx(f1_score(gold, predicted), abs=1e-12)
    assert 0 < score.value < 1 and score.sentences == len(FIXED) and score.words == sum(map(len, gold))
    # and sentence by sentence
    for g, p in FIXED:
        one = entity_f1([ids(p)], [ids(g)], NAMES)
        assert one.value == pytest.approx(f1_score([g], [p], zero_division=0), abs=1e-12)
        assert np.isnan(one.low) and np.isnan(one.high)  # one sentence: no interval


def test_counts_of_broken_spans():
    counts = entity_counts([ids(p) for _, p in FIXED], [ids(g) for g, _ in FIXED], NAMES)
    # matched, predicted, gold
    assert counts.tolist() == [[2, 2, 2], [1, 1, 1], [0, 1, 1], [1, 2, 1], [0, 1, 2], [0, 1, 0], [0, 3, 1], [2, 2, 2]]


@pytest.mark.parametrize("seed", range(20))
def test_entity_f1_equals_seqeval_on_random_sequences(seed):
    rng = np.random.default_rng(seed)
    gold = [rng.integers(0, len(NAMES), rng.integers(1, 12)) for _ in range(30)]
    predicted = [np.where(rng.random(g.size) < 0.6, g, rng.integers(0, len(NAMES), g.size)) for g in gold]
    expected = f1_score([[NAMES[t] for t in g] for g in gold], [[NAMES[t] for t in p] for p in predicted])
    assert entity_f1(predicted, gold, NAMES, resamples=50).value == pytest.approx(expected, abs=1e-12)


def test_no_entity_anywhere_is_zero_as_seqeval():
    gold = [ids(["O", "O"])]
    assert entity_f1(gold, gold, NAMES).value == 0.0 == f1_score([["O", "O"]], [["O", "O"]], zero_division=0)


def test_bootstrap_interval_over_sentences():
    rng = np.random.default_rng(1)
    gold = [rng.integers(0, len(NAMES), 8) for _ in range(200)]
    predicted = [np.where(rng.random(8) < 0.8, g, 0) for g in gold]
    a = entity_f1(predicted, gold, NAMES, seed=3)
    b = entity_f1(predicted, gold, NAMES, seed=3)
    assert (a.low, a.high) == (b.low, b.high)  # seeded
    assert 0 <= a.low < a.value < a.high <= 1 and a.high - a.low < 0.2
    assert "bootstrap over sentences" in a.interval
    # resampling sentences, not words: the same entity counts in one long sentence give no spread to compute
    counts = entity_counts(predicted, gold, NAMES)
    boots = []
    draw = np.random.default_rng(0)
    for _ in range(300):
        pick = counts[draw.integers(0, len(counts), len(counts))].sum(0)
        boots.append(2 * pick[0] / (pick[1] + pick[2]))
    assert a.low == pytest.approx(np.percentile(boots, 2.5), abs=0.03)
    assert a.high == pytest.approx(np.percentile(boots, 97.5), abs=0.03)


def test_token_accuracy_counts_labelled_words_with_a_wilson_interval():
    gold = [np.array([1, 2, 3, -1]), np.array([4, 4])]
    predicted = [np.array([1, 2, 0, 9]), np.array([4, 5])]
    score = token_accuracy(predicted, gold)
    assert (score.value, score.words, score.sentences) == (3 / 5, 5, 2)
    ci = stats.binomtest(3, 5).proportion_ci(method="wilson")
    assert (score.low, score.high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert score_words("token_accuracy", predicted, gold, NAMES) == score


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(AnalysisInputError, match="2 predicted sentences for 1 gold ones"):
        token_accuracy([np.array([1]), np.array([1])], [np.array([1])])
    with pytest.raises(AnalysisInputError, match="sentence 0: 2 predicted tags for 1 words"):
        token_accuracy([np.array([1, 2])], [np.array([1])])
    with pytest.raises(AnalysisInputError, match="no labelled word"):
        token_accuracy([np.array([1])], [np.array([-1])])
    with pytest.raises(AnalysisInputError, match="entity_f1 needs a tag on every word"):
        entity_f1([np.array([0])], [np.array([-1])], NAMES)
    with pytest.raises(AnalysisInputError, match="unknown token metric 'f1'"):
        score_words("f1", [], [], NAMES)


def test_metric_value_is_the_scores_value_without_an_interval():
    gold = [ids(g) for g, _ in FIXED]
    predicted = [ids(p) for _, p in FIXED]
    for metric in ("entity_f1", "token_accuracy"):
        expected = score_words(metric, predicted, gold, NAMES).value
        assert metric_value(metric, predicted, gold, NAMES) == expected and 0 < expected < 1
