"""`xlgm measure` on a run of a tiny model: every checkpoint, results in SQLite and JSON."""

from __future__ import annotations

import json
import sqlite3

import pytest

from xlgm.cli import main
from xlgm.recipes.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_run(tiny_bert_dir, tmp_path_factory):
    config = TrainConfig(
        model=str(tiny_bert_dir),
        epochs=1,
        batch_size=16,
        max_train_examples=64,
        lr=1e-3,
        save_every=2,
        freeze="word",
        seed=0,
    )
    return train(config, tmp_path_factory.mktemp("run") / "run", show_progress=False)


def test_measure_every_checkpoint_of_a_run(tiny_run, capsys):
    code = main(
        [
            "measure",
            str(tiny_run),
            "--measures",
            "margin,frobenius-distance,sharpness-diff",
            "--max-examples",
            "32",
            "--set",
            "sharpness-diff.num_draws=2",
        ]
    )
    assert code == 0
    records = json.loads((tiny_run / "measures.json").read_text())
    checkpoints = {r["checkpoint_id"] for r in records}
    assert len(checkpoints) == 2  # steps 2 and 4 (the last)
    assert {r["name"] for r in records} == {"margin", "frobenius-distance", "sharpness-diff"}
    diff = [r for r in records if r["name"] == "sharpness-diff"]
    assert all(r["num_samples"] == 2 and r["spread"] is not None for r in diff)
    frob = [r for r in records if r["name"] == "frobenius-distance"]
    assert all(r["value"] > 0 for r in frob)
    assert all(r["machine"]["precision"] == "no" for r in records)  # --mixed-precision's default
    with sqlite3.connect(tiny_run / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM measures").fetchone()[0] == 6
        assert db.execute("SELECT COUNT(*) FROM measures WHERE machine_id IS NULL").fetchone()[0] == 0
    # Measuring again replaces rows rather than adding them.
    assert main(["measure", str(tiny_run), "--measures", "margin", "--max-examples", "32"]) == 0
    with sqlite3.connect(tiny_run / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM measures").fetchone()[0] == 6


def test_frozen_word_embeddings_are_not_measured(tiny_run):
    """The run froze word embeddings: distance from init counts only trained parameters."""
    assert (
        main(
            [
                "measure",
                str(tiny_run),
                "--checkpoint",
                "last",
                "--measures",
                "frobenius-distance",
                "--max-examples",
                "16",
                "--out",
                str(tiny_run / "frob.json"),
            ]
        )
        == 0
    )
    (record,) = json.loads((tiny_run / "frob.json").read_text())
    names = json.dumps(record["details"])
    assert "word_embeddings" not in names and "classifier" in names


def test_unknown_measure_and_bad_data_spec(tiny_run, capsys):
    assert main(["measure", str(tiny_run), "--measures", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["measure", str(tiny_run), "--data", "english"]) == 2
    assert "LANGUAGE-SPLIT" in capsys.readouterr().err


def test_list_needs_no_target_and_shows_every_kind(capsys):
    assert main(["measure", "--list"]) == 0
    out = capsys.readouterr().out
    assert "sharpness-diff " in out and "parameter-variance-across-seeds" in out and "retrieval-accuracy" in out
    assert main(["measure"]) == 2
    assert "needs a TARGET" in capsys.readouterr().err


def test_a_given_init_state_path_is_measured_from_and_a_missing_one_refused(tiny_run, tmp_path, capsys):
    """init_state_path names the weights the distance is measured from, also for a run with its own initial
    weights: the best checkpoint's own weights give 0. A file that is not there is one line, before any work."""
    best = json.loads((tiny_run / "checkpoints.json").read_text())["best"]
    own = tiny_run / "checkpoints" / best / "model.safetensors"
    argv = ["measure", str(tiny_run), "--checkpoint", "best", "--measures", "frobenius-distance"]
    argv += ["--max-examples", "8", "--out", str(tmp_path / "m.json"), "--db", str(tmp_path / "m.sqlite")]
    assert main([*argv, "--set", f"frobenius-distance.init_state_path={own}"]) == 0
    [record] = json.loads((tmp_path / "m.json").read_text())
    assert record["value"] == 0.0
    assert main(argv) == 0
    [record] = json.loads((tmp_path / "m.json").read_text())
    assert record["value"] > 0  # from the run's own initial weights
    capsys.readouterr()
    missing = tmp_path / "missing.safetensors"
    assert main([*argv, "--set", f"frobenius-distance.init_state_path={missing}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "init_state_path" in err[0] and f"{missing}: file not found" in err[0], err
