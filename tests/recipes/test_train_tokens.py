"""Token tasks through `xlgm train`, `xlgm evaluate` and `xlgm export`, on a tiny random BERT and the bundled
UD-POS and PAN-X subsets, and `xlgm measure` on a token run."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from token_testlib import word_margins
from xlgm.analysis.token_metrics import score_words
from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.data.loading import load_tagged_sentences
from xlgm.data.splits import sentence_holdout
from xlgm.data.tagging import tokenize_tagged, word_outputs
from xlgm.data.tasks import PANX, UDPOS
from xlgm.models.load import load_target
from xlgm.recipes.tokens import predict_row_logits, predict_rows, token_outputs, token_score
from xlgm.recipes.train import HOLDOUT_SEED, TrainConfig, train
from xlgm.runs import RunDir, resolve_target


def _config(model_dir, task: str, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), task=task, epochs=1, batch_size=16, max_train_examples=80, lr=3e-3)
    base.update(save_every=2, log_every=1, seed=0, mixed_precision="no")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def udpos_run(tiny_bert_dir, tmp_path_factory):
    return train(_config(tiny_bert_dir, "udpos"), tmp_path_factory.mktemp("udpos") / "run", show_progress=False)


@pytest.fixture(scope="module")
def panx_run(tiny_bert_dir, tmp_path_factory):
    return train(_config(tiny_bert_dir, "panx"), tmp_path_factory.mktemp("panx") / "run", show_progress=False)


def test_token_tasks_train_on_english_train_and_select_on_a_held_out_part():
    for task in ("udpos", "panx"):
        config = TrainConfig(task=task)
        assert (config.train_split, config.select_split) == ("train", "train")
    assert (TrainConfig(task="xnli").train_split, TrainConfig(task="xnli").select_split) == ("dev", "dev")
    assert TrainConfig(task="xnli").run_id == TrainConfig(task="xnli", train_split="dev", select_split="dev").run_id
    # a token task's bundled train split is its own: selecting on English dev is fine
    assert TrainConfig(task="udpos", select_split="dev").select_split == "dev"
    with pytest.raises(XlgmError, match="select-split dev"):
        TrainConfig(task="xnli", train_split="train")


def test_sentence_holdout_keeps_repeated_sentences_together():
    sentences = load_tagged_sentences(UDPOS, "train", "en", max_sentences=200)
    sentences = sentences + sentences[:5]  # five sentences twice
    train_part, held = sentence_holdout(sentences, 0.1, HOLDOUT_SEED)
    assert len(train_part) + len(held) == len(sentences)
    assert 20 <= len(held) <= 25
    assert not {s.words for s in train_part} & {s.words for s in held}
    assert sentence_holdout(sentences, 0.1, HOLDOUT_SEED) == (train_part, held)


def test_udpos_run_records_its_alignment_and_selects_on_token_accuracy(udpos_run, tiny_bert_dir):
    run = RunDir(udpos_run)
    config = run.config
    assert (config["num_train"], config["num_select"]) == (72, 8)
    assert config["selection_metric"] == "token_accuracy"
    alignment = config["alignment"]
    assert alignment["sentences"] == 72 and alignment["rows"] >= 72
    assert alignment["words"] == sum(len(s.words) for s in load_tagged_sentences(UDPOS, "train", "en")[:80]) - sum(
        len(s.words) for s in sentence_holdout(load_tagged_sentences(UDPOS, "train", "en")[:80], 0.1, HOLDOUT_SEED)[1]
    )
    # The schedule counts model rows (long sentences split into windows), not sentences.
    steps = -(-alignment["rows"] // 16)
    assert [c["step"] for c in run.index["checkpoints"]] == [*range(2, steps, 2), steps]
    log = [json.loads(line) for line in (udpos_run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and all(np.isfinite(losses))
    # The recorded held-out score is the task's metric of the checkpoint on the held-out sentences.
    held = sentence_holdout(load_tagged_sentences(UDPOS, "train", "en")[:80], 0.1, HOLDOUT_SEED)[1]
    model, tokenizer = load_target(resolve_target(str(udpos_run), "last"), UDPOS.num_labels, output=UDPOS.output)
    last = run.index["checkpoints"][-1]
    assert last["dev_accuracy"] == pytest.approx(token_score(model, tokenizer, UDPOS, held).value, abs=1e-12)


def test_row_logits_are_each_rows_own_forward_and_words_get_one_prediction(udpos_run):
    model, tokenizer = load_target(resolve_target(str(udpos_run)), UDPOS.num_labels, output=UDPOS.output)
    sentences = load_tagged_sentences(UDPOS, "test", "fr", max_sentences=12)
    data = tokenize_tagged(tokenizer, sentences, max_length=16)  # short rows: some sentences split
    assert data.counts.split_sentences > 0
    rows = predict_row_logits(model, tokenizer, data, batch_size=5)
    for r in (0, len(data) - 1):
        ids = {k: torch.tensor([v]) for k, v in data.features[r].items()}
        with torch.no_grad():
            alone = model(**ids).logits[0].numpy()
        np.testing.assert_allclose(rows[r], alone, rtol=0, atol=1e-5)
    words = word_outputs(data, rows)
    assert [len(w) for w in words] == [len(s.words) for s in sentences]


def test_token_outputs_are_per_word_and_embeddings_per_sentence_over_all_its_rows(udpos_run):
    model, tokenizer = load_target(resolve_target(str(udpos_run)), UDPOS.num_labels, output=UDPOS.output)
    sentences = load_tagged_sentences(UDPOS, "test", "fr", max_sentences=12)
    data = tokenize_tagged(tokenizer, sentences, max_length=16)
    rows, pooled = predict_rows(model, tokenizer, data, batch_size=5, layer=-1)
    outputs = token_outputs("fr", sentences, data, rows, pooled)
    words = [len(s.words) for s in sentences]
    assert outputs.logits.shape == (sum(words), UDPOS.num_labels)
    np.testing.assert_array_equal(outputs.sentences, np.repeat(np.arange(len(sentences)), words))
    np.testing.assert_array_equal(outputs.labels, np.concatenate([s.tags for s in sentences]))
    np.testing.assert_array_equal(outputs.logits, np.concatenate(word_outputs(data, rows)))
    # A sentence split into windows: the mean of the hidden states over every token of its rows.
    split = next(i for i in range(len(sentences)) if data.sentence.count(i) > 1)
    states = []
    for r in [r for r, s in enumerate(data.sentence) if s == split]:
        ids = {k: torch.tensor([v]) for k, v in data.features[r].items()}
        with torch.no_grad():
            states.append(model(**ids, output_hidden_states=True).hidden_states[-1][0])
    expected = torch.cat(states).mean(0).numpy()
    assert outputs.embeddings is not None and outputs.embeddings.shape == (len(sentences), expected.shape[0])
    np.testing.assert_allclose(outputs.embeddings[split], expected, rtol=0, atol=1e-5)


def test_cli_evaluate_udpos_prints_token_accuracy_with_wilson_intervals(udpos_run, capsys):
    args = [
        "evaluate",
        str(udpos_run),
        "--task",
        "udpos",
        "--languages",
        "en,fr,ja",
        "--max-examples",
        "20",
        "--mixed-precision",
        "no",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "token_accuracy" in out and "Wilson" in out
    report = json.loads((udpos_run / "eval-test.json").read_text())
    assert report["metric"] == "token_accuracy" and report["split"] == "test"
    model, tokenizer = load_target(resolve_target(str(udpos_run)), UDPOS.num_labels, output=UDPOS.output)
    for lang in ("en", "fr", "ja"):
        r = report["languages"][lang]
        sentences = load_tagged_sentences(UDPOS, "test", lang, max_sentences=20)
        expected = token_score(model, tokenizer, UDPOS, sentences)
        assert r["accuracy"] == pytest.approx(expected.value, abs=1e-12)
        assert (r["low"], r["high"]) == pytest.approx((expected.low, expected.high))
        assert r["low"] <= r["accuracy"] <= r["high"]
        assert r["num_examples"] == 20 and r["words"] == sum(len(s.words) for s in sentences)
        assert f"{lang:<6}{r['accuracy']:15.3f}" in out
    with sqlite3.connect(udpos_run / "results.sqlite") as db:
        stored = dict(db.execute("SELECT language, accuracy FROM evaluations WHERE task='udpos' AND split='test'"))
    assert stored == {lang: report["languages"][lang]["accuracy"] for lang in ("en", "fr", "ja")}


def test_cli_evaluate_prints_alignment_when_words_were_split(udpos_run, capsys):
    args = ["evaluate", str(udpos_run), "--languages", "en", "--max-examples", "10", "--max-length", "12"]
    assert main(args + ["--out", str(udpos_run.parent / "short.json")]) == 0
    out = capsys.readouterr().out
    assert "alignment en:" in out and "split into windows" in out


def test_cli_evaluate_panx_prints_entity_f1_with_a_bootstrap_on_dev(panx_run, capsys):
    assert RunDir(panx_run).config["selection_metric"] == "entity_f1"
    assert (
        main(["evaluate", str(panx_run), "--languages", "en,de", "--max-examples", "30", "--mixed-precision", "no"])
        == 0
    )
    out = capsys.readouterr().out
    assert "entity_f1" in out and "bootstrap over sentences" in out
    report = json.loads((panx_run / "eval-dev.json").read_text())  # PAN-X's evaluation split
    assert report["metric"] == "entity_f1" and report["split"] == "dev"
    model, tokenizer = load_target(resolve_target(str(panx_run)), PANX.num_labels, output=PANX.output)
    sentences = load_tagged_sentences(PANX, "dev", "de", max_sentences=30)
    data = tokenize_tagged(tokenizer, sentences)
    predicted = [w.argmax(-1) for w in word_outputs(data, predict_row_logits(model, tokenizer, data))]
    expected = score_words("entity_f1", predicted, [np.array(s.tags) for s in sentences], PANX.label_names)
    r = report["languages"]["de"]
    assert (r["accuracy"], r["low"], r["high"]) == pytest.approx((expected.value, expected.low, expected.high))


def test_export_of_a_token_run_loads_as_token_classifier_with_the_same_logits(udpos_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(udpos_run), str(out)]) == 0
    assert "held-out token_accuracy" in capsys.readouterr().out
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(UDPOS.label_names))
    reference, _ = load_target(resolve_target(str(udpos_run)), UDPOS.num_labels, UDPOS.label_names, output="tokens")
    sentences = load_tagged_sentences(UDPOS, "test", "de" if "de" in UDPOS.languages else "fr", max_sentences=6)
    batch = tokenizer([list(s.words) for s in sentences], is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        exported, expected = model(**batch).logits, reference(**batch).logits
    assert exported.shape == (*batch["input_ids"].shape, UDPOS.num_labels)
    torch.testing.assert_close(exported, expected, rtol=0, atol=1e-6)


def test_mvr_refuses_a_token_task_before_writing_the_run(tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(XlgmError, match="mvr does not train token tasks"):
        train(_config(tiny_bert_dir, "udpos", objective="mvr"), out, show_progress=False)
    assert not (out / "config.json").exists()


def test_measure_of_a_token_run_is_over_the_labelled_words(udpos_run, tmp_path):
    """`xlgm measure` on a token run: the margin is the mean over the dev words of their first subword's
    probability margin, computed here from the model's row logits."""
    out = tmp_path / "m.json"
    args = ["measure", str(udpos_run), "--checkpoint", "best", "--measures", "margin,sharpness-diff,frobenius-distance"]
    assert main([*args, "--max-examples", "12", "--mixed-precision", "no", "--out", str(out)]) == 0
    records = {r["name"]: r for r in json.loads(out.read_text())}
    model, tokenizer = load_target(resolve_target(str(udpos_run)), UDPOS.num_labels, UDPOS.label_names, output="tokens")
    sentences = load_tagged_sentences(UDPOS, "dev", "en", max_sentences=12)
    margins = word_margins(model, tokenizer, sentences, 128)
    assert records["margin"]["value"] == pytest.approx(float(margins.mean()), abs=1e-5)
    assert records["margin"]["details"]["num_examples"] == len(margins) == sum(len(s.words) for s in sentences)
    assert np.isfinite(records["sharpness-diff"]["value"]) and records["sharpness-diff"]["spread"] is not None
    assert records["frobenius-distance"]["value"] > 0  # the token head's initial weights were found
