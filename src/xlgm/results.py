"""Results in SQLite: runs, checkpoints, evaluations and measures, keyed by config hashes.

Each row that holds a result names the machine that computed it (`machine_id`, a hash of its record in the
`machines` table: `xlgm.core.machine`); rows of files written before machines were recorded hold NULL.
One file per run directory (`results.sqlite`) or per study. Writes are idempotent (`INSERT ... ON CONFLICT
DO UPDATE`), so a rerun after a crash replaces rows rather than duplicating them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlgm.core.errors import XlgmError
from xlgm.core.machine import machine_kind

if TYPE_CHECKING:
    from typing_extensions import Self

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    run_dir TEXT,
    status TEXT NOT NULL DEFAULT 'created',
    created REAL NOT NULL,
    machine_id TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    checkpoint_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL,
    path TEXT,
    dev_accuracy REAL,
    is_best INTEGER NOT NULL DEFAULT 0,
    is_last INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS evaluations (
    checkpoint_id TEXT NOT NULL,
    task TEXT NOT NULL,
    language TEXT NOT NULL,
    split TEXT NOT NULL,
    data TEXT NOT NULL,
    num_examples INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    created REAL NOT NULL,
    machine_id TEXT,
    PRIMARY KEY (checkpoint_id, task, language, split, data)
);
CREATE TABLE IF NOT EXISTS measures (
    checkpoint_id TEXT NOT NULL,
    measure TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    data TEXT NOT NULL,
    value REAL,
    spread REAL,
    num_samples INTEGER,
    seconds REAL,
    details TEXT,
    config TEXT,
    created REAL NOT NULL,
    machine_id TEXT,
    PRIMARY KEY (checkpoint_id, measure, config_hash, data)
);
CREATE TABLE IF NOT EXISTS machines (
    machine_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    record TEXT NOT NULL,
    created REAL NOT NULL
);
"""
# Columns added after files were first written, with their type: an older file gains them when it is opened, its
# rows holding NULL (`machine_id` NULL: the machine that computed the row was not recorded).
ADDED_COLUMNS = {table: {"machine_id": "TEXT"} for table in ("runs", "evaluations", "measures")}


def config_hash(config: Any, length: int = 12) -> str:
    """A stable id from a config (dataclass or JSON-able): sha256 of its canonical JSON."""
    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# The columns xlgm reads and writes in each table: an existing file whose tables lack them is another
# program's database, refused rather than altered.
COLUMNS = {
    "runs": ("run_id", "config", "run_dir", "status", "created"),
    "checkpoints": ("checkpoint_id", "run_id", "step", "epoch", "path", "dev_accuracy", "is_best", "is_last"),
    "evaluations": ("checkpoint_id", "task", "language", "split", "data", "num_examples", "accuracy", "created"),
    "measures": (
        "checkpoint_id",
        "measure",
        "config_hash",
        "data",
        "value",
        "spread",
        "num_samples",
        "seconds",
        "details",
        "config",
        "created",
    ),
}


def add_missing_columns(conn: sqlite3.Connection, added: dict[str, dict[str, str]]) -> None:
    """Give an older file's tables the columns `added` names (table -> column -> type) that they lack."""
    for table, columns in added.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column, sql_type in columns.items():
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")


class ResultsDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise XlgmError(f"{self.path}: a folder, expected a SQLite results file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60)
        try:
            # The first statement reads the file's header: a file that is not SQLite fails here, unchanged.
            self.conn.execute("PRAGMA schema_version").fetchone()
            self._check_tables()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(SCHEMA)
            add_missing_columns(self.conn, ADDED_COLUMNS)
            self.conn.commit()
        except sqlite3.DatabaseError as err:
            self.conn.close()
            message = str(err).strip() or type(err).__name__
            if "not a database" in message:
                raise XlgmError(f"{self.path}: not a SQLite database") from err
            if "malformed" in message or "corrupt" in message:
                raise XlgmError(f"{self.path}: a damaged SQLite database ({message})") from err
            raise XlgmError(f"{self.path}: cannot be used as a SQLite database ({message})") from err
        except XlgmError:
            self.conn.close()
            raise

    def _check_tables(self) -> None:
        for table, columns in COLUMNS.items():
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in columns if c not in have]
            if have and missing:
                raise XlgmError(
                    f"{self.path}: table {table!r} has no column {', '.join(missing)}: not an xlgm results file"
                )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_machine(self, record: dict | None) -> str | None:
        """Keep a machine record (`xlgm.core.machine`) and return its id, a hash of the record (None for None)."""
        if not record:
            return None
        machine_id = config_hash(record)
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO machines (machine_id, kind, record, created) VALUES (?, ?, ?, ?)",
                (machine_id, machine_kind(record), json.dumps(record, sort_keys=True, default=str), time.time()),
            )
        return machine_id

    def machine(self, machine_id: str | None) -> dict | None:
        """The record kept under `machine_id` (None when unknown)."""
        row = self.conn.execute("SELECT record FROM machines WHERE machine_id=?", (machine_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def add_run(
        self, run_id: str, config: dict, run_dir: str | None, status: str = "created", machine: dict | None = None
    ) -> None:
        """`machine`: the record of what trained the run (`core.machine.combined_record` of its sessions)."""
        machine_id = self.add_machine(machine)
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (run_id, config, run_dir, status, created, machine_id) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET config=excluded.config, run_dir=excluded.run_dir, "
                "status=excluded.status, machine_id=excluded.machine_id",
                (run_id, json.dumps(config, sort_keys=True, default=str), run_dir, status, time.time(), machine_id),
            )

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET status=? WHERE run_id=?", (status, run_id))

    def add_checkpoint(
        self,
        checkpoint_id: str,
        run_id: str,
        step: int,
        epoch: float | None,
        path: str | None,
        dev_accuracy: float | None,
        is_best: bool = False,
        is_last: bool = False,
    ) -> None:
        with self.conn:
            if is_best:
                self.conn.execute("UPDATE checkpoints SET is_best=0 WHERE run_id=?", (run_id,))
            if is_last:
                self.conn.execute("UPDATE checkpoints SET is_last=0 WHERE run_id=?", (run_id,))
            self.conn.execute(
                "INSERT INTO checkpoints (checkpoint_id, run_id, step, epoch, path, dev_accuracy, is_best, is_last) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(checkpoint_id) DO UPDATE SET "
                "step=excluded.step, epoch=excluded.epoch, path=excluded.path, dev_accuracy=excluded.dev_accuracy, "
                "is_best=excluded.is_best, is_last=excluded.is_last",
                (checkpoint_id, run_id, step, epoch, path, dev_accuracy, int(is_best), int(is_last)),
            )

    def add_evaluation(
        self,
        checkpoint_id: str,
        task: str,
        language: str,
        split: str,
        data: str,
        num_examples: int,
        accuracy: float,
        machine: dict | None = None,
    ) -> None:
        machine_id = self.add_machine(machine)
        with self.conn:
            self.conn.execute(
                "INSERT INTO evaluations (checkpoint_id, task, language, split, data, num_examples, accuracy, created, "
                "machine_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "num_examples=excluded.num_examples, accuracy=excluded.accuracy, created=excluded.created, "
                "machine_id=excluded.machine_id",
                (checkpoint_id, task, language, split, data, num_examples, accuracy, time.time(), machine_id),
            )

    def add_measure(
        self,
        checkpoint_id: str,
        measure: str,
        config: dict,
        data: str,
        value: float | None,
        spread: float | None,
        num_samples: int | None,
        seconds: float,
        details: dict,
        machine: dict | None = None,
    ) -> None:
        machine_id = self.add_machine(machine)
        with self.conn:
            self.conn.execute(
                "INSERT INTO measures (checkpoint_id, measure, config_hash, data, value, spread, num_samples, seconds, "
                "details, config, created, machine_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET value=excluded.value, spread=excluded.spread, "
                "num_samples=excluded.num_samples, seconds=excluded.seconds, details=excluded.details, "
                "created=excluded.created, machine_id=excluded.machine_id",
                (
                    checkpoint_id,
                    measure,
                    config_hash(config),
                    data,
                    value,
                    spread,
                    num_samples,
                    seconds,
                    json.dumps(details, default=str),
                    json.dumps(config, sort_keys=True, default=str),
                    time.time(),
                    machine_id,
                ),
            )

    def has_evaluation(self, checkpoint_id: str, task: str, language: str, split: str, data: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM evaluations WHERE checkpoint_id=? AND task=? AND language=? AND split=? AND data=?",
            (checkpoint_id, task, language, split, data),
        ).fetchone()
        return row is not None

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()
