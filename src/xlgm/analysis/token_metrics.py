"""Scores of token tasks, on words (each word's tag at its first subword; `xlgm.data.tagging`), with intervals.

- `token_accuracy` (UD-POS): the share of labelled words tagged right, with its Wilson score interval over
  words (`xlgm.analysis.intervals`). Words of one sentence are not independent, so the interval is somewhat
  narrower than a sentence-level one would be.
- `entity_f1` (PAN-X): entity-level micro F1, an entity counting when its span and type are both exact, as
  `seqeval` computes it (default mode, that of CoNLL's conlleval: an `I-X` after `O` or after another type
  opens an entity, as a broken span is read by every NER evaluation that follows XTREME). Entities are read
  with seqeval's own `get_entities`, sentence by sentence; the interval is the percentile bootstrap over
  sentences (`scipy.stats.bootstrap`), F1 recomputed from each resample's summed entity counts.

Inputs are per sentence: an array of predicted tag ids and one of gold tag ids, one entry per word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from seqeval.metrics.sequence_labeling import get_entities

from xlgm.analysis.frame import AnalysisInputError
from xlgm.analysis.intervals import wilson_interval
from xlgm.data.tasks import ENTITY_F1, TOKEN_ACCURACY

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class WordScore:
    """A token task's score on one language: the value, its interval and what it was computed on."""

    metric: str  # TOKEN_ACCURACY or ENTITY_F1 (the task file's `metric`)
    value: float
    low: float
    high: float
    words: int  # labelled words scored
    sentences: int
    interval: str  # how low and high were computed


def _checked(predicted: Sequence[np.ndarray], gold: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(predicted) != len(gold):
        raise AnalysisInputError(f"{len(predicted)} predicted sentences for {len(gold)} gold ones")
    pairs = [(np.asarray(p).ravel(), np.asarray(g).ravel()) for p, g in zip(predicted, gold)]
    for i, (p, g) in enumerate(pairs):
        if p.shape != g.shape:
            raise AnalysisInputError(f"sentence {i}: {p.size} predicted tags for {g.size} words")
    return pairs


def token_accuracy(predicted: Sequence[np.ndarray], gold: Sequence[np.ndarray], confidence: float = 0.95) -> WordScore:
    """The share of labelled words (gold tag >= 0) whose predicted tag is the gold one, with a Wilson interval."""
    pairs = _checked(predicted, gold)
    labelled = [(p[g >= 0], g[g >= 0]) for p, g in pairs]
    words = sum(g.size for _, g in labelled)
    if words == 0:
        raise AnalysisInputError("token_accuracy: no labelled word to score")
    correct = sum(int((p == g).sum()) for p, g in labelled)
    low, high = wilson_interval(correct, words, confidence)
    return WordScore(TOKEN_ACCURACY, correct / words, float(low), float(high), words, len(pairs), "Wilson, words")


def entity_counts(
    predicted: Sequence[np.ndarray], gold: Sequence[np.ndarray], label_names: Sequence[str]
) -> np.ndarray:
    """[sentences, 3]: each sentence's exactly matched entities, predicted entities and gold entities."""
    counts = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (p, g) in enumerate(_checked(predicted, gold)):
        if (g < 0).any() or (p < 0).any():
            raise AnalysisInputError(f"sentence {i}: entity_f1 needs a tag on every word")
        predicted_entities = set(get_entities([label_names[t] for t in p]))
        gold_entities = set(get_entities([label_names[t] for t in g]))
        counts[i] = len(predicted_entities & gold_entities), len(predicted_entities), len(gold_entities)
    return counts


def _f1(matched: np.ndarray, predicted: np.ndarray, gold: np.ndarray, axis: int = -1) -> np.ndarray:
    """Micro F1 from summed counts, 2 matched / (predicted + gold); 0 with no entity at all, as seqeval."""
    num = 2.0 * np.sum(matched, axis=axis)
    den = np.sum(predicted, axis=axis) + np.sum(gold, axis=axis)
    return np.divide(num, den, out=np.zeros(np.shape(num)), where=den > 0)


def entity_f1(
    predicted: Sequence[np.ndarray],
    gold: Sequence[np.ndarray],
    label_names: Sequence[str],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> WordScore:
    """Entity-level micro F1 (IOB2 tags named by `label_names`), with a percentile bootstrap over sentences
    (NaN bounds with fewer than 2 sentences)."""
    counts = entity_counts(predicted, gold, label_names)
    value = float(_f1(counts[:, 0], counts[:, 1], counts[:, 2]))
    low = high = float("nan")
    if len(counts) >= 2:
        result = stats.bootstrap(
            (counts[:, 0], counts[:, 1], counts[:, 2]),
            _f1,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            batch=100,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),  # `rng=` from scipy 1.15 on; this works from 1.10
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    words = sum(np.asarray(g).size for g in gold)
    interval = f"percentile bootstrap over sentences ({resamples} resamples)"
    return WordScore(ENTITY_F1, value, low, high, words, len(counts), interval)


def metric_value(
    metric: str, predicted: Sequence[np.ndarray], gold: Sequence[np.ndarray], label_names: Sequence[str]
) -> float:
    """The task file's `metric` on per-sentence word tags, without its interval (no bootstrap): what
    `score_words(...).value` is."""
    if metric == ENTITY_F1:
        counts = entity_counts(predicted, gold, label_names)
        return float(_f1(counts[:, 0], counts[:, 1], counts[:, 2]))
    return score_words(metric, predicted, gold, label_names).value


def score_words(
    metric: str,
    predicted: Sequence[np.ndarray],
    gold: Sequence[np.ndarray],
    label_names: Sequence[str],
    confidence: float = 0.95,
) -> WordScore:
    """The task file's `metric` on per-sentence word tags."""
    if metric == TOKEN_ACCURACY:
        return token_accuracy(predicted, gold, confidence)
    if metric == ENTITY_F1:
        return entity_f1(predicted, gold, label_names, confidence)
    raise AnalysisInputError(f"unknown token metric {metric!r}; expected {TOKEN_ACCURACY} or {ENTITY_F1}")
