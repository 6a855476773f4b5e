"""A study of a token task end to end: a made-up two-language tagging task (`tags`: en, xx; tags DET NOUN VERB)
in CoNLL files written here, a tiny BERT, two runs trained, evaluated with the task's metric and measured, then
analysed and reported; and what a token study's spec refuses."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from token_testlib import word_margins
from xlgm.data.loading import DataSource, load_tagged_sentences
from xlgm.data.tasks import get_task
from xlgm.recipes.evaluate import TextOutputs
from xlgm.recipes.tokens import evaluate_token_languages
from xlgm.study.analyze import resolve_study
from xlgm.study.cli import main
from xlgm.study.executors import load_run_model
from xlgm.study.runner import run_study
from xlgm.study.spec import SpecError, load_spec, parse_text
from xlgm.study.units import outputs_path

TAGS_TASK = """\
name: tags
output: tokens
metric: token_accuracy
languages: [en, xx]
labels: [DET, NOUN, VERB]
"""
# Each word has one tag, so the tiny model can learn it; xx spells the same words backwards.
LEXICON = {"the": 0, "a": 0, "dog": 1, "cat": 1, "house": 1, "river": 1, "runs": 2, "sees": 2, "eats": 2}
# sentences a file (train-en: 40 less the 10% held out = 36 rows; 36 / 8 -> 5 steps, checkpoints at 2, 4, 5)
SIZES = {"train-en": 40, "dev-en": 12, "test-en": 9, "test-xx": 7}
EMBEDDING_ROWS = 5  # fewer than the test sentences: the kept embeddings are cut to these

STUDY = """\
name: tag-study
task: tags.yaml
model: {model}
target_languages: [xx]
data: data
train: {{epochs: 1, batch_size: 8, lr: 3.0e-3, log_every: 1}}
grid:
  - objective: adamw
  - {{objective: sam, rho: 0.05}}
seeds: [0]
checkpoints: {{every: 2}}
evaluation: {{batch_size: 4}}
measures:
  names: {measures}
  data: {{max_examples: 12, batch_size: 4}}
