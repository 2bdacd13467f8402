"""The outbox: results waiting to be sent, each sent once, failed sends retried and reported.

One SQLite file (``outbox.sqlite`` in the output folder), table ``sends``, one row per (file, destination):

===================  ========  ======================================================================================
column               type      meaning
===================  ========  ======================================================================================
``file``             TEXT      the result file (DICOM SEG or RTSTRUCT)
``destination``      TEXT      ``AET@HOST:PORT`` or a DICOMweb base URL
``sop_instance_uid`` TEXT      the file's SOPInstanceUID (a file re-written with the same UID is the same result)
``series_uid``       TEXT      the source series (for reports)
``status``           TEXT      ``pending``, ``sent`` or ``failed`` (gave up after ``max_attempts``)
``attempts``         INTEGER   sends tried
``error``            TEXT      the last failure, one line
``next_attempt_at``  REAL      Unix time before which a pending row is not tried again
``sent_at``          REAL      Unix time it was sent
===================  ========  ======================================================================================

A row is marked ``sent`` only after the destination acknowledged the file; a process killed between the two resends
it, which the destination takes as the same instance again (same SOPInstanceUID: the archive keeps one copy), so no
result is ever stored twice. Failed attempts wait ``retry_after × attempts`` seconds (linear back-off) before the
next one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError, OutputError

OUTBOX_NAME = "outbox.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sends (
    file TEXT NOT NULL,
    destination TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    sent_at REAL,
    PRIMARY KEY (file, destination)
);
"""


@dataclass(frozen=True)
class Send:
    """One row of ``sends``."""

    file: str
    destination: str
    sop_instance_uid: str
    series_uid: str
    status: str
    attempts: int
    error: str | None
    next_attempt_at: float
    sent_at: float | None


class Outbox:
    """The outbox of an output folder (see the module docstring); safe to use from several threads."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / OUTBOX_NAME
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot open the outbox: {' '.join(str(exc).split())[:200]}", self.path) from None

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self.db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise OutputError(f"cannot update the outbox: {' '.join(str(exc).split())[:200]}",
                                  self.path) from None

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(self, files: Iterable[str | Path], destination: str, series_uid: str = "") -> int:
        """Queue files for ``destination``.

        A file already queued or sent with the same SOPInstanceUID is kept as it is; one re-written with a new
        SOPInstanceUID (a new result) is queued again.

        Returns:
            How many files were queued.
        """
        import pydicom

        queued = 0
        for file in files:
            uid = str(pydicom.dcmread(str(file), stop_before_pixels=True,
                                      specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            row = self._execute("SELECT sop_instance_uid FROM sends WHERE file = ? AND destination = ?",
                                (str(file), destination))
            if row and row[0][0] == uid:
                continue
            self._execute(
                "INSERT INTO sends (file, destination, sop_instance_uid, series_uid, status, attempts, error, "
                "next_attempt_at, sent_at) VALUES (?, ?, ?, ?, 'pending', 0, NULL, 0, NULL) "
                "ON CONFLICT(file, destination) DO UPDATE SET sop_instance_uid = excluded.sop_instance_uid, "
                "series_uid = excluded.series_uid, status = 'pending', attempts = 0, error = NULL, "
                "next_attempt_at = 0, sent_at = NULL", (str(file), destination, uid, series_uid))
            queued += 1
        return queued

    def rows(self, status: str | None = None) -> list[Send]:
        """All rows (or those with ``status``), oldest first."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        return [Send(*r) for r in self._execute(
            "SELECT file, destination, sop_instance_uid, series_uid, status, attempts, error, next_attempt_at, "
            f"sent_at FROM sends {where} ORDER BY rowid", args)]

    def due(self, now: float | None = None) -> list[Send]:
        """Pending rows whose back-off has passed."""
        now = time.time() if now is None else now
        return [s for s in self.rows("pending") if s.next_attempt_at <= now]

    def mark_sent(self, send: Send) -> None:
        """Record that ``send`` was acknowledged."""
        self._execute("UPDATE sends SET status = 'sent', attempts = attempts + 1, error = NULL, sent_at = ? "
                      "WHERE file = ? AND destination = ?", (time.time(), send.file, send.destination))

    def mark_failed(self, send: Send, error: str, retry_after: float, max_attempts: int) -> str:
        """Record a failed attempt; returns the new status (``failed`` once ``max_attempts`` are used)."""
        attempts = send.attempts + 1
        status = "failed" if attempts >= max_attempts else "pending"
        self._execute("UPDATE sends SET status = ?, attempts = ?, error = ?, next_attempt_at = ? "
                      "WHERE file = ? AND destination = ?",
                      (status, attempts, " ".join(error.split()), time.time() + retry_after * attempts, send.file,
                       send.destination))
        return status

    def retry_failed(self) -> int:
        """Put every ``failed`` row back to ``pending`` (a new run tries them again); returns how many."""
        count = len(self.rows("failed"))
        self._execute("UPDATE sends SET status = 'pending', attempts = 0, next_attempt_at = 0 "
                      "WHERE status = 'failed'")
        return count

    def counts(self) -> dict[str, int]:
        """Rows per status."""
        return {s: n for s, n in self._execute("SELECT status, COUNT(*) FROM sends GROUP BY status")}


def sender(destination: str, calling_aet: str = "MEDSEG") -> Callable[[Sequence[str | Path]], None]:
    """A function that sends files to ``destination`` (C-STORE or STOW-RS), raising on failure."""
    from medseg.pacs.address import DicomWebTarget, parse_destination, require_pacs_extra

    require_pacs_extra("--send-to")
    target = parse_destination(destination)
    if isinstance(target, DicomWebTarget):
        from medseg.pacs import dicomweb

        return lambda files: dicomweb.store_files(files, target.base)
    from medseg.pacs import dimse

    return lambda files: dimse.store_files(files, target, calling_aet)


def send_due(outbox: Outbox, *, calling_aet: str = "MEDSEG", retry_after: float = 30.0, max_attempts: int = 10,
             report: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Send every due row, each file on its own so that one failure does not hold back the others.

    Args:
        outbox: The outbox.
        calling_aet: Our AE title for C-STORE.
        retry_after: Back-off unit in seconds (attempt ``n`` waits ``n × retry_after``).
        max_attempts: Attempts before a row is given up (``failed``).
        report: Called with one line per failure (no patient data: the series UID and the error).

    Returns:
        ``(sent, failed attempts)``.
    """
    sent = failed = 0
    senders: dict[str, Callable[[Sequence[str | Path]], None]] = {}
    for item in outbox.due():
        try:
            if not Path(item.file).is_file():
                raise OutputError("the result file is gone", item.file)
            send = senders.setdefault(item.destination, sender(item.destination, calling_aet))
            send([item.file])
        except Exception as exc:  # a network library's own error counts as a failed attempt like ours
            problem = exc.problem if isinstance(exc, MedsegError) else \
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            status = outbox.mark_failed(item, problem, retry_after, max_attempts)
            failed += 1
            if report is not None:
                then = "gave up" if status == "failed" else f"retry in {retry_after * (item.attempts + 1):.0f} s"
                report(f"send of series {item.series_uid or '?'} to {item.destination} failed (attempt "
                       f"{item.attempts + 1}/{max_attempts}, {then}): {problem}")
            continue
        outbox.mark_sent(item)
        sent += 1
    return sent, failed
