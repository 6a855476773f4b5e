"""Sampled subword segmentations for Multi-view Subword Regularization.

A `SubwordSampler` tokenizes text the way a Hugging Face *fast* tokenizer does — the same added-token
splitting, the tokenizer's own normalizer and pre-tokenizer, the same post-processor (special tokens,
pair format, token type ids) and the same truncation (`longest_first` to `max_length`) — except that the
subword model's segmentation of each pre-tokenized word is *sampled*:

* WordPiece (mBERT): WordPiece dropout, the BPE-dropout analogue used by Wang, Ruder & Neubig (2021):
  at each position the candidate pieces are tried longest first and each is refused with probability
  `rate`, falling back to shorter ones. Unlike the MVR code, the shortest remaining candidate is never
  refused and only candidates from which the rest of the word can still be segmented are tried, so a
  word becomes [UNK] only where the deterministic tokenizer also gives [UNK].
* Unigram (XLM-R, multilingual-e5, mT5): subword regularization (Kudo, 2018) — a segmentation is drawn
  from P(x)^α / Z over *all* segmentations of the word's lattice by forward-filtering backward-sampling,
  as sentencepiece's `SampleEncode(text, nbest_size=-1, alpha)`, with the vocabulary's log-probabilities
  from the tokenizer's `tokenizer.json` (no sentencepiece `.model` needed). α = `rate`. Characters
  without a piece become the unk piece with score min_score - 10, as in `tokenizers`; consecutive unks
  are fused and byte fallback is honoured like the `tokenizers` Unigram model.

`rate = 0` turns sampling off for both kinds: the sampler then reproduces the deterministic tokenization
(WordPiece greedy longest-match; Unigram Viterbi). For Unigram, note that α is a smoothing exponent, so
small positive rates mean *more* randomness (α → 0 is uniform over segmentations), not less; α = 0.2 is
what the MVR authors' code passes to sentencepiece for XLM-R (the same `--bpe_dropout 0.2` flag that is
the WordPiece dropout rate for mBERT).

Randomness comes only from the `random.Random` passed in, so a seeded sampler is reproducible.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import torch

from xlgm.core.errors import XlgmError

UNK_PENALTY = 10.0  # tokenizers' / sentencepiece's kUnkPenalty
_CACHE_LIMIT = 200_000


def _remember(cache: dict, key: str, value: Any) -> None:
    """Store a per-word result; a full cache starts over (simple, and words repeat within a run)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


class WordPieceSampler:
    """WordPiece segmentation of one pre-tokenized word with dropout `rate` (0: deterministic)."""

    def __init__(
        self,
        vocab: dict[str, int],
        unk_token: str,
        prefix: str = "##",
        max_input_chars_per_word: int = 100,
        rate: float = 0.0,
    ):
        self.vocab = vocab
        self.unk_token = unk_token
        self.prefix = prefix
        self.max_chars = max_input_chars_per_word
        self.rate = rate
        self._cache: dict[str, list[list[tuple[int, str]]] | None] = {}

    def _candidates(self, word: str) -> list[list[tuple[int, str]]] | None:
        """Per start position, the (end, piece) matches from which the word can be completed, longest
        first; None where the deterministic greedy tokenizer gives [UNK]."""
        if word in self._cache:
            return self._cache[word]
        n = len(word)
        result: list[list[tuple[int, str]]] | None
        if n > self.max_chars:
            result = None
        else:
            matches: list[list[tuple[int, str]]] = []
            for i in range(n):
                row = []
                for j in range(n, i, -1):
                    piece = word[i:j] if i == 0 else self.prefix + word[i:j]
                    if piece in self.vocab:
                        row.append((j, piece))
                matches.append(row)
            # The deterministic tokenizer's greedy longest match must succeed, else [UNK] as it does.
            i = 0
            while i < n and matches[i]:
                i = matches[i][0][0]
            if i < n:
                result = None
            else:
                completable = [False] * (n + 1)
                completable[n] = True
                for i in range(n - 1, -1, -1):
                    completable[i] = any(completable[j] for j, _ in matches[i])
                result = [[(j, p) for j, p in row if completable[j]] for row in matches]
        _remember(self._cache, word, result)
        return result

    def segment(self, word: str, rng: random.Random) -> list[str]:
        if not word:
            return []
        cands = self._candidates(word)
        if cands is None:
            return [self.unk_token]
        pieces = []
        i, n, rate = 0, len(word), self.rate
        while i < n:
            row = cands[i]
            choice = row[-1]
            if rate <= 0.0:
                choice = row[0]
            else:
                for k in range(len(row) - 1):
                    if rng.random() >= rate:
                        choice = row[k]
                        break
            pieces.append(choice[1])
            i = choice[0]
        return pieces


