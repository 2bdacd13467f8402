"""The node's series table and the outbox, without a network: states, repeats, back-off, resuming."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medseg.pacs.node import SeriesBook
from medseg.pacs.outbox import Outbox, send_due


def _copy_with_uid(tmp_path: Path, name: str, uid: str) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = uid
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_outbox_sends_each_result_once_and_backs_off(tmp_path: Path) -> None:
    first = _copy_with_uid(tmp_path, "a_seg.dcm", "1.2.3.1")
    with Outbox(tmp_path) as outbox:
        assert outbox.enqueue([first], "PACS@127.0.0.1:104", "9.9") == 1
        assert outbox.enqueue([first], "PACS@127.0.0.1:104", "9.9") == 0  # the same result: kept as it is
        assert outbox.enqueue([first], "https://pacs/dicom-web", "9.9") == 1  # another destination
        (due, _) = outbox.due()
        assert outbox.mark_failed(due, "down", retry_after=60, max_attempts=3) == "pending"
        assert len(outbox.due()) == 1 and len(outbox.due(time.time() + 61)) == 2  # waits 60 s × 1 attempt
        outbox.mark_sent(outbox.rows("pending")[1])
        assert outbox.enqueue([first], "https://pacs/dicom-web", "9.9") == 0  # sent: never queued again
        _copy_with_uid(tmp_path, "a_seg.dcm", "1.2.3.2")  # predicted anew: a new result under the same name
        assert outbox.enqueue([first], "https://pacs/dicom-web", "9.9") == 1
        row = next(r for r in outbox.rows() if r.destination == "PACS@127.0.0.1:104")
        for _ in range(2):
            outbox.mark_failed(row, "down", retry_after=0, max_attempts=3)
            row = next(r for r in outbox.rows() if r.destination == "PACS@127.0.0.1:104")
        assert row.status == "failed" and row.attempts == 3 and row.error == "down"
        assert outbox.retry_failed() == 1 and outbox.counts() == {"pending": 2}


def test_send_due_reports_failures_in_one_line_without_patient_data(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    pytest.importorskip("dicomweb_client")
    from orthanc import free_port

    path = _copy_with_uid(tmp_path, "b_seg.dcm", "1.2.3.9")
    lines: list[str] = []
    with Outbox(tmp_path) as outbox:
        outbox.enqueue([path], f"NOBODY@127.0.0.1:{free_port()}", "1.2.840.5")
        sent, failed = send_due(outbox, retry_after=5, max_attempts=2, report=lines.append)
        assert (sent, failed) == (0, 1) and outbox.counts() == {"pending": 1}
    (line,) = lines
    assert "series 1.2.840.5" in line and "attempt 1/2, retry in 5 s" in line and "cannot be reached" in line
    assert str(pydicom.dcmread(path).PatientName) not in line


def test_series_book_states_repeats_and_resuming(tmp_path: Path) -> None:
    book = SeriesBook(tmp_path)
    folder = tmp_path / "incoming" / "1.1" / "2.2"
    assert book.received("2.2", "1.1", folder, "PACS", True, now=100.0) == "receiving"
    assert book.received("2.2", "1.1", folder, "PACS", False, now=105.0) == "receiving"  # a repeat keeps it open
    assert book.complete_idle(10, now=110.0) == []
    assert book.complete_idle(10, now=115.0) == ["2.2"]
    assert book.set_status("2.2", "predicting", only_if="complete")
    assert book.set_status("2.2", "sent", outputs=["x_seg.dcm"])
    assert book.received("2.2", "1.1", folder, "PACS", False, now=200.0) == "sent"  # the same instance again
    assert book.received("2.2", "1.1", folder, "PACS", True, now=201.0) == "receiving"  # a new one reopens it
    assert book.get("2.2").instances == 2  # type: ignore[union-attr]
    book.set_status("2.2", "predicting")
    # a restart: the prediction is redone; files the database missed are counted in
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.dcm").write_bytes(b"")
    (tmp_path / "incoming" / "1.1" / "3.3").mkdir()
    (tmp_path / "incoming" / "1.1" / "3.3" / "0.dcm").write_bytes(b"")
    resumed = book.resume(tmp_path / "incoming", now=300.0)
    assert resumed == {"receiving": 2, "predicting": 0, "found_on_disk": 2}
    assert book.get("2.2").status == "receiving" and book.get("2.2").instances == 3  # type: ignore[union-attr]
    assert book.get("3.3").last_received == 300.0  # type: ignore[union-attr]
    book.close()
