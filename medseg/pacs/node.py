"""``medseg listen``: a DICOM storage SCP that segments every series it receives and sends the results on.

The node keeps one folder::

    NODE/
      incoming/STUDY/SERIES/SOP.dcm   instances as received (written atomically before they are acknowledged)
      node.sqlite                     one row per series: receiving → complete → predicting → predicted → sent
      results/                        ``medseg predict``'s output folder (SEG, RTSTRUCT, …; its ledger.sqlite)
      outbox.sqlite                   results to send (:mod:`medseg.pacs.outbox`)

How a series goes through it:

1. **receiving** — instances arrive by C-STORE from any calling AE title in the allow-list (all when none is given;
   others are refused at association). An instance is acknowledged only once its file is on disk, so an
   acknowledged instance is never lost; an instance received again (a sender repeating a series) changes nothing.
2. **complete** — no instance arrived for ``idle`` seconds.
3. **predicting** — the series is segmented with the model loaded once at start
   (:func:`medseg.inference.run_batch`: the output ledger skips a series already predicted with the same input and
   settings).
4. **predicted** — the DICOM results are queued in the outbox for each destination; **sent** once every one was
   acknowledged, **send_failed** when one was given up after ``max_attempts`` (reported; :meth:`Listener.report`).
   A failed prediction is **failed**, with its error.

A new instance for a series already past *receiving* (the modality sent more slices) opens it again: it is predicted
anew once complete, and its new results are sent. On restart (after a crash, a kill or a stop) every row is picked up
where it was: *receiving* series wait ``idle`` seconds from the restart for the sender to repeat what it could not
send, *predicting* ones are predicted again, queued results are sent; instances on disk that the database missed
(killed between the two) are counted in. Together with the outbox's reproducible SOP Instance UIDs nothing received is
lost and no result reaches a destination twice.

Logs name series by their SeriesInstanceUID and peers by AE title, never patient data.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError, OutputError, PacsError

NODE_DB = "node.sqlite"
INCOMING = "incoming"
RESULTS = "results"
#: Series states, in order.
STATES = ("receiving", "complete", "predicting", "predicted", "sent", "send_failed", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    folder TEXT NOT NULL,
    calling_aet TEXT NOT NULL DEFAULT '',
    instances INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    outputs TEXT,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SeriesRow:
    """One row of ``series``."""

    series_uid: str
    study_uid: str
    folder: str
    calling_aet: str
    instances: int
    first_received: float
    last_received: float
    status: str
    error: str | None
    outputs: list[str]
    updated_at: float


class SeriesBook:
    """The node's series table (``node.sqlite``), safe to use from the association threads and the main loop."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / NODE_DB
        self._lock = threading.Lock()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot open the node's database: {' '.join(str(exc).split())[:200]}",
                              self.path) from None

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self.db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise OutputError(f"cannot update the node's database: {' '.join(str(exc).split())[:200]}",
                                  self.path) from None

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def received(self, series_uid: str, study_uid: str, folder: Path, calling_aet: str, new: bool,
                 now: float | None = None) -> str:
        """Record an instance of a series; returns the series' status afterwards.

        A new instance opens a finished series again (``receiving``); a repeated one only keeps a receiving
        series' idle clock running.
        """
        now = time.time() if now is None else now
        rows = self._execute("SELECT status FROM series WHERE series_uid = ?", (series_uid,))
        if not rows:
            self._execute("INSERT INTO series (series_uid, study_uid, folder, calling_aet, instances, first_received, "
                          "last_received, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'receiving', ?)",
                          (series_uid, study_uid, str(folder), calling_aet, int(new), now, now, now))
            return "receiving"
        status = rows[0][0]
        if new:
            self._execute("UPDATE series SET instances = instances + 1, last_received = ?, status = 'receiving', "
                          "error = NULL, calling_aet = ?, updated_at = ? WHERE series_uid = ?",
                          (now, calling_aet, now, series_uid))
            return "receiving"
        if status == "receiving":
            self._execute("UPDATE series SET last_received = ? WHERE series_uid = ?", (now, series_uid))
        return str(status)

    def get(self, series_uid: str) -> SeriesRow | None:
        """The row of a series, or ``None``."""
        rows = self.rows(where="series_uid = ?", args=(series_uid,))
        return rows[0] if rows else None

    def rows(self, status: str | None = None, *, where: str = "", args: tuple[Any, ...] = ()) -> list[SeriesRow]:
        """Rows (with ``status``, or matching ``where``), oldest first."""
        if status is not None:
            where, args = "status = ?", (status,)
        found = self._execute(
            "SELECT series_uid, study_uid, folder, calling_aet, instances, first_received, last_received, status, "
            f"error, outputs, updated_at FROM series {'WHERE ' + where if where else ''} ORDER BY first_received", args)
        return [SeriesRow(*r[:9], json.loads(r[9]) if r[9] else [], r[10]) for r in found]  # type: ignore[arg-type]

    def set_status(self, series_uid: str, status: str, *, error: str | None = None,
                   outputs: Sequence[str] | None = None, only_if: str | None = None) -> bool:
        """Move a series to ``status`` (only from ``only_if`` when given); returns whether it moved."""
        if status not in STATES:
            raise ValueError(status)
        sql = "UPDATE series SET status = ?, error = ?, updated_at = ?"
        args: list[Any] = [status, None if error is None else " ".join(error.split()), time.time()]
        if outputs is not None:
            sql += ", outputs = ?"
            args.append(json.dumps(list(outputs)))
        sql += " WHERE series_uid = ?"
        args.append(series_uid)
        if only_if is not None:
            sql += " AND status = ?"
            args.append(only_if)
        with self._lock:
            try:
                return self.db.execute(sql, tuple(args)).rowcount > 0
            except sqlite3.Error as exc:
                raise OutputError(f"cannot update the node's database: {' '.join(str(exc).split())[:200]}",
                                  self.path) from None

    def complete_idle(self, idle_s: float, now: float | None = None) -> list[str]:
        """Mark receiving series without an instance for ``idle_s`` seconds complete; returns their UIDs."""
        now = time.time() if now is None else now
        ready = [r.series_uid for r in self.rows("receiving") if r.last_received <= now - idle_s]
        return [uid for uid in ready if self.set_status(uid, "complete", only_if="receiving")]

    def resume(self, incoming: Path, now: float | None = None) -> dict[str, int]:
        """Pick up after a restart (see the module docstring); returns how many series of each kind were resumed."""
        now = time.time() if now is None else now
        counted = self._count_disk(incoming, now)
        receiving = len(self.rows("receiving"))
        self._execute("UPDATE series SET last_received = ? WHERE status = 'receiving'", (now,))
        predicting = len(self.rows("predicting"))
        self._execute("UPDATE series SET status = 'complete' WHERE status = 'predicting'")
        return {"receiving": receiving, "predicting": predicting, "found_on_disk": counted}

    def _count_disk(self, incoming: Path, now: float) -> int:
        """Bring the instance counts up to the files on disk (a kill between a write and its record)."""
        changed = 0
        if not incoming.is_dir():
            return 0
        for study in sorted(p for p in incoming.iterdir() if p.is_dir()):
            for series in sorted(p for p in study.iterdir() if p.is_dir()):
                files = sum(1 for f in series.glob("*.dcm"))
                row = self.get(series.name)
                if row is None:
                    self._execute("INSERT INTO series (series_uid, study_uid, folder, instances, first_received, "
                                  "last_received, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'receiving', ?)",
                                  (series.name, study.name, str(series), files, now, now, now))
                    changed += 1
                elif row.instances != files:
                    self._execute("UPDATE series SET instances = ? WHERE series_uid = ?", (files, series.name))
                    if row.status != "receiving":
                        self.set_status(series.name, "receiving")
                    changed += 1
        return changed


