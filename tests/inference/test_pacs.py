"""medseg in the hospital, against a real Orthanc PACS on loopback ports (skipped where Orthanc is not installed).

- `medseg listen` receives the real ProstateX T2 series from Orthanc, segments it with a model kept loaded, and the
  SEG and RTSTRUCT arrive back in Orthanc in the same study, referencing the series; it answers C-ECHO and refuses
  calling AE titles outside its allow-list;
- killed in the middle of a series and again while predicting, then restarted, it loses and duplicates nothing;
- a send to a destination that is down is reported and retried until it succeeds, once;
- `medseg predict -i` pulls the series by DICOMweb (WADO-RS) and by DIMSE (C-FIND + C-GET, C-FIND + C-MOVE by
  accession number) and pushes the results with --send-to (STOW-RS, C-STORE), each once across re-runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from orthanc import Orthanc, free_port, require_orthanc, wait_for

pytest.importorskip("pynetdicom")
pytest.importorskip("dicomweb_client")
pytest.importorskip("highdicom")

SERIES = "prostatex_t2_series"
SEG, RTSTRUCT = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3"


@pytest.fixture
def series_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / SERIES).glob("*.dcm"))


def _cli(args: list[str]) -> tuple[int, str]:
    from medseg.cli.main import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main([str(a) for a in args])
    return code, buffer.getvalue()


class Listen:
    """`medseg listen` as a separate process (so that a test can kill it)."""

    def __init__(self, folder: Path, run: Path, port: int, send_to: list[str], *extra: str) -> None:
        self.folder, self.run, self.port, self.send_to, self.extra = folder, run, port, send_to, extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder.parent / f"{folder.name}.log"

    def start(self) -> Listen:
        args = [sys.executable, "-m", "medseg", "listen", "-o", str(self.folder), "--aet", "MEDSEG", "--port",
                str(self.port), "--bind", "127.0.0.1", "-m", str(self.run), "--format", "dicom-seg,dicom-rtstruct",
                "--idle", "2", "--device", "cpu", "--no-tta", "--retry-after", "1", *self.extra]
        for destination in self.send_to:
            args += ["--send-to", destination]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.offset = len(self.text(whole=True))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        wait_for(lambda: "listening as MEDSEG" in self.text() or self.process.poll() is not None, 120,
                 "medseg listen to start")
        assert self.process.poll() is None, self.text()
        return self

    def text(self, whole: bool = False) -> str:
        """The log of the current run (``whole``: of every run)."""
        text = self.log.read_text() if self.log.exists() else ""
        return text if whole else text[getattr(self, "offset", 0):]

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        return int(self.process.returncode)

    def status(self, series_uid: str) -> str | None:
        db = self.folder / "node.sqlite"
        if not db.exists():
            return None
        with contextlib.closing(sqlite3.connect(str(db), timeout=10)) as con:
            row = con.execute("SELECT status FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return row[0] if row else None

    def instances(self, series_uid: str) -> int:
        return len(list((self.folder / "incoming").glob(f"*/{series_uid}/*.dcm")))


def _uids(files: list[Path]) -> dict[str, str]:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID),
            "accession": str(ds.get("AccessionNumber", ""))}


def _results_reference(orthanc: Orthanc, uids: dict[str, str], source_sops: set[str]) -> dict[str, Any]:
    """Check that Orthanc holds one SEG and one RTSTRUCT in the source's study, both referencing the series."""
    counts = orthanc.instances_by_modality()
    assert counts.get("SEG") == 1 and counts.get("RTSTRUCT") == 1, counts
    found = {}
    for modality in ("SEG", "RTSTRUCT"):
        (tags,) = orthanc.instances(modality)
        assert tags["StudyInstanceUID"] == uids["study"]
        instance_id = orthanc.post("/tools/lookup", tags["SOPInstanceUID"].encode())[0]["ID"]
        ds = pydicom.dcmread(io.BytesIO(orthanc.file(instance_id)))
        if modality == "SEG":
            assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["series"]
            referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
            assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        else:
            series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
                .RTReferencedSeriesSequence[0]
            assert series.SeriesInstanceUID == uids["series"]
            referenced = {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence}
            assert ds.StructureSetROISequence[0].ROIName == "wm"
        assert referenced <= source_sops and referenced
        found[modality] = ds
    return found


# ---------------------------------------------------------------------------------------------------------------------


