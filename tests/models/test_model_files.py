"""Files xlgm reads back: each damaged one is one line naming it, and nothing stored changes.

The unit tests read damaged safetensors, JSON and SQLite files directly; the table at the end damages one
file of a real (tiny) run at a time and runs `xlgm evaluate` / `xlgm measure` on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.core.files import file_sha256, read_json, read_safetensors, save_tensors, write_json
from xlgm.results import ResultsDB


def tensors_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "model.safetensors"
    save_tensors({"a.weight": torch.arange(600, dtype=torch.float32).reshape(20, 30), "b": torch.ones(7)}, path)
    return path, path.read_bytes()


def test_safetensors_round_trip_and_atomic_write(tmp_path):
    path, _ = tensors_file(tmp_path)
    state = read_safetensors(path)
    assert torch.equal(state["a.weight"], torch.arange(600, dtype=torch.float32).reshape(20, 30))
    assert torch.equal(state["b"], torch.ones(7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left behind


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda data: data[: len(data) // 2], r"truncated \(1\d\d\d bytes; its header describes 2\d\d\d\)"),
        (lambda data: data[:40], r"truncated \(40 bytes; its header alone needs"),
        (lambda data: bytes(len(data)), r"zero-filled \(2\d\d\d bytes of zeros\)"),
        (lambda data: b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "not a safetensors file"),
        (lambda data: b"", r"empty \(0 bytes\)"),
        (lambda data: data[:8] + b"[" + data[9:], r"damaged header \(not JSON\)|not a safetensors file"),
    ],
)
def test_damaged_safetensors_is_one_line(tmp_path, damage, message):
    path, data = tensors_file(tmp_path)
    path.write_bytes(damage(data))
    with pytest.raises(XlgmError, match=f"^{path}: {message}") as info:
        read_safetensors(path)
    assert "\n" not in str(info.value)


def test_missing_safetensors(tmp_path):
    with pytest.raises(XlgmError, match=f"^{tmp_path / 'x.safetensors'}: file not found$"):
        read_safetensors(tmp_path / "x.safetensors")


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    before = path.read_bytes()
    assert json.loads(before) == {"a": [1, 2], "b": 1}
    (tmp_path / "plain").write_text("x")  # the permissions of any file written here, not a temporary's 0600
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode
    (tmp_path / "plain").unlink()
    write_json(tmp_path / "synced.json", [1], fsync=True)
    assert json.loads((tmp_path / "synced.json").read_text()) == [1]
    (tmp_path / "synced.json").unlink()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"c": 3})
    assert path.read_bytes() == before  # the old content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # and the temporary is gone


@pytest.mark.parametrize(
    "text,kwargs,message",
    [
        ('{"model": "x",', {}, r":1: not valid JSON \(Expecting property name"),
        ("[1, 2]", {"expect": dict}, "expected a JSON object, got a list"),
        ('"text"', {"required": ("model",)}, "expected a JSON object, got a string"),
        ('{"task": "xnli"}', {"required": ("model", "task", "run_id")}, "missing keys 'model', 'run_id'$"),
        ('{"a": 1}', {"expect": list}, "expected a JSON list, got an object"),
        (b"\xff\xfe{}", {}, r"not valid JSON \(not UTF-8 text\)"),
    ],
)
def test_damaged_json_is_one_line(tmp_path, text, kwargs, message):
    path = tmp_path / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(XlgmError, match=f"^{path}{message if message.startswith(':') else ': ' + message}"):
        read_json(path, **kwargs)


def test_read_json_accepts_what_it_should(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"model": "m", "task": "xnli"}')
    assert read_json(path, required=("model", "task")) == {"model": "m", "task": "xnli"}
    with pytest.raises(XlgmError, match="file not found"):
        read_json(tmp_path / "none.json")


@pytest.mark.parametrize("content", [b"this is not a database at all, just text" * 50, bytes(4096)])
def test_garbage_results_file_is_refused_unchanged(tmp_path, content):
    path = tmp_path / "results.sqlite"
    path.write_bytes(content)
    with pytest.raises(XlgmError, match=f"^{path}: not a SQLite database$"):
        ResultsDB(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]  # no -wal / -shm beside it


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER, name TEXT)")
    with pytest.raises(XlgmError, match="table 'runs' has no column run_id, config, run_dir, status, created"):
        ResultsDB(path)
    with ResultsDB(tmp_path / "fresh.sqlite") as db:  # and a real one opens, and reopens
        db.add_evaluation("c", "xnli", "en", "test", "bundled", 3, 0.5)
    with ResultsDB(tmp_path / "fresh.sqlite") as db:
        assert db.query("SELECT accuracy FROM evaluations") == [(0.5,)]


# ------------------------------------------------------------------------------------------------------------
# A real run, damaged one file at a time


@pytest.fixture(scope="module")
def evaluated_run(tiny_bert_dir, tmp_path_factory) -> Path:
    """A one-step run of the tiny BERT, evaluated and measured once, so it holds every file xlgm writes."""
    from xlgm.recipes.train import TrainConfig, train

    run = train(
        TrainConfig(
            model=str(tiny_bert_dir),
            max_train_examples=16,
            batch_size=8,
            epochs=1,
            save_every=0,
            holdout_fraction=0.25,
            seed=0,
        ),
        tmp_path_factory.mktemp("run") / "run",
        show_progress=False,
    )
    assert main(["evaluate", str(run), "--languages", "en", "--max-examples", "8"]) == 0
    assert main(["measure", str(run), "--measures", "margin", "--max-examples", "8"]) == 0
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint_weights(run: Path) -> Path:
    (weights,) = run.glob("checkpoints/step-*/model.safetensors")
    return weights


def save_recorded(state: dict, run: Path) -> None:
    """Replace the checkpoint's weights with `state` and record their checksum in the index, as training would:
    the file is sound as far as its checksum goes, and what is wrong with it is the test's subject."""
    weights = checkpoint_weights(run)
    save_tensors(state, weights)
    index = read_json(run / "checkpoints.json")
    for entry in index["checkpoints"]:
        if entry["name"] == weights.parent.name:
            entry["sha256"] = {weights.name: file_sha256(weights)}
    write_json(run / "checkpoints.json", index)


