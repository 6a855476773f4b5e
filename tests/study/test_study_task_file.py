"""A sentence-pair task brought as a task file: a made-up two-language task (`toy`: en, xx; labels no/yes)
with TSV data in XTREME's layout, trained, evaluated and studied end to end through the CLI and a spec."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

from xlgm.cli import main

TOY_TASK = """\
name: toy
output: classification
metric: accuracy
languages: [en, xx]
labels: ["no", "yes"]
text_columns: [claim, evidence]
group_columns: [claim]
tsv:
  labels: ["0", "1"]
"""
WORDS = [
    "the",
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "house",
    "car",
    "city",
    "river",
    "book",
    "water",
    "food",
    "good",
    "bad",
    "big",
    "small",
    "old",
    "new",
]


def _rows(rng: random.Random, n: int) -> list[str]:
    rows = []
    for i in range(n):
        claim = " ".join(rng.choice(WORDS) for _ in range(5)) + f" {i}"
        label = rng.randrange(2)
        evidence = claim if label else " ".join(rng.choice(WORDS) for _ in range(5))
        rows.append(f"{claim}\t{evidence}\t{label}\n")
    return rows


def write_toy(folder: Path) -> tuple[Path, Path]:
    """(the task file, the data folder: train-en, dev-en, test-en and test-xx TSVs)."""
    folder.mkdir(parents=True, exist_ok=True)
    task_file = folder / "toy.yaml"
    task_file.write_text(TOY_TASK)
    data = folder / "data"
    data.mkdir()
    rng = random.Random(0)
    for name, n in (("train-en", 40), ("dev-en", 12), ("test-en", 10), ("test-xx", 10)):
        (data / f"{name}.tsv").write_text("".join(_rows(rng, n)))
    return task_file, data


def test_train_and_evaluate_a_task_file(tiny_bert_dir, tmp_path):
    task_file, data = write_toy(tmp_path)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_bert_dir),
                "--task",
                str(task_file),
                "--data-dir",
                str(data),
                "--max-train-examples",
                "32",
                "--batch-size",
                "16",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["task"] == "toy"
    assert main(["evaluate", str(run), "--task", str(task_file), "--data-dir", str(data)]) == 0
    report = json.loads((run / "eval-test.json").read_text())
    assert set(report["languages"]) == {"en", "xx"}
    assert {lang: r["num_examples"] for lang, r in report["languages"].items()} == {"en": 10, "xx": 10}
    with sqlite3.connect(run / "results.sqlite") as db:
        rows = sorted(db.execute("SELECT task, language, num_examples FROM evaluations"))
    assert rows == [("toy", "en", 10), ("toy", "xx", 10)]


def test_a_run_keeps_its_task_file(tiny_bert_dir, tmp_path, monkeypatch):
    from xlgm.data import tasks

    task_file, data = write_toy(tmp_path)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_bert_dir),
                "--task",
                str(task_file),
                "--data-dir",
                str(data),
                "--max-train-examples",
                "16",
                "--batch-size",
                "16",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert tasks.load_task_file(run / "task.yaml") == tasks.load_task_file(task_file)
    # A later process knows no file task until it reads the run's: evaluate and measure without --task.
    monkeypatch.setattr(tasks, "_FILE_TASKS", {})
    assert main(["evaluate", str(run), "--data-dir", str(data), "--languages", "xx", "--max-examples", "4"]) == 0
    assert json.loads((run / "eval-test.json").read_text())["languages"]["xx"]["num_examples"] == 4
    monkeypatch.setattr(tasks, "_FILE_TASKS", {})
    assert main(["measure", str(run), "--measures", "margin", "--data-dir", str(data), "--max-examples", "8"]) == 0


STUDY = """\
name: toy-study
task: toy.yaml
model: {model}
target_languages: [xx]
data: data
train: {{epochs: 1, batch_size: 8, max_train_examples: 32, lr: 1.0e-3, log_every: 1}}
grid:
  - objective: adamw
seeds: [0]
checkpoints: {{every: 2}}
evaluation: {{max_examples: 8, batch_size: 8}}
measures:
  names: [margin]
  data: {{max_examples: 16, batch_size: 8}}
analysis: {{n_boot: 20}}
"""


def test_study_of_a_task_file(tiny_bert_dir, tmp_path):
    from xlgm.study.runner import run_study
    from xlgm.study.spec import load_spec, parse_text

    task_file, _ = write_toy(tmp_path)
    spec_path = tmp_path / "toy-study.yaml"
    spec_path.write_text(STUDY.format(model=tiny_bert_dir))
    spec = load_spec(spec_path)
    assert (spec.task, spec.task_file, spec.languages) == ("toy", str(task_file.resolve()), ("en", "xx"))
    # What the study folder keeps reads back to the same study, wherever it is read from.
    assert parse_text(spec.to_yaml(), "kept", tmp_path / "elsewhere").study_id == spec.study_id

    out = tmp_path / "out"
    result = run_study(spec, out, show_progress=False, spec_text=spec_path.read_text())
    assert result.units_done == result.units_total
    with sqlite3.connect(out / "study.sqlite") as db:
        evaluations = sorted(db.execute("SELECT task, language, num_examples FROM evaluations"))
        measures = db.execute("SELECT COUNT(*) FROM measures WHERE measure = 'margin'").fetchone()[0]
        checkpoints = db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    assert checkpoints >= 1
    assert evaluations == sorted([("toy", lang, 8) for lang in ("en", "xx")] * checkpoints)
    assert measures == checkpoints