def test_listen_segments_what_orthanc_sends_and_survives_kills(trained_run: Path, series_files: list[Path],
                                                               tmp_path: Path) -> None:
    require_orthanc()
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = free_port()
    uids = _uids(series_files)
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in series_files}
    with Orthanc(tmp_path / "orthanc", modalities={"medseg": ("MEDSEG", port)}) as pacs:
        pacs.upload(series_files)
        listen = Listen(tmp_path / "node", trained_run, port, [pacs.node], "--allow", "ORTHANC").start()
        try:
            assert pacs.post("/modalities/medseg/echo") == {}  # C-ECHO from the PACS
            ae = AE(ae_title="INTRUDER")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", port, ae_title="MEDSEG")
            assert not assoc.is_established and assoc.is_rejected  # not in the allow-list
            wait_for(lambda: "refused an association from INTRUDER" in listen.text(), 10, "the refusal in the log")

            # Orthanc sends the first 8 instances, then the node is killed before the series is complete
            ids = sorted(pacs.get(f"/series/{pacs.get('/series')[0]}")["Instances"],
                         key=lambda i: int(pacs.get(f"/instances/{i}/simplified-tags").get("InstanceNumber", 0)))
            pacs.post("/modalities/medseg/store", {"Resources": ids[:8], "Synchronous": True})
            assert listen.instances(uids["series"]) == 8 and listen.status(uids["series"]) == "receiving"
            listen.kill()

            # restarted, it gets the whole series again (8 repeated, 11 new) and is killed while predicting
            listen.start()
            assert "1 series still receiving" in listen.text()
            pacs.post("/modalities/medseg/store", {"Resources": [pacs.get("/series")[0]], "Synchronous": True})
            assert listen.instances(uids["series"]) == len(series_files)
            wait_for(lambda: listen.status(uids["series"]) == "predicting", 60, "the prediction to start", 0.05)
            listen.kill()
            assert pacs.instances_by_modality().get("SEG") is None  # nothing was sent yet

            listen.start()
            assert "1 interrupted while predicting" in listen.text()
            wait_for(lambda: listen.status(uids["series"]) == "sent", 180, "the results to be sent")
            assert listen.instances(uids["series"]) == len(series_files)
            results = _results_reference(pacs, uids, sops)
            log = listen.text(whole=True)
            assert "ProstateX" not in log and str(pydicom.dcmread(series_files[0]).PatientName) not in log

            # the same series sent again: nothing new arrives, nothing is predicted or sent again
            pacs.post("/modalities/medseg/store", {"Resources": [pacs.get("/series")[0]], "Synchronous": True})
            time.sleep(3)
            assert listen.status(uids["series"]) == "sent"
            assert pacs.instances_by_modality() == {"MR": len(series_files), "SEG": 1, "RTSTRUCT": 1}
        finally:
            code = listen.stop()
        assert code == 0, listen.text()
        report = json.loads(_cli(["listen", "--status", "-o", tmp_path / "node"])[1])
        assert report["series"] == {"sent": 1} and report["sends"] == {"sent": 2} and report["failures"] == []
        # the SEG holds the prediction: it reads back on the source grid
        assert results["SEG"].NumberOfFrames >= 1


def test_a_failed_send_is_reported_and_retried_once(trained_run: Path, series_files: list[Path],
                                                    tmp_path: Path) -> None:
    """The destination archive is down when the results are ready; they reach it once when it comes up."""
    require_orthanc()
    port = free_port()
    uids = _uids(series_files)
    with Orthanc(tmp_path / "pacs", modalities={"medseg": ("MEDSEG", port)}, dicomweb=False) as pacs:
        pacs.upload(series_files)
        archive = Orthanc(tmp_path / "archive", aet="ARCHIVE", dicomweb=False)  # not started yet
        listen = Listen(tmp_path / "node", trained_run, port, [archive.node]).start()
        try:
            pacs.post("/modalities/medseg/store", {"Resources": [pacs.get("/series")[0]], "Synchronous": True})
            wait_for(lambda: "failed (attempt 2/10" in listen.text(), 180, "two failed attempts in the log")
            assert listen.status(uids["series"]) == "predicted"
            report = json.loads(_cli(["listen", "--status", "-o", tmp_path / "node"])[1])
            assert {f["destination"] for f in report["failures"]} == {archive.node}
            with archive:
                wait_for(lambda: listen.status(uids["series"]) == "sent", 120, "the retried send")
                assert archive.instances_by_modality() == {"SEG": 1, "RTSTRUCT": 1}
        finally:
            listen.stop()
    assert f"sent to {archive.node}" in listen.text(whole=True)


