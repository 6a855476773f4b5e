"""Tags on words, not subwords: tokenize pre-split words and label the first subword of each word.

A token task's data are words, each with a tag (`TaggedSentence`). A model sees subwords, so each word's tag
sits on its first subword; the word's other subwords, the special tokens and the padding get
`IGNORE_INDEX`, which keeps them out of the loss (`torch.nn.functional.cross_entropy` ignores -100 by
default), the metric and every measure. Every word gets exactly one labelled position:

- a sentence whose subwords do not fit `max_length` is split into windows of whole words, each its own
  model row (`<s> window </s>`), as XTREME's own preprocessing splits long sentences; no word is dropped;
- a word longer than a whole window by itself keeps its first `max_length - specials` subwords (its first
  subword still carries its tag) and loses the rest;
- a word the tokenizer turns into no subword at all (e.g. a lone zero-width character) is read as the
  unknown token, so it still has a position to carry its tag.

All three are counted (`AlignmentCounts`), so a caller can report them. The word-to-subword map comes from
the fast tokenizer's `word_ids` with `is_split_into_words=True`; words are tokenized one by one (a word's
subwords do not depend on its neighbours, with WordPiece or with SentencePiece's Metaspace), which is
checked: a window whose words do not each come back labelled once is a bug, and raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from xlgm.core.errors import XlgmError
from xlgm.core.types import TaggedSentence

IGNORE_INDEX = -100  # the label of a position that is not a word's first subword (torch's ignore_index)
NO_WORD = -1  # the word index of such a position


@dataclass(frozen=True)
class AlignmentCounts:
    """What tokenizing a set of tagged sentences did to their words."""

    sentences: int
    words: int
    rows: int  # model rows: one per sentence, more where a sentence was split into windows
    split_sentences: int  # sentences longer than max_length, split into windows of whole words
    cut_words: int  # words longer than a whole window by themselves, cut to their first subwords
    cut_subwords: int  # the subwords those cuts dropped
    empty_words: int  # words the tokenizer gave no subword, read as the unknown token

    def describe(self) -> str:
        """One line for logs and reports."""
        return (
            f"{self.words} words in {self.sentences} sentences -> {self.rows} rows: {self.split_sentences} "
            f"sentence(s) split into windows, {self.cut_words} word(s) cut ({self.cut_subwords} subwords dropped), "
            f"{self.empty_words} word(s) with no subword read as the unknown token; every word labelled once"
        )


@dataclass
class TaggedTokenizedSet:
    """Tagged sentences tokenized once into model rows, unpadded.

    features[r]: the row's `input_ids`, `attention_mask` (and `token_type_ids` where the tokenizer gives them);
    labels[r][p]: the tag of the word whose first subword is position p, `IGNORE_INDEX` elsewhere (and where
    the word's tag is unknown, -1);
    word_index[r][p]: that word's index in its sentence, `NO_WORD` elsewhere (set where labels are unknown too);
    sentence[r]: the index of the sentence row r comes from; rows of one sentence are consecutive, in order.
    """

    features: list[dict[str, list[int]]]
    labels: list[list[int]]
    word_index: list[list[int]]
    sentence: list[int]
    counts: AlignmentCounts

    def __len__(self) -> int:
        return len(self.features)

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def _word_pieces(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[TaggedSentence]) -> list[list[int]]:
    """The number of subwords of each word of each sentence (no special tokens, no truncation)."""
    if not tokenizer.is_fast:
        raise XlgmError(f"token tasks need a fast tokenizer (word_ids); {type(tokenizer).__name__} is not one")
    # verbose=False: a sentence longer than the model is no news here (it is split into windows next)
    words = [list(s.words) for s in sentences]
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    pieces = []
    for i, s in enumerate(sentences):
        counts = [0] * len(s.words)
        for w in enc.word_ids(i):
            if w is not None:
                counts[w] += 1
        pieces.append(counts)
    return pieces


def _windows(pieces: list[int], budget: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) whose subwords fit `budget` each, greedily; a word longer than `budget` is a
    window of its own."""
    windows, start, used = [], 0, 0
    for w, n in enumerate(pieces):
        if used and used + n > budget:
            windows.append((start, w))
            start, used = w, 0
        used += n
    windows.append((start, len(pieces)))
    return windows


def tokenize_tagged(
    tokenizer: PreTrainedTokenizerBase, sentences: Sequence[TaggedSentence], max_length: int = 128
) -> TaggedTokenizedSet:
    """Tokenize tagged sentences into rows of at most `max_length` tokens, each word's tag on its first subword
    (see the module docstring); every word of every sentence is labelled exactly once."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise XlgmError(f"max_length {max_length} leaves no room for a word beside the special tokens")
    if not sentences:
        return TaggedTokenizedSet([], [], [], [], AlignmentCounts(0, 0, 0, 0, 0, 0, 0))
    pieces = _word_pieces(tokenizer, sentences)
    if any(0 in counts for counts in pieces) and tokenizer.unk_token is None:
        raise XlgmError("a word has no subword and the tokenizer has no unknown token to stand for it")
    plan: list[tuple[int, int, int]] = []  # (sentence, start, end)
    windows_words: list[list[str]] = []
    split = cut = cut_subwords = empty = 0
    for i, (s, counts) in enumerate(zip(sentences, pieces)):
        words = [w if n else str(tokenizer.unk_token) for w, n in zip(s.words, counts)]
        empty += sum(1 for n in counts if n == 0)
        counts = [max(n, 1) for n in counts]
        cut += sum(1 for n in counts if n > budget)
        cut_subwords += sum(n - budget for n in counts if n > budget)
        windows = _windows(counts, budget)
        split += len(windows) > 1
        for start, end in windows:
            plan.append((i, start, end))
            windows_words.append(words[start:end])
    enc = tokenizer(windows_words, is_split_into_words=True, truncation=True, max_length=max_length)
    keys = list(enc.keys())
    features, labels, word_index = [], [], []
    for r, (i, start, end) in enumerate(plan):
        row_labels, row_words, seen = [], [], set()
        for w in enc.word_ids(r):
            first = w is not None and w not in seen
            if first:
                seen.add(w)
            tag = sentences[i].tags[start + w] if first else IGNORE_INDEX
            row_labels.append(tag if tag >= 0 else IGNORE_INDEX)
            row_words.append(start + w if first else NO_WORD)
        if len(seen) != end - start:
            raise RuntimeError(f"sentence {i}: words {start}..{end - 1} came back with {len(seen)} labelled positions")
        features.append({k: enc[k][r] for k in keys})
        labels.append(row_labels)
        word_index.append(row_words)
    counts_all = AlignmentCounts(
        sentences=len(sentences),
        words=sum(len(s.words) for s in sentences),
        rows=len(plan),
        split_sentences=split,
        cut_words=cut,
        cut_subwords=cut_subwords,
        empty_words=empty,
    )
    return TaggedTokenizedSet(features, labels, word_index, [i for i, _, _ in plan], counts_all)


class TaggedBatchCollator:
    """Index lists -> padded tensor batches: the model inputs, `labels` [batch, length] (`IGNORE_INDEX` on
    every position that is not a word's first subword, padding included) and `idx` (the row in the set)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, data: TaggedTokenizedSet, pad_to_multiple_of: int | None = None
    ):
        self.data = data
        self.left = tokenizer.padding_side == "left"
        getattr(tokenizer, "deprecation_warnings", {})["Asking-to-pad-a-fast-tokenizer"] = True
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = dict(self.pad([self.data.features[i] for i in indices]))
        length = batch["input_ids"].shape[1]
        rows = []
        for i in indices:
            fill = [IGNORE_INDEX] * (length - len(self.data.labels[i]))
            rows.append(fill + self.data.labels[i] if self.left else self.data.labels[i] + fill)
        batch["labels"] = torch.tensor(rows, dtype=torch.long)
        batch["idx"] = torch.tensor(list(indices), dtype=torch.long)
        return batch


def word_outputs(data: TaggedTokenizedSet, row_outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-position outputs of each row (e.g. logits [length, num_labels], unpadded, in row order) -> per
    sentence, the outputs at its words' first subwords, in word order: [words, ...] each."""
    if len(row_outputs) != len(data):
        raise ValueError(f"{len(row_outputs)} rows of outputs for {len(data)} rows")
    per_sentence: list[list[np.ndarray]] = [[] for _ in range(data.counts.sentences)]
    for r, out in enumerate(row_outputs):
        positions = [p for p, w in enumerate(data.word_index[r]) if w != NO_WORD]
        per_sentence[data.sentence[r]].append(np.asarray(out)[positions])
    return [np.concatenate(parts) for parts in per_sentence]