class UnigramSampler:
    """Unigram-LM segmentation of one pre-tokenized word: sampled with smoothing α = `alpha`
    (forward-filtering backward-sampling over the whole lattice), or Viterbi when α = 0."""

    def __init__(
        self,
        pieces: Sequence[tuple[str, float]],
        unk_id: int | None,
        alpha: float = 0.0,
        byte_fallback: bool = False,
        fuse_unk: bool = True,
    ):
        self.scores: dict[str, float] = {}
        for piece, score in pieces:
            if piece not in self.scores:
                self.scores[piece] = float(score)
        self.max_len = max((len(p) for p, _ in pieces), default=1)
        self.min_score = min((float(s) for _, s in pieces), default=0.0)
        self.unk_score = self.min_score - UNK_PENALTY
        if unk_id is None:
            self.unk_piece = None
        else:
            self.unk_piece = pieces[unk_id][0]
        self.alpha = alpha
        self.byte_fallback = byte_fallback
        self.fuse_unk = fuse_unk
        self._cache: dict[str, tuple] = {}

    def _nodes(self, word: str) -> list[list[tuple[int, str, float, bool]]]:
        """The lattice: for each end position, the nodes (start, piece, score, is_unk) ending there."""
        n = len(word)
        ends: list[list[tuple[int, str, float, bool]]] = [[] for _ in range(n + 1)]
        scores, max_len = self.scores, self.max_len
        for i in range(n):
            has_single = False
            for j in range(i + 1, min(n, i + max_len) + 1):
                piece = word[i:j]
                score = scores.get(piece)
                if score is not None:
                    ends[j].append((i, piece, score, False))
                    if j == i + 1:
                        has_single = True
            if not has_single:
                if self.unk_piece is None:
                    raise XlgmError(
                        f"character {word[i]!r} has no piece in the Unigram vocabulary and the model has no unk"
                    )
                ends[i + 1].append((i, self.unk_piece, self.unk_score, True))
        return ends

    def _prepare(self, word: str):
        """Cached per word: for α > 0, per end position the nodes and their cumulative backward-sampling
        probabilities exp(A[start] + α·score - A[end]) (A = forward log-sums of α-scaled scores); for
        α = 0, the Viterbi segmentation itself."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ends = self._nodes(word)
        n = len(word)
        alpha = self.alpha
        if alpha > 0:
            table = [-math.inf] * (n + 1)
            table[0] = 0.0
            for j in range(1, n + 1):
                acc = -math.inf
                for i, _, score, _ in ends[j]:
                    if table[i] != -math.inf:
                        acc = _logaddexp(acc, table[i] + alpha * score)
                table[j] = acc
            result: Any = [None] * (n + 1)
            for j in range(1, n + 1):
                nodes = [node for node in ends[j] if table[node[0]] != -math.inf]
                cumulative, acc = [], 0.0
                for i, _, score, _ in nodes:
                    acc += math.exp(table[i] + alpha * score - table[j])
                    cumulative.append(acc)
                result[j] = (nodes, cumulative)
        else:
            best = [-math.inf] * (n + 1)
            best[0] = 0.0
            back: list[Any] = [None] * (n + 1)
            for j in range(1, n + 1):
                for node in ends[j]:
                    i, _, score, _ = node
                    if best[i] == -math.inf:
                        continue
                    value = best[i] + score
                    if value > best[j]:  # strict: the first best node wins, as in tokenizers' Viterbi
                        best[j] = value
                        back[j] = node
            chosen = []
            j = n
            while j > 0:
                node = back[j]
                chosen.append((node[1], node[3]))
                j = node[0]
            chosen.reverse()
            result = self._finish(word, chosen)
        _remember(self._cache, word, result)
        return result

    def segment(self, word: str, rng: random.Random) -> list[str]:
        if not word:
            return []
        prepared = self._prepare(word)
        if self.alpha <= 0:
            return list(prepared)
        chosen: list[tuple[str, bool]] = []
        j = len(word)
        while j > 0:
            nodes, cumulative = prepared[j]
            k = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
            node = nodes[min(k, len(nodes) - 1)]
            chosen.append((node[1], node[3]))
            j = node[0]
        chosen.reverse()
        return self._finish(word, chosen)

    def _finish(self, word: str, chosen: list[tuple[str, bool]]) -> list[str]:
        """Fuse consecutive unks (keeping the characters they cover), then byte fallback, as tokenizers."""
        if not any(is_unk for _, is_unk in chosen):
            return [piece for piece, _ in chosen]
        out: list[str] = []
        pos = 0
        spans: list[tuple[str, bool, str]] = []  # (piece, is_unk, covered text)
        for piece, is_unk in chosen:
            text = word[pos : pos + (1 if is_unk else len(piece))]
            pos += len(text)
            if is_unk and self.fuse_unk and spans and spans[-1][1]:
                spans[-1] = (spans[-1][0], True, spans[-1][2] + text)
            else:
                spans.append((piece, is_unk, text))
        for piece, is_unk, text in spans:
            if is_unk and self.byte_fallback:
                bytes_ = [f"<0x{b:02X}>" for b in text.encode("utf-8")]
                if all(b in self.scores for b in bytes_):
                    out.extend(bytes_)
                    continue
            out.append(piece)
        return out


class SubwordSampler:
    """Encode (text_a, text_b) pairs like `tokenizer(text_a, text_b, truncation=True, max_length=...)`
    but with a sampled segmentation of every word (see the module docstring)."""

    def __init__(self, tokenizer: Any, rate: float, max_length: int | None = None):
        from tokenizers import Tokenizer, models

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None and isinstance(tokenizer, Tokenizer):
            backend = tokenizer
        if backend is None:
            raise XlgmError(
                "MVR needs a fast (tokenizers-backed) tokenizer to sample segmentations; "
                f"got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        self.backend = backend
        self.rate = rate
        spec = json.loads(backend.to_str())
        model = spec["model"]
        kind = model.get("type")
        if kind == "WordPiece":
            self.kind = "wordpiece"
            self.segmenter: WordPieceSampler | UnigramSampler = WordPieceSampler(
                dict(model["vocab"]),
                model.get("unk_token", "[UNK]"),
                "##" if model.get("continuing_subword_prefix") is None else model["continuing_subword_prefix"],
                int(model.get("max_input_chars_per_word", 100)),
                rate,
            )
        elif kind == "Unigram":
            self.kind = "unigram"
            self.segmenter = UnigramSampler(
                [(p, s) for p, s in model["vocab"]],
                model.get("unk_id"),
                alpha=rate,
                byte_fallback=bool(model.get("byte_fallback", False)),
            )
        else:
            raise XlgmError(
                f"MVR samples segmentations for WordPiece (mBERT) and Unigram (XLM-R, e5, mT5) tokenizers; "
                f"this tokenizer's model is {kind}"
            )
        self.normalizer = backend.normalizer
        self.pre_tokenizer = backend.pre_tokenizer
        # Added tokens are split out of the raw text first, as the tokenizers library does.
        added = backend.get_added_tokens_decoder()
        self._added = {tok.content: tok for tok in added.values() if tok.content}
        contents = sorted(self._added, key=len, reverse=True)
        self._added_re = re.compile("(" + "|".join(re.escape(c) for c in contents) + ")") if contents else None
        # Post-processing and truncation: the same tokenizer (added tokens, post-processor) with a WordLevel
        # model over the same vocabulary maps our pieces to ids, then adds special tokens and truncates
        # exactly like the original. Built from the parsed spec with a stub model: parsing a 250k-piece
        # model twice would cost seconds.
        if self.kind == "wordpiece":
            vocab = dict(model["vocab"])
        else:
            vocab = {}
            for i, (piece, _) in enumerate(model["vocab"]):
                vocab.setdefault(piece, i)
        added_ids = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
        for content, token_id in added_ids.items():
            vocab.setdefault(content, token_id)
        unk = getattr(tokenizer, "unk_token", None)
        if unk is None or unk not in vocab:
            unk = next(iter(vocab))
        stub = dict(spec)
        stub.update(
            model={"type": "WordLevel", "vocab": {unk: vocab[unk]}, "unk_token": unk},
            added_tokens=[],  # our pieces are never split further; the post-processor carries its own ids
            normalizer=None,
            pre_tokenizer=None,
            decoder=None,
            truncation=None,
            padding=None,
        )
        helper = Tokenizer.from_str(json.dumps(stub))
        helper.model = models.WordLevel(vocab, unk_token=unk)
        self._helper = helper
        self._max_length: int | None = None
        self.set_max_length(max_length)

    def set_rate(self, rate: float) -> None:
        """Change the sampling rate (WordPiece dropout / Unigram α) without rebuilding the sampler."""
        self.rate = rate
        if isinstance(self.segmenter, WordPieceSampler):
            self.segmenter.rate = rate
        elif rate != self.segmenter.alpha:
            self.segmenter.alpha = rate
            self.segmenter._cache.clear()  # the lattice tables depend on α

    def set_max_length(self, max_length: int | None) -> None:
        if max_length == self._max_length:
            return
        if max_length is None:
            self._helper.no_truncation()
        else:
            self._helper.enable_truncation(int(max_length), strategy="longest_first")
        self._max_length = max_length

    @property
    def max_length(self) -> int | None:
        return self._max_length

    def words(self, text: str) -> list[tuple[str, bool]]:
        """The pre-tokenized words of `text` (normalized), with a flag for added tokens kept whole."""
        out: list[tuple[str, bool]] = []
        segments = self._added_re.split(text) if self._added_re is not None else [text]
        for k, segment in enumerate(segments):
            if not segment:
                continue
            if k % 2 == 1:  # an added token
                out.append((segment, True))
                continue
            tok_before = self._added.get(segments[k - 1]) if k > 0 else None
            tok_after = self._added.get(segments[k + 1]) if k + 1 < len(segments) else None
            if tok_before is not None and tok_before.rstrip:
                segment = segment.lstrip()
            if tok_after is not None and tok_after.lstrip:
                segment = segment.rstrip()
            if not segment:
                continue
            normalized = self.normalizer.normalize_str(segment) if self.normalizer is not None else segment
            if self.pre_tokenizer is not None:
                words = [w for w, _ in self.pre_tokenizer.pre_tokenize_str(normalized)]
            else:
                words = [normalized]
            out.extend((w, False) for w in words if w)
        return out

    def pieces(self, text: str, rng: random.Random) -> list[str]:
        pieces: list[str] = []
        for word, is_added in self.words(text):
            if is_added:
                pieces.append(word)
            else:
                pieces.extend(self.segmenter.segment(word, rng))
        return pieces

    def encode(self, pairs: Sequence[tuple[str, str | None]], rng: random.Random) -> list[tuple[list[int], list[int]]]:
        """(input_ids, token_type_ids) for each (text_a, text_b); text_b None or "" means a single text."""
        inputs: list[Any] = []
        for a, b in pairs:
            pa = self.pieces(a, rng)
            if b:
                inputs.append((pa, self.pieces(b, rng)))
            else:
                inputs.append(pa)
        encode = getattr(self._helper, "encode_batch_fast", None) or self._helper.encode_batch  # no offsets
        encodings = encode(inputs, is_pretokenized=True, add_special_tokens=True)
        return [(e.ids, e.type_ids) for e in encodings]

    def collate(
        self,
        encoded: Sequence[tuple[list[int], list[int]]],
        *,
        pad_id: int,
        device: torch.device | str | None = None,
        token_type_ids: bool = True,
        padding_side: str = "right",
    ) -> dict[str, torch.Tensor]:
        """Pad dynamically to the longest sequence -> input_ids, attention_mask[, token_type_ids]."""
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        types = torch.zeros((len(encoded), width), dtype=torch.long)
        for r, (ids, tt) in enumerate(encoded):
            n = len(ids)
            sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
            input_ids[r, sl] = torch.tensor(ids, dtype=torch.long)
            attention[r, sl] = 1
            types[r, sl] = torch.tensor(tt, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention}
        if token_type_ids:
            out["token_type_ids"] = types
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out
