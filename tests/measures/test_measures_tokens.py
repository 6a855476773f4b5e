"""Measures on a token task: the examples are the labelled words (each word's first subword; labels -100
elsewhere), so every measure of a token model must equal the same measure of a sentence-level model that sees
each labelled word as a row of its own.

The check is exact: `PositionwiseTagger` computes each position's logits from that position's token alone, so
the token model on sentences and the sentence model on the words one by one have the same parameters, the same
per-example logits and losses, and the same random draws (noise is drawn in the parameters' shapes). Any
difference is the token path's fault: a padded or unlabelled position counted, a mean over sentences instead of
words, a row count where a word count belongs.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_measures_contract import CHEAP, _assert_same, _inputs, _snapshot
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

from token_testlib import tiny_bert_tagger
from xlgm.core.errors import XlgmError
from xlgm.data.tagging import IGNORE_INDEX
from xlgm.measures import compute_measure, get_measure, list_measures
from xlgm.measures.loss import num_examples, total_examples

NUM_TAGS = 4
VOCAB = 30


class PositionwiseTagger(nn.Module):
    """logits[b, t] = head(tanh(proj(emb[ids[b, t]]))): each position's logits depend on its own token only.
    `sentence_level`: inputs are [N, 1] and the logits [N, C] (a sequence classifier of one-token rows)."""

    def __init__(self, sentence_level: bool, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, 6).double()
        self.proj = nn.Linear(6, 5).double()
        self.head = nn.Linear(5, NUM_TAGS).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        self.sentence_level = sentence_level

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.head(torch.tanh(self.proj(self.emb(input_ids))))
        return TokenClassifierOutput(logits=logits[:, 0] if self.sentence_level else logits)


def token_batches(seed: int = 0, sizes=(3, 2), lengths=(9, 6)) -> list[dict[str, torch.Tensor]]:
    """Sentences with padding (label -100, mask 0), special and continuation subwords (-100) and tagged first
    subwords."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for size, length in zip(sizes, lengths):
        ids = torch.randint(1, VOCAB, (size, length), generator=gen)
        mask = torch.ones(size, length, dtype=torch.long)
        labels = torch.randint(0, NUM_TAGS, (size, length), generator=gen)
        labels[:, 0] = IGNORE_INDEX  # [CLS]
        labels[torch.rand(size, length, generator=gen) < 0.3] = IGNORE_INDEX  # continuation subwords
        for row in range(1, size, 2):  # shorter rows, padded
            cut = length - 2
            ids[row, cut:], mask[row, cut:], labels[row, cut:] = 0, 0, IGNORE_INDEX
        labels[:, 1] = torch.randint(0, NUM_TAGS, (size,), generator=gen)  # every row has a word
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def as_word_rows(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Each token batch's labelled words as one-token rows of a batch of its own (row-major order)."""
    out = []
    for batch in batches:
        keep = batch["labels"] != IGNORE_INDEX
        ids = batch["input_ids"][keep][:, None]
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": batch["labels"][keep]})
    return out


def _config(name: str) -> dict:
    """The contract tests' cheap settings; the ascent gradient on every example, as subsampling draws rows
    (sentences in one model, words in the other)."""
    config = dict(CHEAP.get(name, {}))
    if any(f.name == "ascent_fraction" for f in dataclasses.fields(get_measure(name).config_cls)):
        config["ascent_fraction"] = 1.0
    return config


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_the_examples_of_a_token_batch_are_its_labelled_words():
    batches = token_batches()
    words = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    assert total_examples(batches) == words == total_examples(as_word_rows(batches))
    assert num_examples(batches[0]) < batches[0]["labels"].numel()


@pytest.mark.parametrize("name", list_measures())
def test_a_token_measure_equals_the_measure_over_words(name):
    tagger, words_model = PositionwiseTagger(sentence_level=False), PositionwiseTagger(sentence_level=True)
    batches = token_batches()
    on_tokens = compute_measure(name, tagger, batches, _config(name), seed=5, **_inputs(name, tagger))
    on_words = compute_measure(name, words_model, as_word_rows(batches), _config(name), seed=5, **_inputs(name, tagger))
    assert _same(on_tokens.value, on_words.value), (on_tokens.value, on_words.value)
    assert _same(on_tokens.spread, on_words.spread)
    assert on_tokens.num_samples == on_words.num_samples
    assert on_tokens.details["num_examples"] == on_words.details["num_examples"] == total_examples(batches)


@pytest.mark.parametrize("fisher", ["true", "empirical"])
@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_token_fisher_trace_equals_the_fisher_trace_over_words(fisher, method):
    """Both Fisher paths: per-word gradients (exact) and the Fisher-vector product of the operator."""
    config = {"fisher": fisher, "method": method, "num_matvecs": 4}
    batches = token_batches()
    on_tokens = compute_measure("fisher-trace", PositionwiseTagger(False), batches, config, seed=1)
    on_words = compute_measure("fisher-trace", PositionwiseTagger(True), as_word_rows(batches), config, seed=1)
    assert on_tokens.value == pytest.approx(on_words.value, rel=1e-9)
    assert _same(on_tokens.spread, on_words.spread)


def test_token_margin_by_hand():
    """Two sentences, three labelled words: the margins of the words alone, by hand."""

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))
            self.table = torch.tensor(
                [
                    [[9.0, 9.0], [2.0, 0.0], [0.0, 1.0]],  # position 0 unlabelled: its logits must not count
                    [[5.0, 0.0], [0.0, 3.0], [7.0, 7.0]],  # position 2 is padding
                ],
                dtype=torch.float64,
            )

        def forward(self, input_ids, attention_mask=None):
            return TokenClassifierOutput(logits=self.table * self.scale)

    labels = torch.tensor([[IGNORE_INDEX, 0, 1], [1, 1, IGNORE_INDEX]])
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": labels}
    logit_margins = [2.0, 1.0, -5.0, 3.0]  # the labelled words in row-major order: true logit minus the other
    words = [2 * torch.sigmoid(torch.tensor(d, dtype=torch.float64)) - 1 for d in logit_margins]  # p_y - p_other
    result = compute_measure("margin", Fixed(), [batch])
    assert result.value == pytest.approx(float(sum(words) / 4), abs=1e-12)
    assert result.details["num_examples"] == 4
    logit = compute_measure("logit-margin", Fixed(), [batch], {"percentile": 0})
    assert logit.details["min_logit_margin"] == pytest.approx(-5.0)  # the word labelled 1 with logits [5, 0]


def test_a_token_batch_without_a_labelled_word_is_refused():
    batch = token_batches()[0]
    batch = {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}
    with pytest.raises(XlgmError, match="no labelled word"):
        compute_measure("margin", PositionwiseTagger(False), [batch])


def _tiny_bert_tagger():
    """Dropout 0.2: a measure that forgot eval mode would give another value each call."""
    return tiny_bert_tagger(VOCAB, NUM_TAGS, dropout=0.2, positions=32)


@pytest.mark.parametrize("name", list_measures())
def test_token_measure_restores_a_bert_tagger_and_is_deterministic(name):
    model, batches = _tiny_bert_tagger(), token_batches(seed=1)
    snap = _snapshot(model)
    first = compute_measure(name, model, batches, CHEAP.get(name), seed=2, **_inputs(name, model))
    _assert_same(model, snap)
    second = compute_measure(name, model, batches, CHEAP.get(name), seed=2, **_inputs(name, model))
    assert _same(first.value, second.value) and first.spread == second.spread
    _assert_same(model, snap)
