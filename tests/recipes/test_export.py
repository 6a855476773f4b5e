"""`xlgm export`: a run's checkpoint as a folder transformers' Auto classes load, with the same logits."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xlgm.cli import main
from xlgm.core.files import current_umask
from xlgm.data.loading import load_examples
from xlgm.data.tasks import XNLI
from xlgm.models.load import load_classifier, load_target
from xlgm.recipes.train import TrainConfig, train
from xlgm.runs import RunDir, load_initial_into, resolve_target


@pytest.fixture(scope="module")
def tiny_run(tiny_bert_dir, tmp_path_factory):
    config = TrainConfig(
        model=str(tiny_bert_dir), epochs=1, batch_size=16, max_train_examples=48, lr=1e-3, save_every=1, seed=0
    )
    return train(config, tmp_path_factory.mktemp("run") / "run", show_progress=False)


@pytest.mark.parametrize("which", ["best", "last"])
def test_export_loads_with_auto_classes_and_gives_xlgm_logits(tiny_run, tiny_bert_dir, tmp_path, which, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(tiny_run), str(out), "--checkpoint", which]) == 0
    index = RunDir(tiny_run).index
    chosen = next(c for c in index["checkpoints"] if c["name"] == index[which])
    said = capsys.readouterr().out
    assert f"({which} checkpoint: step {chosen['step']}, held-out accuracy {chosen['dev_accuracy']:.3f})" in said
    assert "model.safetensors" in {p.name for p in out.iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(XNLI.label_names))
    assert model.config.label2id == {name: i for i, name in enumerate(XNLI.label_names)}

    reference, reference_tokenizer = load_target(
        resolve_target(str(tiny_run), which), XNLI.num_labels, XNLI.label_names
    )
    rows = load_examples(XNLI, "test", "de", max_examples=12)
    texts = ([r.text_a for r in rows], [r.text_b for r in rows])
    batch = tokenizer(*texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    reference_batch = reference_tokenizer(*texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference_batch["input_ids"])
    with torch.no_grad():
        exported = model(**batch).logits
        expected = reference(**reference_batch).logits
    torch.testing.assert_close(exported, expected, rtol=0, atol=1e-6)
    # the checkpoint's trained parameters, not the run's initial weights (base + initial head)
    initial = load_classifier(str(tiny_bert_dir), XNLI.num_labels, XNLI.label_names).eval()
    load_initial_into(initial, tiny_run)
    with torch.no_grad():
        assert not torch.allclose(initial(**reference_batch).logits, exported, atol=1e-3)


def test_evaluating_the_export_gives_the_runs_accuracy(tiny_run, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(tiny_run), str(out)]) == 0
    common = ["--languages", "en,de", "--max-examples", "24", "--mixed-precision", "no"]
    assert (
        main(
            [
                "evaluate",
                str(tiny_run),
                *common,
                "--out",
                str(tmp_path / "run.json"),
                "--db",
                str(tmp_path / "run.sqlite"),
            ]
        )
        == 0
    )
    assert (
        main(["evaluate", str(out), *common, "--out", str(tmp_path / "hf.json"), "--db", str(tmp_path / "hf.sqlite")])
        == 0
    )
    run_report = json.loads((tmp_path / "run.json").read_text())
    hf_report = json.loads((tmp_path / "hf.json").read_text())
    for lang in ("en", "de"):
        assert hf_report["languages"][lang] == run_report["languages"][lang]


def test_export_refuses_a_non_empty_folder_unless_overwrite(tiny_run, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(tiny_run), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["export", str(tiny_run), str(out), "--overwrite"]) == 0
    assert "notes.txt" not in {p.name for p in out.iterdir()} and (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]  # no staging folder left


def test_export_refuses_an_unfinished_run_unless_allow_partial(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    RunDir(run).write_state(finished=False)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did not finish" in err and "--allow-partial" in err
    assert not (tmp_path / "hf").exists()
    assert main(["export", str(run), str(tmp_path / "hf"), "--allow-partial"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_export_refuses_a_folder_inside_the_run_and_a_non_run(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), str(tiny_run / "hf")]) == 2
    assert "outside the run" in capsys.readouterr().err
    assert not (tiny_run / "hf").exists()
    (tmp_path / "plain").mkdir()
    assert main(["export", str(tmp_path / "plain"), str(tmp_path / "hf")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_an_mt5_run_exports_too(tiny_mt5_dir, tmp_path):
    config = TrainConfig(model=str(tiny_mt5_dir), epochs=1, batch_size=16, max_train_examples=32, lr=1e-3, seed=0)
    run = train(config, tmp_path / "run", show_progress=False)
    out = tmp_path / "hf"
    assert main(["export", str(run), str(out)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference, _ = load_target(resolve_target(str(run), "best"), XNLI.num_labels, XNLI.label_names)
    rows = load_examples(XNLI, "test", "en", max_examples=8)
    batch = tokenizer([r.text_a for r in rows], [r.text_b for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=1e-6)


def test_a_missing_run_is_no_such_run_folder(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such run folder" in err


def test_exported_and_checkpointed_files_follow_the_umask(tiny_run, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["export", str(tiny_run), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "hf").iterdir() if p.is_file()]
    assert any(p.name == "model.safetensors" for p in written)
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: 0o644 for p in written}
    weights = list(Path(tiny_run).glob("checkpoints/*/*.safetensors"))
    assert weights and all(p.stat().st_mode & 0o777 == 0o666 & ~current_umask() for p in weights)
