"""The study's SQLite file: `ResultsDB`'s tables plus `study` (the specs) and `work` (finished units).

    study       study_id, name, spec (canonical JSON), text (the YAML as written), created
    study_runs  study_id, run_id, position: which runs a study's grid expands to
    work        unit_id, kind (train | eval | measure | group), run_id, checkpoint_id, item, seconds, finished,
                machine_id (what computed the unit: the `machines` table; NULL in files older than that)
    group_measures  group_id, measure, run_ids, checkpoint_ids (JSON lists), value, details, seconds, created,
                machine_id: measures of a group of runs that differ only in their seed
                (parameter-variance-across-seeds)

Paths (runs.run_dir, checkpoints.path) are stored relative to the study folder and resolved against the folder
the file is read from, so a study folder can be moved or copied. Files written by older versions hold absolute
paths: those under the folder the study then lived in (recognised by the `ROOT/runs/RUN_ID` layout) are mapped
onto the current folder, so a copy never reads the original's files.

A *unit* is the smallest piece of work that is done or not: a run's training, one (checkpoint, language)
evaluation, one (checkpoint, measure) measurement, one (group of seeds, group measure) measurement.
`commit_unit` writes a unit's result rows and its `work` row in ONE transaction, so after a crash (kill -9
included) a unit is either fully recorded or not at all. Unit ids
are content keys (run id, checkpoint id, evaluation settings, measure config hash), so a finished unit stays
finished when the spec changes in ways that do not touch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, cast

from xlgm.core.errors import XlgmError
from xlgm.results import ResultsDB, add_missing_columns

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
CREATE TABLE IF NOT EXISTS group_measures (
    group_id TEXT NOT NULL,
    measure TEXT NOT NULL,
    run_ids TEXT NOT NULL,
    checkpoint_ids TEXT NOT NULL,
    value REAL,
    details TEXT,
    seconds REAL,
    created REAL NOT NULL,
    machine_id TEXT,
    PRIMARY KEY (group_id, measure)
);
CREATE TABLE IF NOT EXISTS work (
    unit_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    run_id TEXT NOT NULL,
    checkpoint_id TEXT,
    item TEXT,
    seconds REAL,
    finished REAL NOT NULL,
    machine_id TEXT
);
"""
# Columns added after study files were first written (see `xlgm.results.ADDED_COLUMNS`).
STUDY_ADDED_COLUMNS = {"group_measures": {"machine_id": "TEXT"}, "work": {"machine_id": "TEXT"}}
# For tests of interruption: seconds to sleep between computing a unit and committing it (kill -9 lands there).
DELAY_ENV = "XLGM_STUDY_COMMIT_DELAY"
SQLITE_HEADER = b"SQLite format 3\x00"
RUNS_FOLDER = "runs"


