"""`xlgm predict` on a token study (UD-POS, PAN-X), end to end on synthetic kept outputs: a study folder whose
runs, checkpoints, evaluations and per-word outputs are written by hand (no model runs), then the label-free
table, the cross-validated predictor and its tables."""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xlgm.analysis.predict import FEATURES, PARALLEL_ONLY, SOURCE_WORD_ACCURACY
from xlgm.analysis.token_metrics import score_words
from xlgm.core.errors import XlgmError
from xlgm.core.types import TextOutputs
from xlgm.data.tasks import get_task
from xlgm.study.db import StudyDB
from xlgm.study.predict import predict_study, predict_text, write_predictions
from xlgm.study.spec import StudySpec, parse_text
from xlgm.study.units import DB_NAME, eval_data_label, outputs_path, train_unit_id

SPEC = """\
name: token-predict
task: xnli
model: embedded
target_languages: [fr, es, ru, zh, ar]
grid:
  - objective: adamw
  - {objective: sam, rho: 0.05}
  - {objective: sam, rho: 0.1}
seeds: [0, 1]
measures: {names: [margin]}
"""
STEPS = (2, 4)
SENTENCES, HIDDEN = 30, 8
NON_PARALLEL = [f for f in FEATURES if f not in PARALLEL_ONLY]


def token_spec(task: str) -> StudySpec:
    """A study spec of a token task. The spec parser refuses token tasks until the study stage runs them, so a
    sentence-pair spec is given the token task: prediction reads the task's name, the languages, the runs and
    the checkpoints from it, nothing that depends on the task's kind."""
    return replace(parse_text(SPEC), task=task)


def synthetic_outputs(task_name: str, language: str, skill: float, seed: int) -> TextOutputs:
    """Per-word outputs of a checkpoint of `skill` on a language's sentences (the same words for every
    checkpoint: the gold tags depend on the language only). Higher skill: the gold tag's logit stands out more,
    so the model is both more accurate and more confident."""
    task = get_task(task_name)
    text = np.random.default_rng(zlib.crc32(language.encode()))
    lengths = text.integers(2, 9, SENTENCES)
    gold = text.integers(0, task.num_labels, lengths.sum())
    noise = np.random.default_rng(seed)
    logits = noise.normal(size=(len(gold), task.num_labels))
    logits[np.arange(len(gold)), gold] += skill
    shift = 0.0 if language == "en" else 1.0 / skill
    embeddings = noise.normal(size=(SENTENCES, HIDDEN)) + shift
    sentences = np.repeat(np.arange(SENTENCES), lengths)
    return TextOutputs(language, logits.astype(np.float32), embeddings.astype(np.float32), gold, sentences)


def metric_of(outputs: TextOutputs, task_name: str) -> float:
    """The task's metric of the outputs, as the study's evaluation computes it."""
    task = get_task(task_name)
    assert outputs.labels is not None
    by = outputs.by_sentence
    return score_words(task.metric, by(outputs.predictions), by(outputs.labels), task.label_names).value


def write_token_study(spec: StudySpec, out: Path) -> dict[tuple[str, str], float]:
    """Runs, checkpoints, evaluations (the task's metric) and kept outputs of every checkpoint and language;
    returns the evaluated metric by (checkpoint, language)."""
    difficulty = dict(zip(spec.languages, (0.0, 0.6, 0.8, 1.2, 1.6, 2.0)))
    evaluated = {}
    with StudyDB(out / DB_NAME) as db:
        for r, config in enumerate(spec.run_configs()):
            run_dir = out / "runs" / config.run_id
            checkpoints = [
                {"checkpoint_id": f"{config.run_id}/step-{s}", "step": s, "epoch": s / 4, "path": None}
                | {"dev_accuracy": None, "is_best": s == STEPS[-1], "is_last": s == STEPS[-1]}
                for s in STEPS
            ]
            unit = {"kind": "train", "unit_id": train_unit_id(config.run_id), "run_id": config.run_id}
            db.commit_unit(unit | {"config": asdict(config), "run_dir": str(run_dir), "checkpoints": checkpoints})
            for c, ckpt in enumerate(checkpoints):
                skill = 3.0 + 0.4 * r + 0.5 * c
                for lang in spec.languages:
                    outputs = synthetic_outputs(spec.task, lang, skill - difficulty[lang], 100 * r + 10 * c)
                    outputs.save(outputs_path(spec, run_dir, f"step-{ckpt['step']}", lang))
                    value = metric_of(outputs, spec.task)
                    db.add_evaluation(
                        ckpt["checkpoint_id"], spec.task, lang, spec.evaluation.split, eval_data_label(spec),
                        SENTENCES, value,
                    )  # fmt: skip
                    evaluated[(ckpt["checkpoint_id"], lang)] = value
    return evaluated


