"""A training run killed with SIGKILL and resumed with `--resume` ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import xlgm
from xlgm.cli import main
from xlgm.recipes.train import TrainConfig, train

SRC = str(Path(xlgm.__file__).resolve().parents[1])


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread, as in the subprocesses (OMP_NUM_THREADS=1): the same kernels give the same sums,
    and tiny models lose a lot to threads when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_args(model: Path, out: Path) -> list[str]:
    # 144 training rows in micro-batches of 4: 36 steps, a checkpoint every 2 (each with a held-out evaluation)
    return [
        "train",
        "--model",
        str(model),
        "--max-train-examples",
        "160",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--save-every",
        "2",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def _records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _kill_after_first_checkpoint(args: list[str], run: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "xlgm.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not (run / "checkpoints.json").exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def test_killed_run_resumes_to_the_uninterrupted_weights(tiny_bert_dir, tmp_path, capsys):
    run = tmp_path / "killed"
    args = _train_args(tiny_bert_dir, run)
    _kill_after_first_checkpoint(args, run)
    state = json.loads((run / "state.json").read_text())
    index = json.loads((run / "checkpoints.json").read_text())
    assert state["finished"] is False and index["checkpoints"][-1]["step"] < 36
    killed_at = index["checkpoints"][-1]["name"]
    assert (run / "checkpoints" / killed_at / "training-state.safetensors").is_file()

    # An unfinished run: used only with --allow-partial, not trained over without --resume/--overwrite.
    capsys.readouterr()
    assert main(["evaluate", str(run), "--languages", "en", "--max-examples", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"xlgm: error: {run}: training did not finish (last checkpoint {killed_at}); "
        f"pass --allow-partial to use it anyway"
    )
    assert main(["measure", str(run), "--measures", "margin", "--max-examples", "8"]) == 2
    assert "training did not finish" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--languages", "en", "--max-examples", "8", "--allow-partial"]) == 0
    assert "training did not finish" in capsys.readouterr().err
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"unfinished, last checkpoint {killed_at}" in err and "--resume" in err

    assert main([*args, "--resume"]) == 0
    config = TrainConfig(
        model=str(tiny_bert_dir), max_train_examples=160, batch_size=4, lr=1e-3, save_every=2, log_every=1
    )
    reference = train(config, tmp_path / "uninterrupted", show_progress=False, device="cpu")

    index = json.loads((run / "checkpoints.json").read_text())
    assert index == json.loads((reference / "checkpoints.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == list(range(2, 37, 2))
    for c in index["checkpoints"]:
        resumed = (run / "checkpoints" / c["name"] / "model.safetensors").read_bytes()
        assert resumed == (reference / "checkpoints" / c["name"] / "model.safetensors").read_bytes(), c["name"]
    assert _records(run) == _records(reference)  # no record twice, none missing
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] is True and state["resumed_at"] == [int(killed_at.split("-")[1])]
    assert not list(run.glob("checkpoints/*/training-state.*"))  # a finished run keeps no optimizer state
    with sqlite3.connect(run / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT checkpoint_id) FROM checkpoints").fetchone() == (18, 18)
        assert db.execute("SELECT run_id, status FROM runs").fetchall() == [(config.run_id, "trained")]

    # Resuming a finished run changes nothing.
    before = (run / "train_log.jsonl").read_bytes()
    assert main([*args, "--resume"]) == 0
    assert (run / "train_log.jsonl").read_bytes() == before
