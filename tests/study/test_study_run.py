"""`xlgm study run`: a tiny study end to end, its SQLite rows, rerunning, and resuming after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from study_testlib import CHECKPOINTS, LANGUAGES, MEASURES, RUNS, UNITS, table_rows

from xlgm.study.cli import main
from xlgm.study.folders import run_dir, run_folder_name
from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec

SRC = Path(__file__).resolve().parents[2] / "src"


def counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as db:
        return {
            t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("runs", "checkpoints", "evaluations", "measures", "work", "study", "study_runs")
        }


def test_study_records_every_unit(tiny_study, tiny_spec_path):
    db_path = tiny_study / "study.sqlite"
    assert counts(db_path) == {
        "runs": RUNS,
        "checkpoints": RUNS * CHECKPOINTS,
        "evaluations": RUNS * CHECKPOINTS * LANGUAGES,
        "measures": RUNS * CHECKPOINTS * MEASURES,
        "work": UNITS,
        "study": 1,
        "study_runs": RUNS,
    }
    spec = load_spec(tiny_spec_path)
    rows = table_rows(db_path)
    assert {r[0] for r in rows["runs"]} == {c.run_id for c in spec.run_configs()}
    assert {r[2] for r in rows["runs"]} == {"trained"}
    assert {(r[2], r[3], r[4]) for r in rows["evaluations"]} == {(lang, "test", "bundled[:8]") for lang in ("en", "de")}
    assert all(r[5] == 8 and 0 <= r[6] <= 1 for r in rows["evaluations"])
    assert {r[1] for r in rows["measures"]} == {"margin", "frobenius-distance"}
    assert all(r[3] == "en-dev-16" for r in rows["measures"])
    assert all(r[4] > 0 for r in rows["measures"] if r[1] == "frobenius-distance")
    for config in spec.run_configs():  # run directories named by a readable prefix and the run id, with their logs
        folder = tiny_study / "runs" / run_folder_name(config)
        assert folder.name.startswith(f"{config.objective}-") and folder.name.endswith(f"-{config.run_id}")
        assert (folder / "train_log.jsonl").is_file()
    kept = load_spec(tiny_study / "spec.yaml")
    assert kept == spec and kept.study_id == spec.study_id


def test_rerun_does_nothing(tiny_study, tiny_spec_path, capsys):
    before = table_rows(tiny_study / "study.sqlite")
    assert main(["run", str(tiny_spec_path), "--out", str(tiny_study), "--no-progress"]) == 0
    assert f"{UNITS} of {UNITS} units done (0 now)" in capsys.readouterr().out
    assert table_rows(tiny_study / "study.sqlite") == before


def test_bad_spec_is_one_line(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ngrid:\n  - objective: adamw\n  - {objective: sam, rho: abc}\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"xlgm: error: {spec}:4: grid[1].rho: expected a number, got 'abc'"
    assert not (tmp_path / "out").exists()


def test_resume_after_kill_9(tiny_study, tiny_spec_path, tmp_path):
    """kill -9 a study midway (after the first run's training and some evaluations), run it again: the final rows
    equal those of the uninterrupted study, with nothing duplicated or lost."""
    out = tmp_path / "out"
    db_path = out / "study.sqlite"
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "XLGM_STUDY_COMMIT_DELAY": "0.3",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlgm.study.cli", "run", str(tiny_spec_path), "--out", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    evals = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db_path.exists():
                try:
                    with sqlite3.connect(db_path, timeout=1) as db:
                        evals = db.execute("SELECT COUNT(*) FROM work WHERE kind='eval'").fetchone()[0]
                except sqlite3.OperationalError:  # the schema is still being created
                    evals = 0
                if evals >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"the study ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = counts(db_path)
    assert 2 <= partial["evaluations"] and partial["work"] < UNITS
    # An interrupted training (a run folder without its done-mark) is moved aside and trained again.
    spec = load_spec(tiny_spec_path)
    second = run_dir(out, spec.run_configs()[1].run_id, spec.run_configs()[1])
    second.mkdir(parents=True, exist_ok=True)
    (second / "partial.bin").write_bytes(b"interrupted")

    result = run_study(spec, out, show_progress=False)
    assert result.units_done == result.units_total == UNITS
    assert result.units_now == UNITS - partial["work"]
    assert not (second / "partial.bin").exists()
    [kept] = out.glob(f"quarantine/*/runs/{second.name}/partial.bin")  # moved aside, not deleted
    assert kept.read_bytes() == b"interrupted"
    resumed, reference = table_rows(db_path), table_rows(tiny_study / "study.sqlite")
    for table in ("runs", "checkpoints", "evaluations", "work"):
        assert resumed[table] == reference[table], table
    assert len(resumed["measures"]) == len(reference["measures"])
    for got, want in zip(resumed["measures"], reference["measures"]):
        assert got[:4] == want[:4] and got[4] == pytest.approx(want[4], rel=1e-5)
