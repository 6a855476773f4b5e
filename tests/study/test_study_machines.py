"""Which machine made each number: a study's runs record their machine and resolved precision in their folders and
in study.sqlite; a run resumed on another kind of machine warns, and the study then says its units are mixed."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch

from xlgm.core.devices import resolve_precision
from xlgm.core.machine import kernel_flags, machine_kind
from xlgm.results import ResultsDB
from xlgm.study.db import StudyDB
from xlgm.study.folders import run_dir

# What the shipped study ran on (results/xnli-e5-cpu/README.md): a record another kind of machine than this one.
AMD_EPYC = {
    "cpu": "AMD EPYC 9B14",
    "isa": ["avx512_bf16", "avx512f", "avx2", "fma"],
    "gpu": None,
    "gpu_driver": None,
    "cuda": None,
    "threads": 2,
    "precision": "bf16",
    "torch": "2.13.0",
    "versions": {"torch": "2.13.0"},
}


def test_a_runs_machine_and_resolved_precision_are_in_its_folder_and_in_the_study_database(tiny_study: Path):
    precision = resolve_precision("auto", "cpu")  # the tiny spec trains with mixed_precision auto
    recorded = {}
    for run in sorted((tiny_study / "runs").iterdir()):
        state = json.loads((run / "state.json").read_text())
        assert state["mixed_precision"] == precision != "auto"
        [session] = state["machines"]
        machine = session["machine"]
        assert session["from_step"] == 0
        assert machine["precision"] == precision and machine["isa"] == kernel_flags()
        assert machine["threads"] == 1 and machine["torch"] == torch.__version__ and machine["gpu"] is None
        recorded[run.name.rsplit("-", 1)[-1]] = machine  # the folder: a readable prefix, then the run id
    with sqlite3.connect(tiny_study / "study.sqlite") as db:
        runs = db.execute("SELECT r.run_id, m.record FROM runs AS r JOIN machines AS m USING (machine_id)").fetchall()
        assert {run_id: json.loads(record) for run_id, record in runs} == recorded
        units = db.execute(
            "SELECT w.kind, m.record FROM work AS w LEFT JOIN machines AS m USING (machine_id)"
        ).fetchall()
        evals = db.execute("SELECT COUNT(*) FROM evaluations WHERE machine_id IS NULL").fetchone()
        measures = db.execute("SELECT COUNT(*) FROM measures WHERE machine_id IS NULL").fetchone()
    assert units and all(record is not None for _, record in units)
    # evaluation and measures in the spec's default precision, fp32, whatever training resolved to
    assert {json.loads(record)["precision"] for kind, record in units if kind in ("eval", "measure")} == {"no"}
    assert evals == measures == (0,)
    from xlgm.study.analyze import load_study, study_settings
    from xlgm.study.spec import load_spec

    machines = study_settings(load_study(load_spec(tiny_study / "spec.yaml"), tiny_study))["machines"]
    # training in its resolved precision, evaluation and measures in fp32: one line each when those differ
    expected = ["8 eval, 8 measure, 2 train"] if precision == "no" else ["2 train", "8 eval, 8 measure"]
    assert sorted(machines.values()) == expected


def test_an_older_study_file_opens_and_its_rows_machine_is_unknown(tmp_path: Path):
    path = tmp_path / "study.sqlite"
    with sqlite3.connect(path) as db:  # the tables as files written before machines were recorded
        db.executescript(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, config TEXT NOT NULL, run_dir TEXT, "
            "status TEXT NOT NULL DEFAULT 'created', created REAL NOT NULL);"
            "CREATE TABLE work (unit_id TEXT PRIMARY KEY, kind TEXT NOT NULL, run_id TEXT NOT NULL, "
            "checkpoint_id TEXT, item TEXT, seconds REAL, finished REAL NOT NULL);"
            "INSERT INTO runs VALUES ('r1', '{}', 'runs/r1', 'trained', 0);"
            "INSERT INTO work VALUES ('train/r1', 'train', 'r1', NULL, NULL, 1.0, 0);"
        )
    with StudyDB(path) as db:
        assert db.query("SELECT run_id, machine_id FROM runs") == [("r1", None)]
        assert db.query("SELECT unit_id, machine_id FROM work") == [("train/r1", None)]
        db.add_run("r2", {}, "runs/r2", machine=AMD_EPYC)
        [(machine_id,)] = db.query("SELECT machine_id FROM runs WHERE run_id='r2'")
        assert db.machine(machine_id) == AMD_EPYC
    with ResultsDB(path) as db:  # opened again: nothing left to add
        assert db.query("SELECT kind FROM machines") == [(machine_kind(AMD_EPYC),)]


def test_a_run_resumed_on_another_kind_of_machine_warns_and_the_study_names_the_mixed_units(
    tiny_study: Path, tmp_path: Path, monkeypatch, capsys
):
    from xlgm.recipes import train as train_module
    from xlgm.study.analyze import analyze_study
    from xlgm.study.report import report_study
    from xlgm.study.runner import run_study
    from xlgm.study.spec import load_spec

    spec = load_spec(tiny_study / "spec.yaml")
    out = tmp_path / "study"
    out.mkdir()
    shutil.copy(tiny_study / "spec.yaml", out / "spec.yaml")
    first = spec.run_configs()[0].run_id
    save = train_module.CheckpointSaver.save

    def killed_after_the_first_checkpoint(self, step: int) -> None:
        save(self, step)
        if self.loop.config.run_id == first:
            raise RuntimeError("killed")

    monkeypatch.setattr(train_module.CheckpointSaver, "save", killed_after_the_first_checkpoint)
    with pytest.raises(RuntimeError, match="killed"):
        run_study(spec, out, show_progress=False)
    monkeypatch.undo()
    run = run_dir(out, first)
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] is False
    state["machines"] = [{"from_step": 0, "machine": AMD_EPYC}]  # as if it had started on the AMD machine
    (run / "state.json").write_text(json.dumps(state))

    capsys.readouterr()
    result = run_study(spec, out, show_progress=False)
    assert result.units_done == result.units_total
    warnings = [line for line in capsys.readouterr().err.splitlines() if "another kind of machine" in line]
    assert len(warnings) == 1 and str(run) in warnings[0] and "AMD EPYC" in warnings[0]
    sessions = json.loads((run / "state.json").read_text())["machines"]
    assert [s["from_step"] for s in sessions] == [0, 2] and sessions[0]["machine"] == AMD_EPYC

    data, _ = analyze_study(out, echo=False)
    assert any("more than one kind of machine" in note for note in data.notes)
    machines = pd.read_csv(out / "analysis" / "machines.csv")
    mixed = machines[machines["kinds"] > 1]
    assert list(mixed["unit_id"]) == [f"train/{first}"] and "AMD EPYC" in mixed["description"].iloc[0]

    # the report's verdict section names the units; its settings list the machines
    report = (report_study(out, echo=False).parent / "report.md").read_text()
    verdict = report.split("## About this study")[0]
    assert "Mixed machines" in verdict and f"train/{first}" in verdict and "AMD EPYC" in verdict
    assert "AMD EPYC" in report.split("## Settings")[1]
