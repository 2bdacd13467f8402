"""The batch ledger: one SQLite file (``ledger.sqlite`` in the output folder) recording every case.

Schema (table ``cases``, one row per case id; ``runs``, one row per invocation):

=================  ========  ===================================================================================
column             type      meaning
=================  ========  ===================================================================================
``case_id``        TEXT PK   case identifier (file name without ending, manifest id, or SeriesInstanceUID)
``input_path``     TEXT      the input file(s) or DICOM folder
``fingerprint``    TEXT      SHA-256 of the input files' paths, sizes and modification times
``settings``       TEXT      SHA-256 of the prediction settings (models, checkpoints, folds, TTA, step, format…)
``status``         TEXT      ``running`` (started, not finished: interrupted), ``done`` or ``failed``
``error``          TEXT      one-line error of a failed case
``output_path``    TEXT      the label output
``started_at``     REAL      Unix time the last attempt started
``finished_at``    REAL      Unix time it ended
``timings``        TEXT      JSON seconds per stage (``load``, ``preprocess``, ``predict``, ``export``, ``write``,
                             ``total``)
``attempts``       INTEGER   attempts so far
=================  ========  ===================================================================================

``runs``: ``run_id``, ``started_at``, ``finished_at``, ``settings_json``, ``done``, ``skipped``, ``failed``,
``interrupted`` (1 when the run ended by an interrupt).

A case is skipped on a re-run when its row is ``done`` with the same fingerprint and settings and its output file
exists; ``running`` (interrupted) and ``failed`` rows are redone. Each status change is committed at once (SQLite
journaling makes it atomic), so a killed process loses at most the case it was working on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_NAME = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    input_path TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    settings TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    error TEXT,
    output_path TEXT,
    started_at REAL,
    finished_at REAL,
    timings TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    settings_json TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0
);
"""


def fingerprint_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 over each file's absolute path, size and modification time (ns), in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        p = Path(path).absolute()
        try:
            st = p.stat()
            digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{p}\0missing\n".encode())
    return digest.hexdigest()


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the settings as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CaseRecord:
    """One row of ``cases``."""

    case_id: str
    input_path: str
    fingerprint: str
    settings: str
    status: str
    error: str | None
    output_path: str | None
    started_at: float | None
    finished_at: float | None
    timings: dict[str, float]
    attempts: int


class Ledger:
    """The SQLite ledger of a batch (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / LEDGER_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.run_id: int | None = None

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, case_id: str) -> CaseRecord | None:
        """The row of ``case_id``, or ``None``."""
        row = self.db.execute("SELECT case_id, input_path, fingerprint, settings, status, error, output_path, "
                              "started_at, finished_at, timings, attempts FROM cases WHERE case_id = ?",
                              (case_id,)).fetchone()
        if row is None:
            return None
        return CaseRecord(*row[:9], json.loads(row[9]) if row[9] else {}, row[10])  # type: ignore[arg-type]

    def records(self) -> list[CaseRecord]:
        """All rows, ordered by case id."""
        ids = [r[0] for r in self.db.execute("SELECT case_id FROM cases ORDER BY case_id")]
        return [r for r in (self.get(i) for i in ids) if r is not None]

    def is_done(self, case_id: str, fingerprint: str, settings: str) -> bool:
        """Whether ``case_id`` finished with this input and these settings and its output still exists."""
        record = self.get(case_id)
        return (record is not None and record.status == "done" and record.fingerprint == fingerprint
                and record.settings == settings and record.output_path is not None
                and Path(record.output_path).is_file())

    def start(self, case_id: str, input_path: str, fingerprint: str, settings: str) -> None:
        """Mark ``case_id`` running (a new attempt)."""
        self.db.execute(
            "INSERT INTO cases (case_id, input_path, fingerprint, settings, status, started_at, attempts) "
            "VALUES (?, ?, ?, ?, 'running', ?, 1) ON CONFLICT(case_id) DO UPDATE SET input_path = excluded.input_path,"
            " fingerprint = excluded.fingerprint, settings = excluded.settings, status = 'running', error = NULL, "
            "started_at = excluded.started_at, finished_at = NULL, timings = NULL, attempts = attempts + 1",
            (case_id, input_path, fingerprint, settings, time.time()))

    def finish(self, case_id: str, output_path: str, timings: Mapping[str, float]) -> None:
        """Mark ``case_id`` done."""
        self.db.execute("UPDATE cases SET status = 'done', output_path = ?, finished_at = ?, timings = ? "
                        "WHERE case_id = ?", (output_path, time.time(), json.dumps(dict(timings)), case_id))

    def fail(self, case_id: str, error: str, timings: Mapping[str, float]) -> None:
        """Mark ``case_id`` failed with a one-line ``error``."""
        self.db.execute("UPDATE cases SET status = 'failed', error = ?, finished_at = ?, timings = ? "
                        "WHERE case_id = ?", (" ".join(error.split()), time.time(), json.dumps(dict(timings)),
                                              case_id))

    def begin_run(self, settings: Mapping[str, Any]) -> int:
        """Record the start of an invocation."""
        cur = self.db.execute("INSERT INTO runs (started_at, settings_json) VALUES (?, ?)",
                              (time.time(), json.dumps(settings, sort_keys=True, default=str)))
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def end_run(self, done: int, skipped: int, failed: int, interrupted: bool) -> None:
        """Record the end of the invocation started by :meth:`begin_run`."""
        self.db.execute("UPDATE runs SET finished_at = ?, done = ?, skipped = ?, failed = ?, interrupted = ? "
                        "WHERE run_id = ?", (time.time(), done, skipped, failed, int(interrupted), self.run_id))

    def counts(self) -> dict[str, int]:
        """Cases per status."""
        return {s: n for s, n in self.db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status")}
