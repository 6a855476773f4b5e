"""The study folder: movable and copyable (relative paths), one `study run` at a time (an OS lock), corrupt or
unfinished files redone (moved aside), a garbage study.sqlite refused on one line, the device option."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from study_testlib import UNITS, table_rows

from xlgm.core.errors import XlgmError
from xlgm.study.cli import main
from xlgm.study.db import StudyDB
from xlgm.study.executors import worker_device
from xlgm.study.folders import run_dir
from xlgm.study.lock import study_lock
from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec
from xlgm.study.units import outputs_path

SRC = Path(__file__).resolve().parents[2] / "src"
OUTPUT_FOLDERS = ("analysis", "prediction", "report")


def copy_study(source: Path, dest: Path) -> Path:
    """The study folder without what analyze/predict/report wrote (each test makes its own)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*OUTPUT_FOLDERS, ".lock"))
    return dest


def outputs(folder: Path) -> dict[str, bytes]:
    """What analyze, predict and report write: every table, and the report's tables and figures."""
    from xlgm.study.analyze import analyze_study
    from xlgm.study.predict import predict_study
    from xlgm.study.report import report_study

    analyze_study(folder, echo=False)
    predict_study(load_spec(folder / "spec.yaml"), folder, echo=False, show_progress=False)
    report_study(folder, echo=False)
    files = {
        str(p.relative_to(folder)): p.read_bytes()
        for name in OUTPUT_FOLDERS
        for p in sorted((folder / name).rglob("*"))
        if p.is_file()
    }
    for name in ("report/report.html", "report/report.md"):  # all but the line that says when it was made
        files[name] = b"\n".join(line for line in files[name].splitlines() if b"generated" not in line)
    return files


