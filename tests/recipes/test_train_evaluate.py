"""The training loop and zero-shot evaluation, end to end on tiny random models."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

from xlgm.cli import main
from xlgm.data.batching import bucketed_shuffled_batches, length_sorted_batches, tokenize_examples
from xlgm.data.loading import load_examples
from xlgm.data.tasks import XNLI
from xlgm.models.load import load_classifier, load_target
from xlgm.recipes.evaluate import evaluate_languages, predict_logits
from xlgm.recipes.train import TrainConfig, train
from xlgm.runs import RunDir, resolve_target


def _config(model_dir, **kw) -> TrainConfig:
    base = dict(
        model=str(model_dir),
        task="xnli",
        epochs=1,
        batch_size=16,
        max_train_examples=160,
        lr=1e-3,
        save_every=4,
        log_every=2,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_batches_cover_every_example_once():
    lengths = list(np.random.default_rng(0).integers(5, 100, size=203))
    for batches in (length_sorted_batches(lengths, 16), bucketed_shuffled_batches(lengths, 16, seed=3)):
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(203))
    sorted_batches = length_sorted_batches(lengths, 16)
    assert lengths[sorted_batches[0][0]] == max(lengths)
    assert bucketed_shuffled_batches(lengths, 16, 3) == bucketed_shuffled_batches(lengths, 16, 3)
    assert bucketed_shuffled_batches(lengths, 16, 3) != bucketed_shuffled_batches(lengths, 16, 4)


def test_train_writes_run_directory_and_reloads_exactly(tiny_bert_dir, tmp_path):
    config = _config(tiny_bert_dir)
    run_dir = train(config, tmp_path / "run", show_progress=False)
    run = RunDir(run_dir)
    assert run.config["run_id"] == config.run_id
    index = run.index
    steps = [c["step"] for c in index["checkpoints"]]
    assert steps == [4, 8, 9]  # every 4 steps, plus the last (144 rows / 16 = 9 steps)
    assert index["last"] == "step-000009" and index["best"] in {c["name"] for c in index["checkpoints"]}
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log) and any("dev_accuracy" in r for r in log)
    # The checkpoint reloads to the same predictions the trained model had.
    target = resolve_target(str(run_dir), "last")
    model, tokenizer = load_target(target, XNLI.num_labels)
    assert not model.training
    data = tokenize_examples(tokenizer, load_examples(XNLI, "test", "de", max_examples=32))
    logits = predict_logits(model, tokenizer, data)
    model2, _ = load_target(target, XNLI.num_labels)
    np.testing.assert_array_equal(logits, predict_logits(model2, tokenizer, data))
    # and training moved the weights away from the recorded initial state
    init = load_classifier(str(tiny_bert_dir), 3)
    from xlgm.runs import load_initial_into

    load_initial_into(init, run_dir)
    init_state, trained_state = init.state_dict(), model.state_dict()
    assert not torch.equal(init_state["classifier.weight"], trained_state["classifier.weight"])
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 3


def test_initial_head_is_recorded_exactly(tiny_bert_dir, tmp_path):
    config = _config(tiny_bert_dir, max_train_examples=32, save_every=0, seed=7)
    run_dir = train(config, tmp_path / "run", show_progress=False)
    torch.manual_seed(7)
    from accelerate.utils import set_seed

    set_seed(7)
    fresh = load_classifier(str(tiny_bert_dir), 3)
    rebuilt = load_classifier(str(tiny_bert_dir), 3)
    from xlgm.runs import load_initial_into

    load_initial_into(rebuilt, run_dir)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k]), k


def test_same_seed_same_weights(tiny_bert_dir, tmp_path):
    config = _config(tiny_bert_dir, max_train_examples=48, save_every=0)
    a = train(config, tmp_path / "a", show_progress=False)
    b = train(config, tmp_path / "b", show_progress=False)
    from safetensors.torch import load_file

    wa = load_file(str(a / "checkpoints" / "step-000003" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step-000003" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gradient_accumulation_matches_big_batch(tiny_bert_dir, tmp_path, monkeypatch):
    """2 micro-batches of 8 = one batch of 16 for plain AdamW, given the same examples in the same order (in
    fp32: `auto` precision is bf16 on a CPU with native bf16)."""
    from transformers import BertConfig

    import xlgm.recipes.train as train_module

    def in_order(lengths, batch_size, seed, pool_batches=50):
        return [list(range(i, min(i + batch_size, len(lengths)))) for i in range(0, len(lengths), batch_size)]

    monkeypatch.setattr(train_module, "bucketed_shuffled_batches", in_order)
    no_dropout = tmp_path / "tiny-no-dropout"
    cfg = BertConfig.from_pretrained(tiny_bert_dir)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    import shutil

    shutil.copytree(tiny_bert_dir, no_dropout)
    cfg.save_pretrained(no_dropout)
    big = train(
        _config(
            no_dropout, max_train_examples=48, save_every=0, batch_size=16, holdout_fraction=0, mixed_precision="no"
        ),
        tmp_path / "big",
        show_progress=False,
    )
    small = train(
        _config(
            no_dropout,
            max_train_examples=48,
            save_every=0,
            batch_size=8,
            grad_accum=2,
            holdout_fraction=0,
            mixed_precision="no",
        ),
        tmp_path / "small",
        show_progress=False,
    )
    from safetensors.torch import load_file

    wa = load_file(str(big / "checkpoints" / "step-000003" / "model.safetensors"))
    wb = load_file(str(small / "checkpoints" / "step-000003" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    init = load_classifier(str(no_dropout), 3)
    assert not torch.allclose(init.state_dict()["bert.pooler.dense.weight"], wa["bert.pooler.dense.weight"])


def test_freeze_word_embeddings(tiny_bert_dir, tmp_path):
    run_dir = train(
        _config(tiny_bert_dir, max_train_examples=32, save_every=0, freeze="word"), tmp_path / "r", show_progress=False
    )
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "checkpoints" / "step-000002" / "model.safetensors"))
    assert "bert.embeddings.word_embeddings.weight" not in saved
    assert "bert.embeddings.position_embeddings.weight" in saved


def test_evaluate_every_language(tiny_bert_dir, tmp_path):
    run_dir = train(_config(tiny_bert_dir, max_train_examples=32, save_every=0), tmp_path / "r", show_progress=False)
    model, tokenizer = load_target(resolve_target(str(run_dir)), 3)
    report = evaluate_languages(model, tokenizer, XNLI, XNLI.languages, max_examples=20, show_progress=False)
    assert set(report["languages"]) == set(XNLI.languages)
    assert all(0 <= r["accuracy"] <= 1 and r["num_examples"] == 20 for r in report["languages"].values())
    assert set(report["gap_to_source"]) == set(XNLI.target_languages)
    mean = np.mean([report["languages"][t]["accuracy"] for t in XNLI.target_languages])
    assert report["target_mean_accuracy"] == pytest.approx(mean)


def test_mt5_trains_and_evaluates(tiny_mt5_dir, tmp_path):
    run_dir = train(_config(tiny_mt5_dir, max_train_examples=32, save_every=0), tmp_path / "r", show_progress=False)
    model, tokenizer = load_target(resolve_target(str(run_dir)), 3)
    assert type(model).__name__ == "MT5ForSequenceClassification"
    report = evaluate_languages(model, tokenizer, XNLI, ["en", "de"], max_examples=16, show_progress=False)
    assert report["languages"]["de"]["num_examples"] == 16


def test_cli_train_and_evaluate(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_bert_dir),
                "--max-train-examples",
                "32",
                "--batch-size",
                "16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert main(["evaluate", str(out), "--languages", "en,de,sw", "--max-examples", "24"]) == 0
    report = json.loads((out / "eval-test.json").read_text())
    assert set(report["languages"]) == {"en", "de", "sw"}
    # which machine made the numbers: in the report and beside the rows, as the run records its training's
    assert report["machine"]["precision"] == report["precision"] and report["machine"]["cpu"]
    trained_on = json.loads((out / "state.json").read_text())["machines"][0]["machine"]
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 3
        records = db.execute("SELECT DISTINCT m.record FROM evaluations JOIN machines AS m USING (machine_id)")
        assert [json.loads(r) for (r,) in records] == [report["machine"]]
        [(run_machine,)] = db.execute("SELECT m.record FROM runs JOIN machines AS m USING (machine_id)")
        assert json.loads(run_machine) == trained_on
    # Run again: the same rows are replaced, not duplicated.
    assert main(["evaluate", str(out), "--languages", "en,de,sw", "--max-examples", "24"]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 3


def test_cli_malformed_tsv_is_one_line(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for lang in XNLI.languages:
        (data / f"test-{lang}.tsv").write_text("a\tb\tentailment\n")
    (data / "test-de.tsv").write_text("a\tb\tentailment\nbroken line without tabs\n")
    code = main(["evaluate", str(tiny_bert_dir), "--data-dir", str(data)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"{data / 'test-de.tsv'}:2" in err and "3 tab-separated columns" in err


def test_cli_unknown_language(tiny_bert_dir, capsys):
    assert main(["evaluate", str(tiny_bert_dir), "--languages", "en,klingon"]) == 2
    assert "klingon" in capsys.readouterr().err
