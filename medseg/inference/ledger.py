"""The batch ledger: one SQLite file (``ledger.sqlite`` in the output folder) recording every case.

Schema (table ``cases``, one row per case id; ``runs``, one row per invocation):

=================  ========  ===================================================================================
column             type      meaning
=================  ========  ===================================================================================
``case_id``        TEXT PK   case identifier (file name without ending, manifest id, or SeriesInstanceUID)
``input_path``     TEXT      the input file(s) or DICOM folder
``fingerprint``    TEXT      SHA-256 of the input files' paths, sizes and modification times
``settings``       TEXT      SHA-256 of the prediction settings (models, checkpoints, folds, TTA, step, format…)
``status``         TEXT      ``running``, ``done``, ``failed`` or ``interrupted`` (a run stopped while it was
                             ``running``: closed so when the next run opens the ledger)
``error``          TEXT      one-line error of a failed case
``output_path``    TEXT      the outputs written (one path, or a JSON list of paths for several formats)
``started_at``     REAL      Unix time the last attempt started
``finished_at``    REAL      Unix time it ended
``timings``        TEXT      JSON seconds per stage (``load``, ``preprocess``, ``predict``, ``export``, ``write``,
                             ``total``)
``attempts``       INTEGER   attempts so far
=================  ========  ===================================================================================

``runs``: ``run_id``, ``started_at``, ``finished_at``, ``settings_json``, ``done``, ``skipped``, ``failed``,
``interrupted`` (1 when the run ended by an interrupt).

A case is skipped on a re-run when its row is ``done`` with the same fingerprint and settings and its output files
exist; ``interrupted`` and ``failed`` rows are redone. Each status change is committed at once (SQLite journaling
makes it atomic), so a killed process loses at most the case it was working on. One batch at a time writes an output
folder (:class:`~medseg.utils.files.FolderLock`), so a ``running`` row found when the ledger is opened belongs to a
run that was killed. A database error (a full disk, a read-only folder) is raised as
:class:`~medseg.errors.OutputError` naming the ledger file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import OutputError
from medseg.utils.files import state_digest

LEDGER_NAME = "ledger.sqlite"
#: ``PRAGMA user_version`` of the current layout (2: the ``interrupted`` status).
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    input_path TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    settings TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
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
    return state_digest(paths)


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

    @property
    def outputs(self) -> list[str]:
        """The output files of the case (empty before it finished)."""
        if not self.output_path:
            return []
        if self.output_path.startswith("["):
            return [str(p) for p in json.loads(self.output_path)]
        return [self.output_path]


class Ledger:
    """The SQLite ledger of a batch (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / LEDGER_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot open the ledger: {_problem(exc, self.path.parent)}", self.path) from None
        self._execute("PRAGMA journal_mode=WAL")
        version = int(self._execute("PRAGMA user_version").fetchone()[0])
        if version < SCHEMA_VERSION and self._execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'cases'").fetchone():
            self._migrate()
        self._script(_SCHEMA)
        self._execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.run_id: int | None = None

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise OutputError(f"cannot update the ledger: {_problem(exc, self.path.parent)}", self.path) from None

    def _script(self, sql: str) -> None:
        try:
            self.db.executescript(sql)
        except sqlite3.Error as exc:
            raise OutputError(f"cannot update the ledger: {_problem(exc, self.path.parent)}", self.path) from None

    def _migrate(self) -> None:
        """Bring a version-1 ledger (no ``interrupted`` status) to the current layout, keeping every row."""
        create_cases = _SCHEMA.split("CREATE TABLE IF NOT EXISTS runs")[0]
        self._script("BEGIN; ALTER TABLE cases RENAME TO cases_v1;" + create_cases
                     + "INSERT INTO cases SELECT * FROM cases_v1; DROP TABLE cases_v1; COMMIT;")

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, case_id: str) -> CaseRecord | None:
        """The row of ``case_id``, or ``None``."""
        row = self._execute("SELECT case_id, input_path, fingerprint, settings, status, error, output_path, "
                              "started_at, finished_at, timings, attempts FROM cases WHERE case_id = ?",
                              (case_id,)).fetchone()
        if row is None:
            return None
        return CaseRecord(*row[:9], json.loads(row[9]) if row[9] else {}, row[10])  # type: ignore[arg-type]

    def records(self) -> list[CaseRecord]:
        """All rows, ordered by case id."""
        ids = [r[0] for r in self._execute("SELECT case_id FROM cases ORDER BY case_id")]
        return [r for r in (self.get(i) for i in ids) if r is not None]

    def is_done(self, case_id: str, fingerprint: str, settings: str) -> bool:
        """Whether ``case_id`` finished with this input and these settings and its output still exists."""
        record = self.get(case_id)
        return (record is not None and record.status == "done" and record.fingerprint == fingerprint
                and record.settings == settings and bool(record.outputs)
                and all(Path(p).is_file() for p in record.outputs))

    def start(self, case_id: str, input_path: str, fingerprint: str, settings: str) -> None:
        """Mark ``case_id`` running (a new attempt)."""
        self._execute(
            "INSERT INTO cases (case_id, input_path, fingerprint, settings, status, started_at, attempts) "
            "VALUES (?, ?, ?, ?, 'running', ?, 1) ON CONFLICT(case_id) DO UPDATE SET input_path = excluded.input_path,"
            " fingerprint = excluded.fingerprint, settings = excluded.settings, status = 'running', error = NULL, "
            "started_at = excluded.started_at, finished_at = NULL, timings = NULL, attempts = attempts + 1",
            (case_id, input_path, fingerprint, settings, time.time()))

    def finish(self, case_id: str, outputs: str | Iterable[str], timings: Mapping[str, float]) -> None:
        """Mark ``case_id`` done with the files it wrote."""
        self._execute("UPDATE cases SET status = 'done', output_path = ?, finished_at = ?, timings = ? "
                      "WHERE case_id = ?", (_outputs_text(outputs), time.time(), json.dumps(dict(timings)), case_id))

    def fail(self, case_id: str, error: str, timings: Mapping[str, float],
             outputs: Iterable[str] = ()) -> None:
        """Mark ``case_id`` failed with a one-line ``error`` (and the outputs it still wrote, if any)."""
        self._execute("UPDATE cases SET status = 'failed', error = ?, output_path = ?, finished_at = ?, timings = ? "
                      "WHERE case_id = ?", (" ".join(error.split()), _outputs_text(outputs) or None, time.time(),
                                            json.dumps(dict(timings)), case_id))

    def close_interrupted(self) -> list[str]:
        """Close the rows a killed run left ``running`` as ``interrupted``; return their case ids."""
        ids = [r[0] for r in self._execute("SELECT case_id FROM cases WHERE status = 'running' ORDER BY case_id")]
        if ids:
            self._execute("UPDATE cases SET status = 'interrupted', error = 'the run stopped while predicting this "
                          "case' WHERE status = 'running'")
        self._execute("UPDATE runs SET interrupted = 1 WHERE finished_at IS NULL")
        return ids

    def begin_run(self, settings: Mapping[str, Any]) -> int:
        """Record the start of an invocation."""
        cur = self._execute("INSERT INTO runs (started_at, settings_json) VALUES (?, ?)",
                              (time.time(), json.dumps(settings, sort_keys=True, default=str)))
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def end_run(self, done: int, skipped: int, failed: int, interrupted: bool) -> None:
        """Record the end of the invocation started by :meth:`begin_run`."""
        self._execute("UPDATE runs SET finished_at = ?, done = ?, skipped = ?, failed = ?, interrupted = ? "
                        "WHERE run_id = ?", (time.time(), done, skipped, failed, int(interrupted), self.run_id))

    def counts(self) -> dict[str, int]:
        """Cases per status."""
        return {s: n for s, n in self._execute("SELECT status, COUNT(*) FROM cases GROUP BY status")}


def _outputs_text(outputs: str | Iterable[str]) -> str:
    items = [outputs] if isinstance(outputs, str) else [str(p) for p in outputs]
    return items[0] if len(items) == 1 else (json.dumps(items) if items else "")


def _problem(exc: BaseException, folder: Path | None = None) -> str:
    text = " ".join(str(exc).split())
    if "disk is full" in text or "No space" in text:
        return "no space left on the disk"
    if "disk I/O error" in text and folder is not None:  # SQLite reports a full disk so in WAL mode
        import shutil

        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < 65536:
                return "no space left on the disk"
    if "readonly" in text or "read-only" in text:
        return "the file system is read-only"
    from medseg.utils.files import os_problem

    return os_problem(exc) if isinstance(exc, OSError) else text[:200]
