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
``owner``          TEXT      who claimed the case last (``I/K``: part I of K; empty for an unsharded batch)
``lease_until``    REAL      Unix time until which that claim holds
=================  ========  ===================================================================================

``runs``: ``run_id``, ``started_at``, ``finished_at``, ``settings_json``, ``done``, ``skipped``, ``failed``,
``interrupted`` (1 when the run ended by an interrupt), ``part`` (``I/K`` for one part of a sharded batch).
``assignments``: ``case_id``, ``part``, ``input_path`` — which part of a sharded batch each case belongs to.

Several processes share one ledger when a batch is sharded (``torchrun`` ranks, or ``--num-parts``/``--part-id``
jobs): each case is *claimed* in one immediate transaction (:meth:`Ledger.claim`) with the owner's part and a lease
(``owner``, ``lease_until``), so a case is predicted exactly once even when parts overlap, and a killed part's cases
are taken over by the next run of that part.

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
#: ``PRAGMA user_version`` of the current layout (2: the ``interrupted`` status; 3: claims with leases, parts).
SCHEMA_VERSION = 3
#: How long a claim on a case holds while its owner works on it (seconds); a claim older than this may be taken over.
LEASE_SECONDS = 6 * 3600.0

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
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    settings_json TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    part TEXT
);
CREATE TABLE IF NOT EXISTS assignments (
    case_id TEXT PRIMARY KEY,
    part TEXT NOT NULL,
    input_path TEXT NOT NULL
);
"""
_CASE_COLUMNS_V1 = ("case_id, input_path, fingerprint, settings, status, error, output_path, started_at, finished_at, "
                    "timings, attempts")


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
        self._execute("PRAGMA busy_timeout = 60000")  # several parts of one batch write the ledger at once
        self._execute("PRAGMA journal_mode=WAL")
        version = int(self._execute("PRAGMA user_version").fetchone()[0])
        has_cases = self._execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'cases'").fetchone()
        if version < SCHEMA_VERSION and has_cases:
            self._migrate(version)
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

    def _migrate(self, version: int) -> None:
        """Bring an older ledger to the current layout, keeping every row."""
        if version < 2:  # no 'interrupted' status: rebuild the table with the new CHECK
            create_cases = _SCHEMA.split("CREATE TABLE IF NOT EXISTS runs")[0]
            self._script(f"BEGIN; ALTER TABLE cases RENAME TO cases_v1;{create_cases}"
                         f"INSERT INTO cases ({_CASE_COLUMNS_V1}) SELECT {_CASE_COLUMNS_V1} FROM cases_v1; "
                         "DROP TABLE cases_v1; COMMIT;")
        else:
            self._script("BEGIN; ALTER TABLE cases ADD COLUMN owner TEXT; ALTER TABLE cases ADD COLUMN lease_until "
                         "REAL; COMMIT;")
        if not any(row[1] == "part" for row in self._execute("PRAGMA table_info(runs)")):
            self._execute("ALTER TABLE runs ADD COLUMN part TEXT")

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

    def claim(self, case_id: str, input_path: str, fingerprint: str, settings: str, owner: str = "",
              lease_seconds: float = LEASE_SECONDS) -> bool:
        """Claim ``case_id`` for ``owner`` and mark it running (a new attempt), unless it is not to be done now.

        In one immediate transaction, so that among processes sharing the ledger exactly one claims a case: the claim
        fails when the case is already done with this input and these settings (and its outputs exist), or when
        another owner's claim on it still holds (its lease has not run out).

        Returns:
            Whether this owner now holds the case.
        """
        now = time.time()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT status, owner, lease_until FROM cases WHERE case_id = ?",
                                  (case_id,)).fetchone()
            if row is not None and row[0] == "running" and row[1] != owner and (row[2] or 0) > now:
                self.db.execute("ROLLBACK")
                return False
            if row is not None and self.is_done(case_id, fingerprint, settings):
                self.db.execute("ROLLBACK")
                return False
            self.db.execute(
                "INSERT INTO cases (case_id, input_path, fingerprint, settings, status, started_at, attempts, owner, "
                "lease_until) VALUES (?, ?, ?, ?, 'running', ?, 1, ?, ?) ON CONFLICT(case_id) DO UPDATE SET "
                "input_path = excluded.input_path, fingerprint = excluded.fingerprint, settings = excluded.settings, "
                "status = 'running', error = NULL, started_at = excluded.started_at, finished_at = NULL, "
                "timings = NULL, attempts = attempts + 1, owner = excluded.owner, lease_until = excluded.lease_until",
                (case_id, input_path, fingerprint, settings, now, owner, now + lease_seconds))
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise OutputError(f"cannot update the ledger: {_problem(exc, self.path.parent)}", self.path) from None
        return True

    def assign(self, cases: Iterable[tuple[str, str]], part: str) -> None:
        """Record which part of a sharded batch ``cases`` (``(case id, input)``) belong to (for ``--status``)."""
        self._execute("BEGIN IMMEDIATE")
        try:
            for case_id, input_path in cases:
                self._execute("INSERT INTO assignments (case_id, part, input_path) VALUES (?, ?, ?) ON CONFLICT("
                              "case_id) DO UPDATE SET part = excluded.part, input_path = excluded.input_path",
                              (case_id, part, input_path))
        finally:
            self._execute("COMMIT")

    def status(self) -> dict[str, dict[str, int]]:
        """Per part: cases assigned, ``done``, ``failed``, ``running``, ``interrupted`` and ``pending``."""
        rows = self._execute("SELECT a.part, c.status FROM assignments a LEFT JOIN cases c ON c.case_id = a.case_id"
                             ).fetchall()
        if not rows:  # a batch run as one process: one part, the cases it recorded
            rows = [("1/1", status) for (status,) in self._execute("SELECT status FROM cases")]
        out: dict[str, dict[str, int]] = {}
        for part, status in rows:
            counts = out.setdefault(part, dict.fromkeys(("assigned", "done", "failed", "running", "interrupted",
                                                         "pending"), 0))
            counts["assigned"] += 1
            counts[status if status in counts else "pending"] += 1
        return dict(sorted(out.items()))

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

    def close_interrupted(self, owner: str | None = None) -> list[str]:
        """Close the rows a killed run left ``running`` as ``interrupted``; return their case ids.

        Args:
            owner: Close only this owner's rows (a part whose lock this process now holds, so their previous holder
                is gone) and rows whose lease ran out; ``None`` (a whole batch holding the folder alone): every
                running row.
        """
        where = "status = 'running'"
        args: tuple[Any, ...] = ()
        if owner is not None:
            where += " AND (owner = ? OR lease_until < ?)"
            args = (owner, time.time())
        ids = [r[0] for r in self._execute(f"SELECT case_id FROM cases WHERE {where} ORDER BY case_id", args)]
        if ids:
            self._execute(f"UPDATE cases SET status = 'interrupted', error = 'the run stopped while predicting this "
                          f"case' WHERE {where}", args)
        runs = "finished_at IS NULL" + ("" if owner is None else " AND part = ?")
        self._execute(f"UPDATE runs SET interrupted = 1 WHERE {runs}", () if owner is None else (owner,))
        return ids

    def begin_run(self, settings: Mapping[str, Any], part: str | None = None) -> int:
        """Record the start of an invocation (of one part of a sharded batch, when ``part`` is given)."""
        cur = self._execute("INSERT INTO runs (started_at, settings_json, part) VALUES (?, ?, ?)",
                            (time.time(), json.dumps(settings, sort_keys=True, default=str), part))
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
