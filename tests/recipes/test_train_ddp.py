"""Training in several processes (DDP over gloo, on the CPU) equals one process with the same micro-batches.

Two processes with micro-batches of 8 and one process with `--grad-accum 2` see the same two micro-batches
in every optimizer step, with the same dropout masks (seeded per global micro-batch): their weights agree
bitwise, and so do their learning rates and logged losses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

import xlgm
from xlgm.cli import lost_cpu_processes
from xlgm.recipes.train import TrainConfig, train

SRC = str(Path(xlgm.__file__).resolve().parents[1])
ROWS, BATCH, LR = 80, 8, 1e-3  # 72 training rows after the held-out 10%: 9 micro-batches, 4 steps of 2

DRIVER = f"""
import sys
from xlgm.cli import main

model, out = sys.argv[1], sys.argv[2]
for objective in ("adamw", "sam"):
    code = main(["train", "--model", model, "--max-train-examples", "{ROWS}", "--batch-size", "{BATCH}",
                 "--lr", "{LR}", "--save-every", "2", "--log-every", "1", "--device", "cpu",
                 "--objective", objective, "--out", f"{{out}}/{{objective}}"])
    if code:
        sys.exit(code)
"""


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread, as in the subprocesses (OMP_NUM_THREADS=1): the same kernels give the same sums,
    and tiny models lose a lot to threads when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_with_twice_the_accumulation(tiny_bert_dir, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(driver),
            str(tiny_bert_dir),
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    for objective in ("adamw", "sam"):
        config = TrainConfig(
            model=str(tiny_bert_dir),
            max_train_examples=ROWS,
            batch_size=BATCH,
            grad_accum=2,
            lr=LR,
            save_every=2,
            log_every=1,
            objective=objective,
        )
        one = train(config, tmp_path / "one" / objective, show_progress=False, device="cpu")
        ddp = tmp_path / "ddp" / objective
        state = json.loads((ddp / "state.json").read_text())
        assert state["processes"] == 2 and state["finished"] is True

        index = json.loads((ddp / "checkpoints.json").read_text())
        assert [c["name"] for c in index["checkpoints"]] == ["step-000002", "step-000004"]
        for name in ("step-000002", "step-000004"):
            a = load_file(str(ddp / "checkpoints" / name / "model.safetensors"))
            b = load_file(str(one / "checkpoints" / name / "model.safetensors"))
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), (objective, name, key)

        steps_ddp = [r for r in _log(ddp) if "lr" in r]
        steps_one = [r for r in _log(one) if "lr" in r]
        # 4 steps, no warm-up (int(0.1 * 4) = 0): the linear decay reaches 0 at the last step, not before.
        expected = [LR * (4 - s) / 4 for s in (1, 2, 3, 4)]
        assert [r["step"] for r in steps_ddp] == [1, 2, 3, 4]
        assert [r["lr"] for r in steps_ddp] == [r["lr"] for r in steps_one] == pytest.approx(expected, abs=1e-12)
        for a, b in zip(steps_ddp, steps_one):  # the logged loss is the mean over both processes' batches
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)


class _Parent:
    def __init__(self, command: list[str]):
        self.command = command

    def cmdline(self) -> list[str]:
        return self.command


@pytest.mark.parametrize(
    "command, expected",
    [
        (["python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "xlgm.cli", "train"], 2),
        (["python", "-m", "accelerate.commands.launch", "--cpu", "--num_processes=3", "-m", "xlgm.cli", "train"], 3),
        (
            ["python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "1", "-m", "xlgm.cli", "train"],
            None,
        ),
        (["python", "-m", "xlgm.cli", "train"], None),
    ],
)
def test_accelerate_launch_cpu_processes_are_found(monkeypatch, command, expected):
    """`accelerate launch --cpu --num_processes N` starts one process (accelerate starts several CPU processes
    only through mpirun); xlgm reads N from the launcher's command line and starts them itself."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setattr(psutil.Process, "parent", lambda self: _Parent(command))
    assert lost_cpu_processes() == expected
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by a multi-process launcher: nothing is lost
    assert lost_cpu_processes() is None
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("MASTER_ADDR")  # accelerate sets it only when asked for several processes
    assert lost_cpu_processes() is None
