"""The types every layer passes around: a row of text, a batch of tensors, a model's outputs on a language."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# What a task's model outputs: one label per sentence pair, or one tag per word (a task file's `output`).
CLASSIFICATION = "classification"
TOKENS = "tokens"

# A batch: `input_ids`, `attention_mask`, optionally `token_type_ids`, `labels` (long) and `idx` (long, the
# row's index in its data set), each with the batch on dimension 0.
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Example:
    """One labelled (or unlabelled, label=-1) sentence pair."""

    text_a: str
    text_b: str
    label: int


@dataclass(frozen=True)
class TextOutputs:
    """One model's outputs on one language's text, in the original row order.

    A sentence-pair task has one row a sentence pair: logits [n, num_labels] (float32); labels [n] (-1 where
    unknown); embeddings [m, hidden] (float32, m <= n, the first m rows): the mean over non-padding tokens of the
    encoder's hidden states at `layer` (None when not asked for); `sentences` is None.

    A token task (`sentences` set, `is_token_level`) has one row a labelled word, the words of each sentence in
    order and the sentences in file order: logits [n_words, num_labels] are the logits at the word's first
    subword; labels [n_words] its gold tag; sentences [n_words] (int64, non-decreasing) the index of the word's
    sentence; embeddings [m, hidden] one mean-pooled embedding per sentence (the first m sentences), so they do
    not have one row per logits row. `predictions` and `accuracy` are then per word.
    """

    language: str
    logits: np.ndarray
    embeddings: np.ndarray | None = None
    labels: np.ndarray | None = None
    sentences: np.ndarray | None = None

    def __post_init__(self) -> None:
        s = self.sentences
        if s is None:
            return
        if s.ndim != 1 or len(s) != len(self.logits):
            raise ValueError(
                f"sentences has shape {s.shape}; expected one sentence index a logits row ({len(self.logits)})"
            )
        if (np.diff(s) < 0).any():
            raise ValueError("sentences must be non-decreasing: the words of a sentence are consecutive rows")

    @property
    def is_token_level(self) -> bool:
        """Whether each row is a word of a token task (see the class docstring)."""
        return self.sentences is not None

    def by_sentence(self, values: np.ndarray) -> list[np.ndarray]:
        """Per-row `values` split into one array a sentence (token outputs only)."""
        if self.sentences is None:
            raise ValueError("by_sentence needs token outputs (sentences set)")
        return np.split(values, np.flatnonzero(np.diff(self.sentences)) + 1)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(-1)

    @property
    def probabilities(self) -> np.ndarray:
        z = self.logits - self.logits.max(-1, keepdims=True)
        e = np.exp(z.astype(np.float64))
        return e / e.sum(-1, keepdims=True)

    @property
    def accuracy(self) -> float | None:
        if self.labels is None or len(self.labels) == 0 or (self.labels < 0).any():
            return None
        return float((self.predictions == self.labels).mean())

    def save(self, path: Path) -> None:
        """An .npz file (no pickle); written atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"logits": self.logits}
        if self.embeddings is not None:
            arrays["embeddings"] = self.embeddings.astype(np.float16)  # ample for distances, half the disk
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.sentences is not None:
            arrays["sentences"] = self.sentences.astype(np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        # numpy's stubs type **kwds like the allow_pickle keyword; these are arrays saved under their names.
        np.savez_compressed(tmp, language=np.array(self.language), **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TextOutputs:
        with np.load(path, allow_pickle=False) as z:
            emb = z["embeddings"].astype(np.float32) if "embeddings" in z else None
            labels = z["labels"] if "labels" in z else None
            sentences = z["sentences"] if "sentences" in z else None  # absent from sentence-pair files
            return cls(str(z["language"]), z["logits"], emb, labels, sentences)


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence of a token task: its words, as the data splits them, and each word's tag id (-1 where
    unknown)."""

    words: tuple[str, ...]
    tags: tuple[int, ...]
