"""TextOutputs (core/types.py): the .npz round trip of sentence-pair and token outputs, and the token contract."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from xlgm.core.types import TextOutputs


def token_outputs() -> TextOutputs:
    """Five words in two sentences (3 + 2), three tags; two sentence embeddings."""
    rng = np.random.default_rng(0)
    return TextOutputs(
        "fr",
        rng.normal(size=(5, 3)).astype(np.float32),
        rng.normal(size=(2, 4)).astype(np.float32),
        np.array([0, 2, 1, 1, 0]),
        np.array([0, 0, 0, 1, 1], dtype=np.int64),
    )


def test_token_outputs_round_trip_with_their_sentences(tmp_path):
    out = token_outputs()
    out.save(tmp_path / "fr.npz")
    back = TextOutputs.load(tmp_path / "fr.npz")
    assert back.is_token_level and back.sentences is not None and back.sentences.dtype == np.int64
    np.testing.assert_array_equal(back.sentences, out.sentences)
    np.testing.assert_array_equal(back.logits, out.logits)
    np.testing.assert_array_equal(back.labels, out.labels)
    assert back.embeddings is not None and back.embeddings.shape == (2, 4)  # one a sentence, not one a word


def test_sentence_pair_outputs_round_trip_without_sentences(tmp_path):
    out = TextOutputs("de", np.eye(3, dtype=np.float32), None, np.array([0, 1, 2]))
    out.save(tmp_path / "de.npz")
    with zipfile.ZipFile(tmp_path / "de.npz") as z:
        assert "sentences.npy" not in z.namelist()  # a sentence-pair file is written as it always was
    back = TextOutputs.load(tmp_path / "de.npz")
    assert back.sentences is None and not back.is_token_level and back.accuracy == 1.0


def test_by_sentence_splits_the_words_of_each_sentence():
    out = token_outputs()
    parts = out.by_sentence(np.arange(5))
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="token outputs"):
        TextOutputs("de", np.eye(2)).by_sentence(np.arange(2))


@pytest.mark.parametrize(
    ("sentences", "message"),
    [(np.array([0, 0, 1]), "one sentence index a logits row"), (np.array([0, 1, 0, 1]), "non-decreasing")],
)
def test_sentences_that_break_the_contract_are_refused(sentences, message):
    with pytest.raises(ValueError, match=message):
        TextOutputs("fr", np.zeros((4, 3), dtype=np.float32), sentences=sentences)