prediction: {{embedding_rows: {rows}}}
analysis: {{n_boot: 20}}
"""
MEASURES = "[margin, {sharpness-diff: {num_draws: 2}}]"


def write_tags_task(folder: Path) -> tuple[Path, Path]:
    """(the task file, the data folder: train-en, dev-en, test-en and test-xx in CoNLL layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    task_file = folder / "tags.yaml"
    task_file.write_text(TAGS_TASK)
    data = folder / "data"
    data.mkdir()
    rng = random.Random(0)
    names = ["DET", "NOUN", "VERB"]
    for name, n in SIZES.items():
        sentences = []
        for _ in range(n):
            words = [rng.choice(list(LEXICON)) for _ in range(rng.randint(2, 6))]
            spelled = [w[::-1] if name.endswith("xx") else w for w in words]
            sentences.append("".join(f"{s}\t{names[LEXICON[w]]}\n" for s, w in zip(spelled, words)))
        (data / f"{name}.tsv").write_text("\n".join(sentences))
    return task_file, data


@pytest.fixture(scope="module")
def tag_study(tiny_bert_dir, tmp_path_factory) -> Path:
    """The token study run to completion (local executor); its folder."""
    folder = tmp_path_factory.mktemp("tag-study")
    write_tags_task(folder)
    spec_path = folder / "tag-study.yaml"
    spec_path.write_text(STUDY.format(model=tiny_bert_dir, measures=MEASURES, rows=EMBEDDING_ROWS))
    spec = load_spec(spec_path)
    result = run_study(spec, folder / "out", show_progress=False, spec_text=spec_path.read_text())
    assert result.runs == 2 and result.units_done == result.units_total == result.units_now
    return folder / "out"


def _rows(out: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(out / "study.sqlite") as db:
        return sorted(db.execute(sql))


def _checkpoint_model(spec, out: Path, checkpoint_id: str):
    """(model, tokenizer, run folder) of one of the study's checkpoints, as its units loaded it."""
    ((run_id, path),) = _rows(out, f"SELECT run_id, path FROM checkpoints WHERE checkpoint_id = '{checkpoint_id}'")
    config = next(c for c in spec.run_configs() if c.run_id == run_id)
    run_dir = out / Path(path).parent.parent
    model, tokenizer = load_run_model(config, run_dir, out / path, get_task(spec.task), torch.device("cpu"))
    return model, tokenizer, run_dir


def test_a_token_study_records_the_tasks_metric_per_language(tag_study):
    spec, out = resolve_study(tag_study)
    task = get_task(spec.task)
    source = DataSource("local", spec.data.dir)
    evaluations = _rows(out, "SELECT checkpoint_id, language, split, num_examples, accuracy FROM evaluations")
    checkpoints = [c for (c,) in _rows(out, "SELECT checkpoint_id FROM checkpoints")]
    assert len(checkpoints) == 2 * 3  # steps 2, 4 and 5 of each run
    assert len(evaluations) == len(checkpoints) * 2
    assert {(lang, split, n) for _, lang, split, n, _ in evaluations} == {("en", "test", 9), ("xx", "test", 7)}
    for checkpoint_id in (checkpoints[0], checkpoints[-1]):
        model, tokenizer, _ = _checkpoint_model(spec, out, checkpoint_id)
        expected = evaluate_token_languages(
            model, tokenizer, task, spec.languages, source, "test", batch_size=4, show_progress=False
        )
        recorded = {lang: acc for cid, lang, _, _, acc in evaluations if cid == checkpoint_id}
        assert expected["metric"] == "token_accuracy"
        assert recorded == {lang: r["accuracy"] for lang, r in expected["languages"].items()}


def test_a_token_evaluation_keeps_outputs_per_word_and_embeddings_per_sentence(tag_study):
    spec, out = resolve_study(tag_study)
    task = get_task(spec.task)
    checkpoint_id = _rows(out, "SELECT checkpoint_id FROM checkpoints")[0][0]
    model, tokenizer, run_dir = _checkpoint_model(spec, out, checkpoint_id)
    sentences = load_tagged_sentences(task, "test", "xx", DataSource("local", spec.data.dir))
    outputs = TextOutputs.load(outputs_path(spec, run_dir, checkpoint_id.split("/")[1], "xx"))
    words = sum(len(s.words) for s in sentences)
    assert outputs.logits.shape == (words, task.num_labels) and outputs.logits.dtype == np.float32
    np.testing.assert_array_equal(outputs.labels, np.concatenate([s.tags for s in sentences]))
    np.testing.assert_array_equal(
        outputs.sentences, np.repeat(np.arange(len(sentences)), [len(s.words) for s in sentences])
    )
    (recorded,) = [
        a
        for c, lang, a in _rows(out, "SELECT checkpoint_id, language, accuracy FROM evaluations")
        if (c, lang) == (checkpoint_id, "xx")
    ]
    assert outputs.accuracy == pytest.approx(recorded, abs=1e-12)
    # One embedding a sentence, the first EMBEDDING_ROWS kept: each its row's hidden states mean-pooled.
    assert outputs.embeddings is not None and outputs.embeddings.shape == (EMBEDDING_ROWS, 32)
    first = tokenizer(list(sentences[0].words), is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**first, output_hidden_states=True).hidden_states[-1][0].mean(0).numpy()
    np.testing.assert_allclose(outputs.embeddings[0], hidden, rtol=0, atol=2e-3)  # kept as float16
    # first-subword logits of that sentence, word by word
    with torch.no_grad():
        logits = model(**first).logits[0].numpy()
    firsts = [first.word_ids().index(w) for w in range(len(sentences[0].words))]
    np.testing.assert_allclose(outputs.logits[: len(firsts)], logits[firsts], rtol=0, atol=1e-5)


def test_a_token_study_is_measured_analysed_and_reported_by_its_metric(tag_study, capsys):
    spec, out = resolve_study(tag_study)
    task = get_task(spec.task)
    measures = _rows(out, "SELECT measure, checkpoint_id, value, details FROM measures")
    assert {m for m, *_ in measures} == {"margin", "sharpness-diff"}
    assert len(measures) == 2 * 3 * 2 and all(np.isfinite(v) for _, _, v, _ in measures)
    # The margin is over the labelled words of the measure data (en dev, 12 sentences), from each word's first
    # subword: recomputed here from one checkpoint's row logits.
    _, checkpoint_id, margin, details = next(m for m in measures if m[0] == "margin")
    model, tokenizer, _ = _checkpoint_model(spec, out, checkpoint_id)
    sentences = load_tagged_sentences(task, "dev", "en", DataSource("local", spec.data.dir), 12)
    margins = word_margins(model, tokenizer, sentences, spec.train_max_length)
    assert margin == pytest.approx(float(margins.mean()), abs=1e-5)
    assert json.loads(details)["details"]["num_examples"] == len(margins)  # words, not subwords or sentences
    assert main(["analyze", str(tag_study)]) == 0
    assert "mean target token accuracy" in capsys.readouterr().out
    assert main(["report", str(tag_study)]) == 0
    html = (tag_study / "report" / "report.html").read_text()
    assert "evaluation metric is token accuracy" in html and "Token accuracy per run and language" in html
    assert "chance token accuracy" in html and "1/3 = 0.333" in html
    assert "all sentences" in html  # the evaluated rows a language: the spec asked for every test sentence


def test_the_chance_check_of_a_token_study_compares_the_metric_without_an_interval(tag_study):
    """A token study stores no interval of its metric: a unit is near chance when within the margin of it."""
    import pandas as pd

    from xlgm.study.analyze import load_study
    from xlgm.study.report.inputs import read_study_records
    from xlgm.study.report.tables import TOKEN_CHANCE_MARGIN, chance_check

    data = load_study(*resolve_study(tag_study))
    rows = pd.DataFrame({"acc_en": [1 / 3, 1 / 3 + 0.9 * TOKEN_CHANCE_MARGIN, 0.9], "mean_target": [0.3, 0.9, 0.9]})
    check = chance_check(data, rows, read_study_records(data))
    assert check is not None and (check.near_source, check.near_target, check.units) == (2, 1, 3) and check.warn
    assert f"en token accuracy's value is within {TOKEN_CHANCE_MARGIN} of chance (1/3 = 0.333)" in check.message("en")
    assert get_task("panx").chance == (0.0, "0 (no entity found)")


def test_a_token_study_run_again_computes_nothing(tag_study, capsys):
    """`xlgm study run SPEC --analyze` on the finished study: no unit again, then prediction and the report."""
    # the study's rows (prediction adds its label-free measures to the measures table)
    queries = ["SELECT * FROM evaluations", "SELECT * FROM work", "SELECT * FROM measures WHERE data = 'en-dev-12'"]
    before = {sql: _rows(tag_study, sql) for sql in queries}
    spec_path = tag_study.parent / "tag-study.yaml"
    assert main(["run", str(spec_path), "--out", str(tag_study), "--no-progress", "--analyze"]) == 0
    assert "26 of 26 units done (0 now)" in capsys.readouterr().out  # 2 trainings, 6 x (2 languages + 2 measures)
    assert json.loads((tag_study / "prediction" / "summary.json").read_text())["metric"] == "token_accuracy"
    assert {sql: _rows(tag_study, sql) for sql in queries} == before


def test_a_token_studys_evaluation_split_defaults_to_the_tasks():
    base = "name: t\nmodel: embedded\ngrid: [adamw]\n"
    assert parse_text(base + "task: panx\ntarget_languages: [de]\n").evaluation.split == "dev"
    assert parse_text(base + "task: udpos\ntarget_languages: [fr]\n").evaluation.split == "test"
    written = parse_text(base + "task: panx\ntarget_languages: [de]\nevaluation: {split: test}\n")
    assert written.evaluation.split == "test"


def test_a_token_study_with_mvr_is_refused_in_one_line(tmp_path):
    write_tags_task(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\nmodel: embedded\ntask: tags.yaml\ndata: data\ngrid:\n  - adamw\n  - mvr\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    message = str(err.value)
    assert message.startswith(f"{spec}:7: grid[1].objective: mvr does not train token tasks") and "\n" not in message