@pytest.fixture(scope="module", params=["udpos", "panx"])
def token_study(request, tmp_path_factory):
    spec = token_spec(request.param)
    out = tmp_path_factory.mktemp(f"{request.param}-study")
    evaluated = write_token_study(spec, out)
    results = predict_study(spec, out, echo=False, show_progress=False)
    return spec, out, evaluated, results


def test_a_token_study_is_predicted_end_to_end(token_study):
    spec, out, evaluated, results = token_study
    task = get_task(spec.task)
    assert results["metric"] == task.metric and results["rows"] == 6 * len(STEPS) * 5
    assert results["features"] == NON_PARALLEL  # auto: every feature that needs no parallel text
    table = pd.read_csv(out / "prediction" / "label_free.csv")
    assert not {"translation-agreement", "translation-gap", "linear-cka", "retrieval-accuracy"} & set(table.columns)
    # the target is the study's metric, and the gaps are taken to the source's value of the same metric
    for row in table.itertuples():
        assert row.accuracy == evaluated[(row.checkpoint_id, row.language)]
        assert row.source_accuracy == pytest.approx(evaluated[(row.checkpoint_id, "en")], abs=1e-12)
    words_differ = (table["source_accuracy"] - table[SOURCE_WORD_ACCURACY]).abs().max()
    assert (words_differ > 0.01) == (task.metric == "entity_f1")  # PAN-X: word accuracy is not entity F1
    np.testing.assert_allclose(table["atc-gap"], table["atc-accuracy"] - table[SOURCE_WORD_ACCURACY])
    for scheme, summary in results["schemes"].items():
        assert "skipped" not in summary, scheme
        assert summary["mae"]["predicted"] < summary["mae"]["same_as_source"], scheme
    cv = pd.read_csv(out / "prediction" / "cv.csv")
    assert cv["predicted"].between(0, 1).all() and len(cv) == 3 * results["rows"]
    assert json.loads((out / "prediction" / "summary.json").read_text())["metric"] == task.metric


def test_the_label_free_measures_are_stored_with_the_study(token_study):
    spec, out, _, results = token_study
    with sqlite3.connect(out / DB_NAME) as db:
        stored = dict(db.execute("SELECT measure, COUNT(*) FROM measures WHERE data='fr-test-text' GROUP BY measure"))
    expected = {"confidence-margin", "prediction-entropy", "atc-accuracy", "doc-accuracy", "checkpoint-agreement"}
    assert set(stored) == expected | {"embedding-distance"}
    assert set(stored.values()) == {6 * len(STEPS)}


def test_a_parallel_feature_named_for_a_token_study_is_refused(token_study):
    spec, out, _, _ = token_study
    table = pd.read_csv(out / "prediction" / "label_free.csv")
    named = replace(spec, prediction=replace(spec.prediction, features=("atc-gap", "disagreement")))
    with pytest.raises(XlgmError, match=f"^prediction.features: disagreement need.* task {spec.task} labels words"):
        write_predictions(named, table, out / "elsewhere", echo=False)


def test_new_text_on_a_token_study_is_refused_in_one_line(token_study, tmp_path):
    spec, out, _, _ = token_study
    with pytest.raises(XlgmError, match=f"^xlgm predict --text reads sentence pairs; task {spec.task} labels words"):
        predict_text(spec, out, tmp_path / "sw.txt", "sw", show_progress=False)