class _NoCommit:
    """A connection whose `with` block does not commit: lets `ResultsDB`'s own methods (each of which commits in
    `with self.conn:`) join the one transaction that `StudyDB.transaction` opens around a unit."""

    def __init__(self, conn):
        self._conn = conn

    def __enter__(self):
        return self._conn

    def __exit__(self, *exc: object) -> None:  # None: an exception propagates
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def check_sqlite_file(path: Path) -> None:
    """A file that exists must start with SQLite's header: anything else is refused before SQLite opens it (and
    so before anything is written beside it)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as err:
        raise XlgmError(f"{path}: cannot be read ({err.strerror})") from None
    if head and head != SQLITE_HEADER:
        raise XlgmError(f"{path}: not a SQLite database (it does not start with SQLite's header)")


class StudyDB(ResultsDB):
    def __init__(self, path: str | Path):
        path = Path(path)
        check_sqlite_file(path)
        try:
            super().__init__(path)
        except sqlite3.DatabaseError as err:  # SQLite's header, then something it cannot read
            if getattr(self, "conn", None) is not None:
                self.close()
            raise XlgmError(f"{path}: corrupt SQLite database ({err})") from None
        try:
            problem = self.conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
            self.conn.executescript(STUDY_SCHEMA)
            add_missing_columns(self.conn, STUDY_ADDED_COLUMNS)
            self.conn.commit()
        except sqlite3.DatabaseError as err:
            self.close()
            raise XlgmError(f"{path}: corrupt SQLite database ({' '.join(str(err).split())})") from None
        self.root = self.path.parent.resolve()
        self._old_roots: list[Path] | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StudyDB]:
        """Everything written inside commits together, or (on any exception) not at all."""
        real = self.conn
        with real:
            self.conn = cast(sqlite3.Connection, _NoCommit(real))  # a stand-in with the methods ResultsDB uses
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
                (study_id, name, json.dumps(spec, sort_keys=True, default=str), text, time.time()),
            )
            self.conn.execute("DELETE FROM study_runs WHERE study_id=?", (study_id,))
            self.conn.executemany(
                "INSERT INTO study_runs VALUES (?, ?, ?)", [(study_id, r, i) for i, r in enumerate(run_ids)]
            )

    # -- paths -------------------------------------------------------------------------------------------------

    def stored_path(self, path: str | Path) -> str:
        """How a path is stored: relative to the study folder ('/'-separated) when it lies inside it."""
        path = Path(path)
        if not path.is_absolute():
            return PurePosixPath(*path.parts).as_posix()
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(path)  # outside the study folder: kept as it is

    def resolve_path(self, stored: str | None) -> Path | None:
        """A stored path as a path on this machine: relative ones against the study folder; absolute ones under
        the folder an older version of the file was written in, mapped onto the current folder."""
        if stored is None:
            return None
        path = Path(stored)
        if not path.is_absolute():
            return self.root / path
        for old in self.old_roots():
            try:
                return self.root / path.relative_to(old)
            except ValueError:
                continue
        return path

    def old_roots(self) -> list[Path]:
        """The folders this study was written in when it stored absolute paths: ROOT of every ROOT/runs/RUN_ID
        (or ROOT/runs/PREFIX-RUN_ID, `study.folders`)."""

        def names_run(name: str, run_id: str) -> bool:
            return name == run_id or name.endswith(f"-{run_id}")

        if self._old_roots is None:
            roots: set[Path] = set()
            for run_id, run_dir in self.conn.execute("SELECT run_id, run_dir FROM runs WHERE run_dir IS NOT NULL"):
                path = Path(run_dir)
                if path.is_absolute() and names_run(path.name, run_id) and path.parent.name == RUNS_FOLDER:
                    roots.add(path.parent.parent)
            for run_id, stored in self.conn.execute("SELECT run_id, path FROM checkpoints WHERE path IS NOT NULL"):
                parts = Path(stored).parts
                if Path(stored).is_absolute():
                    roots.update(
                        Path(*parts[:i])
                        for i in range(1, len(parts) - 1)
                        if parts[i] == RUNS_FOLDER and names_run(parts[i + 1], run_id)
                    )
            self._old_roots = sorted(roots, key=lambda p: -len(p.parts))  # the deepest first
        return self._old_roots

    def relativize_paths(self) -> int:
        """Rewrite the absolute paths of an older file that lie in the study folder as relative ones; returns
        how many were rewritten."""
        changed = 0
        with self.transaction():
            for table, key, column in (("runs", "run_id", "run_dir"), ("checkpoints", "checkpoint_id", "path")):
                rows = self.conn.execute(f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL").fetchall()
                for row_key, stored in rows:
                    if not Path(stored).is_absolute():
                        continue
                    relative = self.stored_path(Path(stored) if (p := self.resolve_path(stored)) is None else p)
                    if relative != stored:
                        self.conn.execute(f"UPDATE {table} SET {column}=? WHERE {key}=?", (relative, row_key))
                        changed += 1
        self._old_roots = None
        return changed

    # -- work --------------------------------------------------------------------------------------------------

    def done_units(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT unit_id FROM work")}

    def commit_unit(self, unit: dict[str, Any]) -> None:
        """Write a unit's rows (see `executors.py` for the kinds) and its done-mark in one transaction."""
        delay = float(os.environ.get(DELAY_ENV) or 0)
        if delay:
            time.sleep(delay)
        with self.transaction():
            kind, machine = unit["kind"], unit.get("machine")
            machine_id = self.add_machine(machine)
            if kind == "train":
                self.add_run(unit["run_id"], unit["config"], unit["run_dir"], status="trained", machine=machine)
                self.conn.execute("DELETE FROM checkpoints WHERE run_id=?", (unit["run_id"],))
                for c in unit["checkpoints"]:
                    self.add_checkpoint(
                        c["checkpoint_id"],
                        unit["run_id"],
                        c["step"],
                        c["epoch"],
                        c["path"],
                        c["dev_accuracy"],
                        c["is_best"],
                        c["is_last"],
                    )
                checkpoint_id, item = None, None
            elif kind == "eval":
                self.add_evaluation(
                    unit["checkpoint_id"],
                    unit["task"],
                    unit["language"],
                    unit["split"],
                    unit["data"],
                    unit["num_examples"],
                    unit["accuracy"],
                    machine,
                )
                checkpoint_id, item = unit["checkpoint_id"], unit["language"]
            elif kind == "measure":
                self.add_measure(
                    unit["checkpoint_id"],
                    unit["measure"],
                    unit["config"],
                    unit["data"],
                    unit["value"],
                    unit["spread"],
                    unit["num_samples"],
                    unit["seconds"],
                    unit["details"],
                    machine,
                )
                checkpoint_id, item = unit["checkpoint_id"], unit["measure"]
            elif kind == "group":
                self.conn.execute(
                    "INSERT OR REPLACE INTO group_measures (group_id, measure, run_ids, checkpoint_ids, value, "
                    "details, seconds, created, machine_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        unit["run_id"],
                        unit["measure"],
                        json.dumps(unit["run_ids"]),
                        json.dumps(unit["checkpoint_ids"]),
                        unit["value"],
                        json.dumps(unit["details"], default=str),
                        unit["seconds"],
                        time.time(),
                        machine_id,
                    ),
                )
                checkpoint_id, item = None, unit["measure"]
            else:
                raise ValueError(f"unknown unit kind {kind!r}")
            self.conn.execute(
                "INSERT INTO work (unit_id, kind, run_id, checkpoint_id, item, seconds, finished, machine_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(unit_id) DO UPDATE SET seconds=excluded.seconds, "
                "finished=excluded.finished, machine_id=excluded.machine_id",
                (unit["unit_id"], kind, unit["run_id"], checkpoint_id, item, unit.get("seconds"), time.time())
                + (machine_id,),
            )

    def forget_units(self, unit_ids: Iterable[str]) -> None:
        """Take the done-marks off units (their result rows stay until the units are done again)."""
        with self.transaction():
            self.conn.executemany("DELETE FROM work WHERE unit_id=?", [(u,) for u in unit_ids])

    def set_aside_run(self, run_id: str, path: Path) -> int:
        """Move every row of a run (the run, its checkpoints, their evaluations and measures, its units) out of
        the database into a JSON file at `path`; returns the number of rows moved."""
        like = run_id + "/%"
        tables = {
            "runs": ("run_id=?", run_id),
            "checkpoints": ("run_id=?", run_id),
            "evaluations": ("checkpoint_id LIKE ?", like),
            "measures": ("checkpoint_id LIKE ?", like),
            "work": ("run_id=?", run_id),
        }
        dump: dict[str, list[dict[str, Any]]] = {}
        for table, (where, value) in tables.items():
            cursor = self.conn.execute(f"SELECT * FROM {table} WHERE {where}", (value,))
            names = [d[0] for d in cursor.description]
            dump[table] = [dict(zip(names, row)) for row in cursor.fetchall()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dump, indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        with self.transaction():
            for table, (where, value) in tables.items():
                self.conn.execute(f"DELETE FROM {table} WHERE {where}", (value,))
            # a group measure of this run's seeds is redone with the run
            groups = self.conn.execute(
                "SELECT group_id FROM group_measures WHERE run_ids LIKE ?", (f'%"{run_id}"%',)
            ).fetchall()
            for (group,) in groups:
                self.conn.execute("DELETE FROM work WHERE kind='group' AND run_id=?", (group,))
        return sum(len(rows) for rows in dump.values())

    def checkpoints_of(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT checkpoint_id, step, epoch, path, dev_accuracy, is_best, is_last FROM checkpoints "
            "WHERE run_id=? ORDER BY step",
            (run_id,),
        ).fetchall()
        keys = ("checkpoint_id", "step", "epoch", "path", "dev_accuracy", "is_best", "is_last")
        return [dict(zip(keys, row)) for row in rows]
