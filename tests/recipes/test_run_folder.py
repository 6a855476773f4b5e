"""What `xlgm train --out R` does with a folder that already holds something, and the finished flag."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.recipes.accelerator import make_accelerator
from xlgm.recipes.train import TrainConfig, train
from xlgm.runs import RunDir, claim_run_dir, require_finished


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _args(model, out, *extra) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--max-train-examples",
        "24",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("xlgm: error: "), err
    return err


def test_existing_run_is_refused_unless_resume_or_overwrite(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_bert_dir, out, "--save-every", "1")) == 0
    run_id = json.loads((out / "config.json").read_text())["run_id"]
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # 22 training rows after the held-out slice: 3 micro-batches of 8, 3 steps
    assert [c["name"] for c in RunDir(out).index["checkpoints"]] == ["step-000001", "step-000002", "step-000003"]

    capsys.readouterr()
    assert main(_args(tiny_bert_dir, out, "--save-every", "1")) == 2  # the same config
    assert _one_line_error(capsys) == (
        f"xlgm: error: {out}: already holds this run ({run_id}, finished); "
        f"pass --resume to continue it or --overwrite to train it again"
    )
    assert main(_args(tiny_bert_dir, out, "--lr", "0.001")) == 2  # another config
    err = _one_line_error(capsys)
    assert f"holds run {run_id} of another config (lr 0.0001 there, 0.001 here" in err and "--overwrite" in err
    assert main(_args(tiny_bert_dir, out, "--lr", "0.001", "--resume")) == 2  # resume needs the same config
    assert f"holds run {run_id} of another config" in _one_line_error(capsys)
    # From Python, the same refusal names train()'s arguments, not the command line's flags.
    config = TrainConfig(model=str(tiny_bert_dir), max_train_examples=24, batch_size=8, save_every=1)
    assert config.run_id == run_id
    with pytest.raises(XlgmError) as refused:
        train(config, out, show_progress=False, device="cpu")
    assert str(refused.value).endswith("pass resume=True to continue it or overwrite=True to train it again")
    # Nothing was touched by the refusals, and resuming a finished run is a no-op.
    assert main(_args(tiny_bert_dir, out, "--save-every", "1", "--resume")) == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    # --overwrite: the old run is gone (its checkpoints, log records and results rows), the new one alone.
    (out / "eval-test.json").write_text("{}")  # a report of the old run, written by xlgm evaluate
    assert main(_args(tiny_bert_dir, out, "--lr", "0.001", "--overwrite")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.001 and config["run_id"] != run_id
    assert [c["name"] for c in RunDir(out).index["checkpoints"]] == ["step-000003"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]
    assert not (out / "eval-test.json").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 3]  # one training record, one checkpoint record
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT run_id FROM runs").fetchall() == [(config["run_id"],)]
        assert db.execute("SELECT checkpoint_id FROM checkpoints").fetchall() == [(f"{config['run_id']}/step-000003",)]
    # --resume --overwrite: the same config resumes (here: finished, so nothing), another one starts anew.
    assert main(_args(tiny_bert_dir, out, "--lr", "0.001", "--resume", "--overwrite")) == 0
    assert json.loads((out / "config.json").read_text())["run_id"] == config["run_id"]


def test_overwrite_never_deletes_what_xlgm_did_not_write(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_bert_dir, out)) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(_args(tiny_bert_dir, out, "--lr", "0.001", "--overwrite")) == 2
    assert "also holds notes.txt" in _one_line_error(capsys)
    assert (out / "notes.txt").read_text() == "mine" and (out / "config.json").is_file()

    other = tmp_path / "papers"
    other.mkdir()
    (other / "draft.tex").write_text("x")
    for extra in ((), ("--overwrite",), ("--resume",)):
        assert main(_args(tiny_bert_dir, other, *extra)) == 2
        assert "not empty and not an xlgm run (it holds draft.tex)" in _one_line_error(capsys)
    assert [p.name for p in other.iterdir()] == ["draft.tex"]

    assert main(_args(tiny_bert_dir, tmp_path / "nothing", "--resume")) == 2
    assert "holds no run to resume" in _one_line_error(capsys)


def test_parts_of_a_run_without_config_are_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    (out / "init.json").write_text("{}")
    with pytest.raises(XlgmError, match="holds parts of a run without its config.json; pass overwrite=True"):
        claim_run_dir(out, {}, "abc")
    assert claim_run_dir(out, {}, "abc", overwrite=True) == "new"
    assert claim_run_dir(tmp_path / "absent", {}, "abc") == "new"
    (out / "config.json").write_text("{not json")
    with pytest.raises(XlgmError, match="config.json:1: not valid JSON"):
        claim_run_dir(out, {}, "abc")
    assert claim_run_dir(out, {}, "abc", overwrite=True) == "new"  # a corrupt run can still be replaced


def test_require_finished(tmp_path, capsys):
    run = RunDir(tmp_path)
    (tmp_path / "checkpoints.json").write_text(
        json.dumps(
            {
                "checkpoints": [{"name": "step-000004", "step": 4, "epoch": 0.5, "dev_accuracy": 0.5}],
                "best": "step-000004",
                "last": None,
            }
        )
    )
    # A run written before state.json existed finished exactly when its index names a `last` checkpoint.
    with pytest.raises(XlgmError) as err:
        require_finished(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: training did not finish (last checkpoint step-000004); pass allow_partial=True to use it anyway"
    )
    assert err.value.command_line.endswith("pass --allow-partial to use it anyway")  # what `xlgm` prints
    run.write_state(finished=False)
    with pytest.raises(XlgmError, match="did not finish"):
        require_finished(tmp_path)
    require_finished(tmp_path, allow_partial=True)
    assert "training did not finish (last checkpoint step-000004); using it" in capsys.readouterr().err
    run.write_state(finished=True)
    require_finished(tmp_path)
    assert capsys.readouterr().err == ""


def test_device_and_precision_choices(tiny_bert_dir, tmp_path, capsys):
    accelerator = make_accelerator("cpu", "no")
    assert accelerator.device.type == "cpu" and accelerator.mixed_precision == "no"
    assert make_accelerator("cpu", "bf16").mixed_precision == "bf16"  # a second Accelerator may differ
    with pytest.raises(XlgmError, match="fp16 needs a CUDA GPU"):
        make_accelerator("cpu", "fp16")
    with pytest.raises(XlgmError, match="--mixed-precision: expected one of auto, no, fp16, bf16"):
        TrainConfig(mixed_precision="fp8")
    if not torch.cuda.is_available():
        assert main(_args(tiny_bert_dir, tmp_path / "r", "--device", "cuda:0")) == 2
        assert _one_line_error(capsys) == "xlgm: error: --device cuda:0: no CUDA GPU is visible"
        assert not (tmp_path / "r").exists()
    # The device is not part of the run id; the precision is.
    assert TrainConfig().run_id != TrainConfig(mixed_precision="no").run_id
    run = train(
        TrainConfig(model=str(tiny_bert_dir), max_train_examples=24, batch_size=8, mixed_precision="no"),
        tmp_path / "cpu",
        show_progress=False,
        device="cpu",
    )
    state = json.loads((run / "state.json").read_text())
    assert state["device"].startswith("cpu") and state["mixed_precision"] == "no" and state["processes"] == 1


def test_a_corrupt_last_checkpoint_is_no_point_to_resume_from(tiny_bert_dir, tmp_path):
    """Bytes flipped inside the last checkpoint's tensors: resuming refuses it on one line naming the file (and
    the way out, from Python: overwrite=True), rather than training on from wrong weights."""
    out = tmp_path / "run"
    config = TrainConfig(model=str(tiny_bert_dir), max_train_examples=24, batch_size=8, save_every=1)
    train(config, out, show_progress=False, device="cpu")
    run = RunDir(out)
    last = run.last_checkpoint["name"]
    run.save_training_state(last, {"unused": torch.zeros(1)}, {})  # the checksum is checked before it is read
    run.write_state(finished=False)
    weights = run.checkpoint_dir(last) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    weights.write_bytes(bytes(data))
    with pytest.raises(XlgmError) as refused:
        train(config, out, show_progress=False, device="cpu", resume=True)
    assert str(refused.value).startswith(f"{weights}: corrupt: its SHA-256 is ")
    assert str(refused.value).endswith("the run cannot resume from it: pass overwrite=True to train it again")
