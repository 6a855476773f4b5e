"""The study's SQLite file: `ResultsDB`'s tables plus `study` (the specs) and `work` (finished units).

    study       study_id, name, spec (canonical JSON), text (the YAML as written), created
    study_runs  study_id, run_id, position: which runs a study's grid expands to
    work        unit_id, kind (train | eval | measure), run_id, checkpoint_id, item, seconds, finished

A *unit* is the smallest piece of work that is done or not: a run's training, one (checkpoint, language)
evaluation, one (checkpoint, measure) measurement. `commit_unit` writes a unit's result rows and its `work` row
in ONE transaction, so after a crash (kill -9 included) a unit is either fully recorded or not at all. Unit ids
are content keys (run id, checkpoint id, evaluation settings, measure config hash), so a finished unit stays
finished when the spec changes in ways that do not touch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xlgm.results import ResultsDB

STUDY_SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    study_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    text TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_runs (
    study_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (study_id, run_id)
);
CREATE TABLE IF NOT EXISTS work (
    unit_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    run_id TEXT NOT NULL,
    checkpoint_id TEXT,
    item TEXT,
    seconds REAL,
    finished REAL NOT NULL
);
"""
# For tests of interruption: seconds to sleep between computing a unit and committing it (kill -9 lands there).
DELAY_ENV = "XLGM_STUDY_COMMIT_DELAY"


class _NoCommit:
    """A connection whose `with` block does not commit: lets `ResultsDB`'s own methods (each of which commits in
    `with self.conn:`) join the one transaction that `StudyDB.transaction` opens around a unit."""

    def __init__(self, conn):
        self._conn = conn

    def __enter__(self):
        return self._conn

    def __exit__(self, *exc: object) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class StudyDB(ResultsDB):
    def __init__(self, path: str | Path):
        super().__init__(path)
        self.conn.executescript(STUDY_SCHEMA)
        self.conn.commit()

    @contextlib.contextmanager
    def transaction(self) -> Iterator["StudyDB"]:
        """Everything written inside commits together, or (on any exception) not at all."""
        real = self.conn
        with real:
            self.conn = _NoCommit(real)
            try:
                yield self
            finally:
                self.conn = real

    # -- study -------------------------------------------------------------------------------------------------

    def record_study(self, study_id: str, name: str, spec: dict, text: str | None, run_ids: list[str]) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO study (study_id, name, spec, text, created) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(study_id) DO UPDATE SET name=excluded.name, spec=excluded.spec, text=excluded.text",
                (study_id, name, json.dumps(spec, sort_keys=True, default=str), text, time.time()))
            self.conn.execute("DELETE FROM study_runs WHERE study_id=?", (study_id,))
            self.conn.executemany("INSERT INTO study_runs VALUES (?, ?, ?)",
                                  [(study_id, r, i) for i, r in enumerate(run_ids)])

    # -- work --------------------------------------------------------------------------------------------------

    def done_units(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT unit_id FROM work")}

    def commit_unit(self, unit: dict[str, Any]) -> None:
        """Write a unit's rows (see `runner.py` for the three kinds) and its done-mark in one transaction."""
        delay = float(os.environ.get(DELAY_ENV) or 0)
        if delay:
            time.sleep(delay)
        with self.transaction():
            kind = unit["kind"]
            if kind == "train":
                self.add_run(unit["run_id"], unit["config"], unit["run_dir"], status="trained")
                self.conn.execute("DELETE FROM checkpoints WHERE run_id=?", (unit["run_id"],))
                for c in unit["checkpoints"]:
                    self.add_checkpoint(c["checkpoint_id"], unit["run_id"], c["step"], c["epoch"], c["path"],
                                        c["dev_accuracy"], c["is_best"], c["is_last"])
                checkpoint_id, item = None, None
            elif kind == "eval":
                self.add_evaluation(unit["checkpoint_id"], unit["task"], unit["language"], unit["split"],
                                    unit["data"], unit["num_examples"], unit["accuracy"])
                checkpoint_id, item = unit["checkpoint_id"], unit["language"]
            elif kind == "measure":
                self.add_measure(unit["checkpoint_id"], unit["measure"], unit["config"], unit["data"], unit["value"],
                                 unit["spread"], unit["num_samples"], unit["seconds"], unit["details"])
                checkpoint_id, item = unit["checkpoint_id"], unit["measure"]
            else:
                raise ValueError(f"unknown unit kind {kind!r}")
            self.conn.execute(
                "INSERT INTO work (unit_id, kind, run_id, checkpoint_id, item, seconds, finished) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(unit_id) DO UPDATE SET seconds=excluded.seconds, "
                "finished=excluded.finished",
                (unit["unit_id"], kind, unit["run_id"], checkpoint_id, item, unit.get("seconds"), time.time()))

    def checkpoints_of(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT checkpoint_id, step, epoch, path, dev_accuracy, is_best, is_last FROM checkpoints "
            "WHERE run_id=? ORDER BY step", (run_id,)).fetchall()
        keys = ("checkpoint_id", "step", "epoch", "path", "dev_accuracy", "is_best", "is_last")
        return [dict(zip(keys, row)) for row in rows]