@dataclass
class NodeConfig:
    """How the node listens, predicts and sends.

    Attributes:
        aet: Our AE title (called by senders, calling for our sends).
        port: TCP port to listen on.
        bind: Address to listen on (``0.0.0.0``: every interface).
        allow: Calling AE titles accepted (empty: any).
        idle_s: Seconds without an instance after which a series is complete.
        formats: Output formats (``dicom-seg``, ``dicom-rtstruct``, …); the DICOM ones are sent.
        send_to: Destinations (``AET@HOST:PORT`` or DICOMweb base URLs).
        retry_after_s: Back-off unit of failed sends.
        max_attempts: Attempts before a send is given up.
        poll_s: How often the main loop looks for work.
    """

    aet: str
    port: int
    bind: str = "0.0.0.0"
    allow: tuple[str, ...] = ()
    idle_s: float = 30.0
    formats: tuple[str, ...] = ("dicom-seg",)
    send_to: tuple[str, ...] = ()
    retry_after_s: float = 30.0
    max_attempts: int = 10
    poll_s: float = 0.5


@dataclass
class Listener:
    """The running node (see the module docstring).

    Args:
        config: What to listen on and where to send.
        folder: The node's folder.
        predict: ``predict(cases, results_folder) -> BatchSummary``: runs the loaded model over cases (the CLI binds
            :func:`medseg.inference.run_batch` with the predictor, formats, names and settings).
        log: Where status lines go.
    """

    config: NodeConfig
    folder: Path
    predict: Callable[[Sequence[Any], Path], Any]
    log: Callable[[str], None] = print
    _server: Any = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        from medseg.pacs.outbox import Outbox

        self.folder = Path(self.folder)
        self.incoming = self.folder / INCOMING
        self.results = self.folder / RESULTS
        self.book = SeriesBook(self.folder)
        self.outbox = Outbox(self.folder)

    # receiving -------------------------------------------------------------------------------------------------

    def _on_store(self, event: Any) -> int:
        from medseg.pacs.dimse import SUCCESS, store_instance

        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path, new = store_instance(ds, self.incoming)
            series = str(ds.SeriesInstanceUID)
            before = self.book.get(series)
            status = self.book.received(series, str(ds.StudyInstanceUID), path.parent,
                                        str(event.assoc.requestor.ae_title), new)
            if new and (before is None or before.status != "receiving") and status == "receiving":
                again = "" if before is None else f" again (was {before.status})"
                self.log(f"series {series} from {event.assoc.requestor.ae_title}: receiving{again}")
        except Exception as exc:
            self.log(f"could not store an instance: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            return 0xA700  # out of resources: the sender keeps the instance and reports the failure
        return SUCCESS

    def _on_rejected(self, event: Any) -> None:
        self.log(f"refused an association from {event.assoc.requestor.ae_title} at "
                 f"{event.assoc.requestor.address} (not in the allow-list)")

    def start(self) -> None:
        """Resume after a restart and start accepting associations.

        Raises:
            PacsError: The port cannot be opened.
        """
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        resumed = self.book.resume(self.incoming)
        if any(resumed.values()):
            self.log(f"resumed: {resumed['receiving']} series still receiving, {resumed['predicting']} interrupted "
                     f"while predicting, {resumed['found_on_disk']} brought up to the instances on disk")
        ae = AE(ae_title=self.config.aet)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        ae.maximum_associations = 8
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allow:
            ae.require_calling_aet = list(self.config.allow)
        try:
            self._server = ae.start_server((self.config.bind, self.config.port), block=False, evt_handlers=[
                (evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)])
        except OSError as exc:
            raise PacsError(f"cannot listen on {self.config.bind}:{self.config.port}: "
                            f"{exc.strerror or exc}") from None
        allow = ", ".join(self.config.allow) if self.config.allow else "any calling AE title"
        self.log(f"listening as {self.config.aet} on {self.config.bind}:{self.config.port} (accepting {allow}; a "
                 f"series is complete after {self.config.idle_s:g} s without an instance)")

    # working ---------------------------------------------------------------------------------------------------

    def step(self, now: float | None = None) -> bool:
        """Complete idle series, predict one complete series, send what is due; returns whether it did anything."""
        from medseg.pacs.outbox import send_due

        did = False
        for uid in self.book.complete_idle(self.config.idle_s, now):
            row = self.book.get(uid)
            self.log(f"series {uid}: complete ({row.instances if row else '?'} instance(s))")
            did = True
        ready = self.book.rows("complete")
        if ready:
            self._process(ready[0])
            did = True
        if self.config.send_to:
            sent, failed = send_due(self.outbox, calling_aet=self.config.aet, retry_after=self.config.retry_after_s,
                                    max_attempts=self.config.max_attempts, report=self.log)
            did = did or bool(sent or failed)
            self._settle()
        return did

    def _process(self, row: SeriesRow) -> None:
        from medseg.inference import discover_cases
        from medseg.inference.ledger import Ledger

        if not self.book.set_status(row.series_uid, "predicting", only_if="complete"):
            return
        start = time.perf_counter()
        try:
            cases, _ = discover_cases(row.folder)
            summary = self.predict(cases, self.results)
            if summary.failed:
                raise PacsError("; ".join(error for _, error in summary.failed))
            if summary.stopped:
                raise PacsError(summary.stopped)
            with Ledger(self.results) as ledger:
                outputs = [p for c in cases if (r := ledger.get(c.case_id)) is not None for p in r.outputs]
        except MedsegError as exc:
            self.book.set_status(row.series_uid, "failed", error=exc.problem)
            self.log(f"series {row.series_uid}: prediction failed: {exc.problem}")
            return
        current = self.book.get(row.series_uid)
        if current is not None and current.status != "predicting":
            return  # new instances arrived meanwhile: it is predicted again once complete
        dicom = [p for p in outputs if p.endswith(".dcm")]
        for destination in self.config.send_to:
            self.outbox.enqueue(dicom, destination, row.series_uid)
        self.book.set_status(row.series_uid, "predicted" if self.config.send_to else "sent", outputs=outputs,
                             only_if="predicting")
        where = f"; {len(dicom)} result(s) queued for {', '.join(self.config.send_to)}" if self.config.send_to else ""
        self.log(f"series {row.series_uid}: predicted in {time.perf_counter() - start:.1f} s{where}")

    def _settle(self) -> None:
        """Move predicted series whose sends all ended to ``sent`` or ``send_failed``."""
        sends = self.outbox.rows()
        for row in self.book.rows("predicted"):
            mine = [s for s in sends if s.series_uid == row.series_uid and s.file in row.outputs]
            if not mine or any(s.status == "pending" for s in mine):
                continue
            failed = [s for s in mine if s.status == "failed"]
            if failed:
                self.book.set_status(row.series_uid, "send_failed", error=failed[0].error, only_if="predicted")
                self.log(f"series {row.series_uid}: gave up sending {len(failed)} result(s): {failed[0].error}")
            else:
                self.book.set_status(row.series_uid, "sent", only_if="predicted")
                self.log(f"series {row.series_uid}: sent to {', '.join(sorted({s.destination for s in mine}))}")

    def serve(self, *, until_idle: bool = False) -> None:
        """Work until :meth:`stop` (or, with ``until_idle``, until nothing is left to do: for tests and scripts)."""
        while not self._stop.is_set():
            did = self.step()
            if until_idle and not did and not self.book.rows("receiving") and not self.outbox.rows("pending"):
                return
            if not did:
                self._stop.wait(self.config.poll_s)

    def stop(self) -> None:
        """Stop the main loop and the server (associations in progress are finished)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def close(self) -> None:
        """Stop and close the databases."""
        self.stop()
        self.book.close()
        self.outbox.close()

    def report(self) -> dict[str, Any]:
        """Series per status, sends per status, and the failures (series UID and error)."""
        return _report(self.book, self.outbox)


def _report(book: SeriesBook, outbox: Any) -> dict[str, Any]:
    rows = book.rows()
    return {
        "series": {s: sum(1 for r in rows if r.status == s) for s in STATES if any(r.status == s for r in rows)},
        "sends": outbox.counts(),
        "failures": [{"series_uid": r.series_uid, "status": r.status, "error": r.error} for r in rows
                     if r.status in ("failed", "send_failed")]
        + [{"series_uid": s.series_uid, "status": f"send {s.status}", "destination": s.destination,
            "attempts": s.attempts, "error": s.error} for s in outbox.rows() if s.error],
    }


def node_report(folder: Path) -> dict[str, Any]:
    """:meth:`Listener.report` of a node folder without starting the node."""
    from medseg.pacs.outbox import Outbox

    if not (Path(folder) / NODE_DB).is_file():
        raise OutputError("not a node folder of `medseg listen` (no node.sqlite)", folder)
    book = SeriesBook(Path(folder))
    outbox = Outbox(Path(folder))
    try:
        return _report(book, outbox)
    finally:
        book.close()
        outbox.close()
