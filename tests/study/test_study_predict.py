"""`xlgm predict`: label-free measures from a study's kept outputs, the cross-validated predictor, new text."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from study_testlib import one_thread, write_spec

from xlgm.cli import main as xlgm_main
from xlgm.recipes.evaluate import TextOutputs
from xlgm.study.predict import label_free_measures, predict_study, write_predictions
from xlgm.study.spec import load_spec

PREDICT_SPEC = """\
name: tiny-predict
task: xnli
model: {model}
target_languages: [de, fr, es]
train: {{epochs: 1, batch_size: 8, max_train_examples: 32, lr: 1.0e-3, log_every: 1}}
grid:
  - objective: adamw
  - {{objective: sam, rho: 0.05}}
seeds: [0]
checkpoints: {{every: 2}}
evaluation: {{max_examples: 12, batch_size: 12}}
measures: {{names: [margin], data: {{max_examples: 8, batch_size: 8}}}}
analysis: {{n_boot: 20}}
prediction: {{embedding_rows: 8}}
"""
RUNS, CHECKPOINTS, TARGETS = 2, 2, 3


@pytest.fixture(scope="module")
def predict_study_dir(tiny_bert_dir, tmp_path_factory):
    from xlgm.study.runner import run_study

    spec_path = write_spec(tmp_path_factory.mktemp("pspec"), tiny_bert_dir, PREDICT_SPEC)
    out = tmp_path_factory.mktemp("pstudy") / "out"
    with one_thread():
        run_study(load_spec(spec_path), out, show_progress=False)
    return out


def test_the_study_keeps_each_evaluations_outputs(predict_study_dir):
    files = sorted(predict_study_dir.glob("runs/*/outputs/*/*.npz"))
    assert len(files) == RUNS * CHECKPOINTS * (TARGETS + 1)
    out = TextOutputs.load(files[0])
    assert out.logits.shape == (12, 3) and out.embeddings.shape == (8, 32)  # tiny BERT: hidden size 32
    with sqlite3.connect(predict_study_dir / "study.sqlite") as db:
        accuracy = dict(
            db.execute(
                "SELECT language, accuracy FROM evaluations WHERE checkpoint_id LIKE ?", (f"%{files[0].parent.name}",)
            ).fetchall()
        )
    assert out.accuracy == pytest.approx(accuracy[out.language])  # the kept logits are the evaluated ones


def test_predict_writes_cross_validated_errors_and_measures(predict_study_dir, capsys):
    assert xlgm_main(["predict", str(predict_study_dir)]) == 0
    printed = capsys.readouterr().out
    assert all(s in printed for s in ("leave-one-language-out", "leave-one-run-out", "leave-one-configuration-out"))
    folder = predict_study_dir / "prediction"
    cv = pd.read_csv(folder / "cv.csv")
    lolo = cv[cv.scheme == "leave-one-language-out"]
    assert len(lolo) == RUNS * CHECKPOINTS * TARGETS and lolo["predicted"].between(0, 1).all()
    assert np.allclose(lolo["error_source"], (lolo["baseline_source"] - lolo["accuracy"]).abs())
    summary = json.loads((folder / "summary.json").read_text())
    m = summary["schemes"]["leave-one-language-out"]["mae"]
    assert m["predicted"] == pytest.approx(lolo["error"].mean())
    assert m["same_as_source"] == pytest.approx(lolo["error_source"].mean())
    assert {"disagreement", "atc-gap", "linear-cka", "retrieval-accuracy", "checkpoint-agreement"} <= set(
        summary["features"]
    )
    with sqlite3.connect(predict_study_dir / "study.sqlite") as db:
        stored = db.execute(
            "SELECT COUNT(*) FROM measures WHERE data='sw-test-text' OR data='de-test-text'"
        ).fetchone()[0]
    assert stored >= RUNS * CHECKPOINTS * 10  # ten measures per checkpoint for de
    versus = pd.read_csv(folder / "baselines.csv")
    assert set(versus.loc[versus.uses_own_target_labels, "baseline"]) == {"other_languages"}
    assert "language_gap" in set(versus.loc[versus.scheme == "leave-one-run-out", "baseline"])


def test_predictions_are_rewritten_from_the_label_free_table_alone(predict_study_dir, tmp_path):
    """The kept outputs are only needed for the label-free table: its csv, read back, gives the same tables."""
    predict_study(load_spec(predict_study_dir / "spec.yaml"), predict_study_dir, echo=False, show_progress=False)
    shutil.copy(predict_study_dir / "spec.yaml", tmp_path / "spec.yaml")
    written = predict_study_dir / "prediction"
    write_predictions(load_spec(tmp_path / "spec.yaml"), pd.read_csv(written / "label_free.csv"), tmp_path, False)
    for name in ("label_free", "cv", "baselines"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "prediction" / f"{name}.csv"), pd.read_csv(written / f"{name}.csv"), obj=name
        )


def test_label_free_measures_ignore_target_labels(predict_study_dir):
    files = sorted(predict_study_dir.glob("runs/*/outputs/*/*.npz"))
    by_lang = {TextOutputs.load(f).language: TextOutputs.load(f) for f in files[:4]}
    source, target = by_lang["en"], by_lang["de"]
    a = label_free_measures(target, source)
    b = label_free_measures(replace(target, labels=(target.labels + 1) % 3), source)
    assert a == b and "translation-agreement" in a and "retrieval-accuracy" in a


def test_report_has_the_prediction_section(predict_study_dir):
    from xlgm.study.report import report_study

    spec = load_spec(predict_study_dir / "spec.yaml")
    predict_study(spec, predict_study_dir, echo=False, show_progress=False)
    page = report_study(predict_study_dir, echo=False).read_text()
    assert "Predicted accuracy from unlabelled text" in page
    assert (predict_study_dir / "report" / "figures" / "prediction.png").is_file()


def test_predict_new_text(predict_study_dir, tmp_path, capsys):
    from xlgm.data.loading import load_examples
    from xlgm.data.tasks import get_task

    rows = load_examples(get_task("xnli"), "test", "sw", max_examples=12)
    text = tmp_path / "sw.tsv"
    text.write_text("".join(f"{r.text_a}\t{r.text_b}\n" for r in rows), encoding="utf-8")
    for extra in ([], ["--parallel"]):
        assert xlgm_main(["predict", str(predict_study_dir), "--text", str(text), "--language", "sw", *extra]) == 0
        printed = capsys.readouterr().out
        assert "predicted_accuracy" in printed and len(printed.strip().splitlines()) == 1 + RUNS
    bad = tmp_path / "bad.tsv"
    bad.write_text("only one column\n", encoding="utf-8")
    assert xlgm_main(["predict", str(predict_study_dir), "--text", str(bad), "--language", "sw"]) == 2
    assert f"{bad}:1: expected 2 or 3 tab-separated columns" in capsys.readouterr().err
    assert (
        xlgm_main(
            [
                "predict",
                str(predict_study_dir),
                "--text",
                str(text),
                "--language",
                "sw",
                "--parallel",
                "--checkpoints",
                "all",
            ]
        )
        == 0
    )


def test_predict_text_in_a_study_language_never_reads_its_labels(predict_study_dir, tmp_path):
    """Text in one of the study's own languages: that language's labelled accuracies neither train the
    predictor nor anchor it. Changing them leaves the prediction bitwise equal; changing another language's
    moves it (so the check could fail)."""
    import shutil

    from xlgm.data.loading import load_examples
    from xlgm.data.tasks import get_task
    from xlgm.study.predict import predict_text

    rows = load_examples(get_task("xnli"), "test", "de", max_examples=12)
    text = tmp_path / "de.tsv"
    text.write_text("".join(f"{r.text_a}\t{r.text_b}\n" for r in rows), encoding="utf-8")

    def predicted(change: str | None) -> np.ndarray:
        study = tmp_path / f"study-{change}"
        shutil.copytree(predict_study_dir, study)  # the runs' folders stay where they are (absolute paths)
        if change:
            with sqlite3.connect(study / "study.sqlite") as db:
                db.execute("UPDATE evaluations SET accuracy = 1.0 - accuracy * 0.5 WHERE language = ?", (change,))
        spec = load_spec(study / "spec.yaml")
        table = predict_text(spec, study, text, "de", parallel=True, which="all", show_progress=False)
        return table["predicted_accuracy"].to_numpy()

    base = predicted(None)
    np.testing.assert_array_equal(predicted("de"), base)
    assert not np.array_equal(predicted("fr"), base)