def other_architecture(run: Path, tiny_bert_dir: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.hidden_size, config.num_labels = 48, 3
    model = BertForSequenceClassification(config)
    save_recorded(dict(model.named_parameters()), run)


def foreign_tensor(run: Path, tiny_bert_dir: Path) -> None:
    state = read_safetensors(checkpoint_weights(run))
    state["bert.encoder.layer.7.output.dense.weight"] = torch.zeros(2, 2)
    save_recorded(state, run)


def write(relative: str, content: bytes):
    return lambda run, _: (run / relative).write_bytes(content)


def damage_checkpoint(how):
    return lambda run, _: checkpoint_weights(run).write_bytes(how(checkpoint_weights(run).read_bytes()))


EVALUATE = ["evaluate", "{run}", "--languages", "en", "--max-examples", "8"]
MEASURE = ["measure", "{run}", "--measures", "margin", "--max-examples", "8"]

CASES = {
    "checkpoint truncated": (
        damage_checkpoint(lambda d: d[: len(d) // 3]),
        EVALUATE,
        r"checkpoints/step-\d+/model\.safetensors: truncated \(",
    ),
    "checkpoint zero-filled": (
        damage_checkpoint(lambda d: bytes(len(d))),
        EVALUATE,
        r"checkpoints/step-\d+/model\.safetensors: zero-filled \(",
    ),
    "checkpoint not safetensors": (
        damage_checkpoint(lambda d: b"<html>404</html>" * 3),
        EVALUATE,
        r"checkpoints/step-\d+/model\.safetensors: not a safetensors file$",
    ),
    "checkpoint missing": (
        lambda run, _: checkpoint_weights(run).unlink(),
        EVALUATE,
        r"checkpoints/step-\d+/model\.safetensors: file not found$|has no 'best' checkpoint",
    ),
    "checkpoint of another architecture": (
        other_architecture,
        EVALUATE,
        r"model\.safetensors: checkpoint has hidden size 48, the model 32 "
        r"\(tensor bert\.\S+: \[(\d+, )?48\], the model's \[(\d+, )?32\]\)$",
    ),
    "checkpoint with a foreign tensor": (
        foreign_tensor,
        EVALUATE,
        r"model\.safetensors: tensor bert\.encoder\.layer\.7\.output\.dense\.weight "
        r"is not a parameter of the model",
    ),
    "initial head truncated": (
        lambda run, _: (run / "init-head.safetensors").write_bytes((run / "init-head.safetensors").read_bytes()[:100]),
        EVALUATE,
        r"init-head\.safetensors: truncated \(",
    ),
    "config.json invalid": (write("config.json", b'{"model": '), EVALUATE, r"config\.json:1: not valid JSON \("),
    "config.json a list": (write("config.json", b"[]"), EVALUATE, r"config\.json: expected a JSON object, got a list$"),
    "config.json without model": (
        write("config.json", b'{"task": "xnli", "run_id": "x"}'),
        EVALUATE,
        r"config\.json: missing key 'model'$",
    ),
    "checkpoints.json invalid": (write("checkpoints.json", b"{{"), EVALUATE, r"checkpoints\.json:1: not valid JSON"),
    "checkpoints.json without checkpoints": (
        write("checkpoints.json", b'{"best": "step-1"}'),
        EVALUATE,
        r"checkpoints\.json: missing key 'checkpoints'$",
    ),
    "results.sqlite garbage": (
        write("results.sqlite", b"garbage" * 200),
        EVALUATE,
        r"results\.sqlite: not a SQLite database$",
    ),
    "results.sqlite garbage (measure)": (
        write("results.sqlite", b"garbage" * 200),
        MEASURE,
        r"results\.sqlite: not a SQLite database$",
    ),
    "measures.json invalid": (write("measures.json", b"[{"), MEASURE, r"measures\.json:1: not valid JSON"),
    "measures.json not records": (
        write("measures.json", b"[1, 2]"),
        MEASURE,
        r"measures\.json: entry 0 is not a measure record",
    ),
    "checkpoint truncated (measure)": (
        damage_checkpoint(lambda d: d[:-10]),
        MEASURE,
        r"model\.safetensors: truncated \(",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_run_file_is_one_line_and_changes_nothing(case, evaluated_run, tiny_bert_dir, tmp_path, capsys):
    damage, argv, message = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    damage(run, tiny_bert_dir)
    before = snapshot(run)
    capsys.readouterr()
    code = main([a.format(run=run) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = re.findall(r"xlgm: error: [^\r\n]*", err)
    assert len(errors) == 1, err
    if argv is EVALUATE:  # the error alone on the last line (xlgm measure's bar, left open, redraws after it)
        assert err.endswith(f"\n{errors[0]}\n") or err == f"{errors[0]}\n", err
    assert re.search(message, errors[0]), errors[0]
    assert snapshot(run) == before  # nothing stored changed, the damaged file included


def test_mistyped_target_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # would a lookup happen, it would not fail fast
    for target in ("runs/e5-adamw-typo", str(tmp_path / "nope"), "./nope", "../x/y/z"):
        assert main(["evaluate", target, "--languages", "en", "--max-examples", "4"]) == 2
        err = capsys.readouterr().err
        assert err == f"xlgm: error: {target}: no such run or model folder\n"