def test_predict_pulls_from_dicomweb_and_dimse_and_pushes_back(trained_run: Path, series_files: list[Path],
                                                               tmp_path: Path) -> None:
    require_orthanc(dicomweb=True)
    move_port = free_port()
    uids = _uids(series_files)
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in series_files}
    common = ["-m", trained_run, "--device", "cpu", "--no-tta", "--format", "dicom-seg,dicom-rtstruct",
              "--progress", "plain"]
    with Orthanc(tmp_path / "orthanc", modalities={"medseg": ("MEDSEG", move_port)}) as pacs:
        pacs.upload(series_files)

        # DICOMweb: WADO-RS in, STOW-RS out
        url = f"{pacs.dicomweb}/studies/{uids['study']}/series/{uids['series']}"
        code, text = _cli(["predict", "-i", url, "-o", tmp_path / "web", *common, "--send-to", pacs.dicomweb])
        assert code == 0, text
        assert len(list((tmp_path / "web" / "retrieved").rglob("*.dcm"))) == len(series_files)
        _results_reference(pacs, uids, sops)
        code, text = _cli(["predict", "-i", url, "-o", tmp_path / "web", *common, "--send-to", pacs.dicomweb])
        assert code == 0 and "1 already done" in text and "sent" not in text.split("already done")[1], text
        assert pacs.instances_by_modality() == {"MR": len(series_files), "SEG": 1, "RTSTRUCT": 1}
        _delete_results(pacs)

        # DIMSE: C-FIND + C-GET by StudyInstanceUID, C-STORE back
        code, text = _cli(["predict", "-i", pacs.node, "--study-uid", uids["study"], "-o", tmp_path / "get",
                           *common, "--send-to", pacs.node])
        assert code == 0, text
        _results_reference(pacs, uids, sops)
        _delete_results(pacs)

        # DIMSE: C-FIND by accession number + C-MOVE to our own port, C-STORE back
        code, text = _cli(["predict", "-i", pacs.node, "--accession", uids["accession"], "--retrieve", "move",
                           "--move-port", move_port, "-o", tmp_path / "move", *common, "--send-to", pacs.node])
        assert code == 0, text
        assert len(list((tmp_path / "move" / "retrieved").rglob("*.dcm"))) == len(series_files)
        _results_reference(pacs, uids, sops)

        # a source that matches nothing, and a destination that does not answer
        code, text = _cli(["predict", "-i", pacs.node, "--accession", "NO-SUCH", "-o", tmp_path / "none", *common])
        assert code == 1 and "has no series for AccessionNumber NO-SUCH" in text
        dead = f"NOBODY@127.0.0.1:{free_port()}"
        code, text = _cli(["predict", "-i", url, "-o", tmp_path / "web", *common, "--send-to", dead])
        assert code == 3 and "cannot be reached" in text and "2 result(s) not sent" in text


def _delete_results(pacs: Orthanc) -> None:
    for modality in ("SEG", "RTSTRUCT"):
        for tags in pacs.instances(modality):
            found = pacs.post("/tools/lookup", tags["SOPInstanceUID"].encode())
            pacs.request("DELETE", f"/instances/{found[0]['ID']}")


def test_addresses() -> None:
    from medseg.errors import PacsError
    from medseg.pacs.address import DicomWebTarget, RemoteNode, parse_destination, parse_dicomweb, parse_source

    assert parse_source("PACS@127.0.0.1:104") == RemoteNode("PACS", "127.0.0.1", 104)
    assert parse_source("PACS@[::1]:11112") == RemoteNode("PACS", "::1", 11112)
    assert str(RemoteNode("PACS", "::1", 11112)) == "PACS@[::1]:11112"
    assert parse_source("/data/scans") is None and parse_source("scan@2.nii.gz") is None
    assert parse_dicomweb("http://h:8042/dicom-web/studies/1.2/series/3.4") == DicomWebTarget(
        "http://h:8042/dicom-web", "1.2", "3.4")
    assert parse_dicomweb("https://h/wado/studies?AccessionNumber=A1") == DicomWebTarget("https://h/wado", None,
                                                                                          None, "A1")
    assert parse_destination("https://h/dicom-web/") == DicomWebTarget("https://h/dicom-web")
    with pytest.raises(PacsError, match="not a TCP port"):
        parse_source("PACS@host:70000")
    with pytest.raises(PacsError, match="not valid"):
        parse_source("A_TITLE_LONGER_THAN_16@host:104")
    with pytest.raises(PacsError, match="neither AET@HOST:PORT nor"):
        parse_destination("somewhere")