def stored_paths(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as db:
        return [r[0] for r in db.execute("SELECT run_dir FROM runs UNION ALL SELECT path FROM checkpoints")]


def absolute_paths(db_path: Path, old_root: Path) -> None:
    """Make the file look written by an older xlgm: absolute paths under the folder the study then lived in."""
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE runs SET run_dir = ? || '/' || run_dir", (str(old_root),))
        db.execute("UPDATE checkpoints SET path = ? || '/' || path", (str(old_root),))


@pytest.fixture(scope="module")
def original(tiny_study, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A copy of the tiny study, analysed, predicted and reported: its folder and those outputs."""
    folder = copy_study(tiny_study, tmp_path_factory.mktemp("original") / "study")
    return folder, outputs(folder)


def test_a_copied_study_with_the_original_deleted_gives_the_same_tables(original, tmp_path):
    folder, want = original
    paths = stored_paths(folder / "study.sqlite")
    assert len(paths) == 2 + 4 and all(
        re.fullmatch(r"runs/[\w.+-]+-[0-9a-f]{12}(/checkpoints/step-00000[24])?", p) for p in paths
    )
    assert {
        "analysis/correlations.csv",
        "prediction/label_free.csv",
        "prediction/summary.json",
        "report/report.md",
    } <= set(want)
    copy = copy_study(folder, tmp_path / "elsewhere" / "copy")
    shutil.rmtree(folder)
    got = outputs(copy)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name


def test_an_older_study_with_absolute_paths_reads_its_own_folder(tiny_study, original, tmp_path):
    """Absolute paths under the folder the study was written in are mapped onto the folder it is read from,
    even when that old folder still exists (with other files): a copy never reads the original's files."""
    old_root = tmp_path / "old" / "study"
    copy = copy_study(tiny_study, tmp_path / "copy")
    absolute_paths(copy / "study.sqlite", old_root)
    for npz in copy.glob("runs/*/outputs/*/*.npz"):  # the "original": garbage where the outputs were
        bogus = old_root / npz.relative_to(copy)
        bogus.parent.mkdir(parents=True, exist_ok=True)
        bogus.write_bytes(b"not the copy's outputs")
    assert all(p.startswith(f"{old_root}/runs/") for p in stored_paths(copy / "study.sqlite"))
    assert outputs(copy) == original[1]
    # `study run` rewrites them relative to the folder (nothing to redo).
    result = run_study(load_spec(copy / "spec.yaml"), copy, show_progress=False)
    assert result.units_now == 0 and result.repairs == []
    assert sorted(stored_paths(copy / "study.sqlite")) == sorted(stored_paths(tiny_study / "study.sqlite"))


HOLD_LOCK = """\
import sys, time
from xlgm.study.lock import study_lock
with study_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


def test_a_second_study_run_on_a_folder_is_refused(tiny_spec_path, tmp_path):
    """While another process holds the folder, a real `study run` gets one line naming it and exit 2, and
    writes nothing; once the holder is killed (-9) the lock is gone with it."""
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", "xlgm.study.cli", "run", str(tiny_spec_path), "--out", str(out), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert re.fullmatch(
            rf"xlgm: error: {re.escape(str(out))} is being run by pid {holder.pid} "
            r"\(started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it or stop it",
            lines[0],
        ), lines[0]
        assert [p.name for p in out.iterdir()] == [".lock"]  # no spec.yaml, no study.sqlite
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with study_lock(out) as lock:  # the holder's lock died with it
        assert lock.read_text().split()[0] == str(os.getpid())


def test_study_run_holds_the_lock_while_it_works(tiny_study, tiny_spec_path, tmp_path, monkeypatch):
    import xlgm.study.runner as runner

    out = copy_study(tiny_study, tmp_path / "out")
    spec = load_spec(tiny_spec_path)
    (run_dir(out, spec.run_configs()[0].run_id) / "checkpoints" / "step-000002" / "model.safetensors").unlink()
    refused = []

    def run_point(task, emit):
        with pytest.raises(XlgmError) as err, study_lock(out):
            pass
        refused.append(str(err.value))

    monkeypatch.setattr(runner, "run_point", run_point)
    run_study(spec, out, show_progress=False)
    assert len(refused) == 1 and refused[0].startswith(f"{out} is being run by pid {os.getpid()} (started ")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _flip_tensor_bytes(path: Path) -> None:
    """Bytes flipped inside the tensors, the header intact: a readable file that its checksum alone betrays."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + 100 : start + 116] = bytes(b ^ 0xFF for b in data[start + 100 : start + 116])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, file",
    [
        (_truncate, "checkpoints/step-000002/model.safetensors"),
        (_zero, "checkpoints/step-000004/model.safetensors"),
        (lambda p: p.write_text("{ not json"), "checkpoints.json"),
        (_flip_tensor_bytes, "checkpoints/step-000004/model.safetensors"),
    ],
    ids=["truncated-checkpoint", "zeroed-checkpoint", "garbage-index", "flipped-tensor-bytes"],
)
def test_a_run_with_a_corrupt_file_is_moved_aside_and_redone(tiny_study, tiny_spec_path, tmp_path, damage, file):
    out = copy_study(tiny_study, tmp_path / "out")
    spec = load_spec(tiny_spec_path)
    run_id = spec.run_configs()[1].run_id
    bad = run_dir(out, run_id) / file
    damage(bad)
    damaged = bad.read_bytes()
    result = run_study(spec, out, show_progress=False)
    assert result.units_done == result.units_total == UNITS
    assert result.units_now == UNITS // 2  # the run's training, evaluations and measures
    assert len(result.repairs) == 1 and result.repairs[0].startswith(f"{bad}:") and run_id in result.repairs[0]
    [kept] = (out / "quarantine").glob(f"*/runs/{bad.relative_to(out / 'runs')}")
    assert kept.read_bytes() == damaged  # the bad file is kept aside, as it was
    [rows] = (out / "quarantine").glob(f"*/rows/{run_id}.json")
    assert '"work"' in rows.read_text() and run_id in rows.read_text()
    got, want = table_rows(out / "study.sqlite"), table_rows(tiny_study / "study.sqlite")
    for table in ("runs", "checkpoints", "evaluations", "work"):
        assert got[table] == want[table], table
    assert [r[:4] for r in got["measures"]] == [r[:4] for r in want["measures"]]
    assert [r[4] for r in got["measures"]] == pytest.approx([r[4] for r in want["measures"]], rel=1e-5)


def test_garbage_kept_outputs_are_moved_aside_and_their_evaluation_redone(tiny_study, tiny_spec_path, tmp_path):
    out = copy_study(tiny_study, tmp_path / "out")
    spec = load_spec(tiny_spec_path)
    bad = outputs_path(spec, run_dir(out, spec.run_configs()[0].run_id), "step-000004", "de")
    good = bad.read_bytes()
    bad.write_bytes(b"garbage" * 10)
    result = run_study(spec, out, show_progress=False)
    assert result.units_now == 1 and result.units_done == UNITS
    assert len(result.repairs) == 1 and result.repairs[0].startswith(f"{bad}: not a readable .npz file")
    [kept] = (out / "quarantine").glob(f"*/{bad.relative_to(out)}")
    assert kept.read_bytes() == b"garbage" * 10
    assert bad.read_bytes() != b"garbage" * 10
    from xlgm.recipes.evaluate import TextOutputs

    again, before = TextOutputs.load(bad), TextOutputs.load(_write(tmp_path / "good.npz", good))
    assert (again.logits == before.logits).all() and again.language == before.language == "de"
    assert table_rows(out / "study.sqlite") == table_rows(tiny_study / "study.sqlite")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_predict_names_garbage_kept_outputs_on_one_line(tiny_study, tmp_path, capsys):
    from xlgm.cli import main as xlgm_main

    out = copy_study(tiny_study, tmp_path / "out")
    bad = sorted(out.glob("runs/*/outputs/*/*.npz"))[0]
    bad.write_bytes(b"garbage" * 10)
    assert xlgm_main(["predict", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"xlgm: error: {bad}: not readable kept outputs")
    assert err[0].endswith("run `xlgm study run` on the study again to redo its evaluation")


def test_a_garbage_study_database_is_refused_on_one_line(tiny_study, tiny_spec_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    garbage = b"these are not the rows you are looking for\n" * 50
    (out / "study.sqlite").write_bytes(garbage)
    assert main(["run", str(tiny_spec_path), "--out", str(out), "--no-progress"]) == 2
    line = f"xlgm: error: {out / 'study.sqlite'}: not a SQLite database (it does not start with SQLite's header)"
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert (out / "study.sqlite").read_bytes() == garbage
    assert sorted(p.name for p in out.iterdir()) == [".lock", "study.sqlite"]  # no spec.yaml, no -wal file
    shutil.copy(tiny_study / "spec.yaml", out / "spec.yaml")
    assert main(["analyze", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert (out / "study.sqlite").read_bytes() == garbage


def test_a_damaged_study_database_is_refused_on_one_line(tiny_study, tiny_spec_path, tmp_path, capsys):
    out = copy_study(tiny_study, tmp_path / "out")
    db = out / "study.sqlite"
    with sqlite3.connect(db) as conn:  # everything in the main file, then a hole in its pages
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in ("study.sqlite-wal", "study.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page : len(data) - page] = bytes(len(data) - 3 * page)
    db.write_bytes(bytes(data))
    assert main(["run", str(tiny_spec_path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"xlgm: error: {db}: corrupt SQLite database (")
    assert db.read_bytes() == bytes(data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_is_one_line(tiny_spec_path, tmp_path, capsys):
    assert main(["run", str(tiny_spec_path), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "xlgm: error: --device cuda: no CUDA GPU is visible"
    assert not (tmp_path / "out").exists()


def test_ray_tasks_use_their_gpu():
    assert worker_device("auto", [0]) == "cuda"  # Ray shows a task only its own GPU
    assert worker_device("cuda:1", ["1"]) == "cuda"
    assert worker_device("cpu", [0]) == "cpu"
    assert worker_device("auto", []) == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_study_runs_on_the_gpu(tiny_spec_path, tmp_path, monkeypatch):
    """With --device cuda the models and batches of evaluation and measures are on the GPU."""
    import xlgm.recipes.measure as measure_recipe
    import xlgm.study.executors as executors

    seen: list[str] = []
    load, build = executors.load_run_model, measure_recipe.build_batches

    def spy_load(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        seen.append(next(model.parameters()).device.type)
        return model, tokenizer

    def spy_build(*args, **kwargs):
        batches = build(*args, **kwargs)
        seen.extend(b["input_ids"].device.type for b in batches)
        return batches

    monkeypatch.setattr(executors, "load_run_model", spy_load)
    monkeypatch.setattr(executors, "build_batches", spy_build)
    result = run_study(load_spec(tiny_spec_path), tmp_path / "out", show_progress=False, device="cuda")
    assert result.units_done == UNITS and seen and set(seen) == {"cuda"}


def test_an_interrupted_training_is_resumed_not_retrained(tiny_study, tiny_spec_path, tmp_path, monkeypatch):
    """A run folder whose training has no done-mark is handed to `train(..., resume=True)` and stays where it
    is; a folder that cannot be resumed is moved aside and the run is trained from the start."""
    import xlgm.study.executors as executors

    out = tmp_path / "study"
    shutil.copytree(tiny_study, out)
    spec = load_spec(tiny_spec_path)
    config = spec.run_configs()[0]
    with StudyDB(out / "study.sqlite") as db:
        db.forget_units([f"train/{config.run_id}"])
    folder = run_dir(out, config.run_id)
    calls = []
    real_train = executors.train

    def recording_train(cfg, path, *args, **kwargs):
        calls.append((cfg.run_id, kwargs.get("resume", False)))
        return real_train(cfg, path, *args, **kwargs)

    monkeypatch.setattr(executors, "train", recording_train)
    run_study(spec, out, show_progress=False)
    # the finished run's folder answers `resume` with "finished": nothing retrained, nothing moved aside
    assert calls == [(config.run_id, True)]
    assert not list(out.glob("quarantine/*/runs/*"))

    calls.clear()
    with StudyDB(out / "study.sqlite") as db:
        db.forget_units([f"train/{config.run_id}"])
    (folder / "config.json").write_text("{broken")
    run_study(spec, out, show_progress=False)
    assert calls == [(config.run_id, True), (config.run_id, False)]
    [kept] = out.glob(f"quarantine/*/runs/{folder.name}/config.json")
    assert kept.read_text() == "{broken"


def test_a_study_with_bare_run_folders_resumes_and_reports(tiny_study, tiny_spec_path, tmp_path):
    """A study written before run folders had a prefix (OUT/runs/RUNID) finds its runs: nothing is redone or
    moved aside, and the report reads each run's config and log."""
    out = copy_study(tiny_study, tmp_path / "old")
    spec = load_spec(tiny_spec_path)
    for config in spec.run_configs():
        run_dir(out, config.run_id).rename(out / "runs" / config.run_id)
    with sqlite3.connect(out / "study.sqlite") as db:
        db.execute("UPDATE runs SET run_dir = 'runs/' || run_id")
        db.execute("UPDATE checkpoints SET path = 'runs/' || run_id || '/checkpoints/' || substr(checkpoint_id, 14)")
    result = run_study(spec, out, show_progress=False)
    assert result.units_now == 0 and result.units_done == UNITS and not result.repairs
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(c.run_id for c in spec.run_configs())
    from xlgm.study.analyze import load_study
    from xlgm.study.report.inputs import run_records

    assert set(run_records(load_study(spec, out))) == {c.run_id for c in spec.run_configs()}
