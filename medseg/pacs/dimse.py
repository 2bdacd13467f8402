"""DIMSE with pynetdicom: C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE as a service user, and instance storage.

- :func:`echo`: verification of a remote node.
- :func:`store_files`: C-STORE of files (each in its own transfer syntax; one association).
- :func:`find_series`: C-FIND in the Study Root model at SERIES level, by Study/Series Instance UID or accession.
- :func:`get_series`: C-GET (the instances come back on the same association: medseg takes the SCP role for their
  storage classes).
- :func:`move_series`: C-MOVE to medseg's own AE title; the remote node must know that title with this host and
  ``--move-port``, where a temporary storage SCP receives the instances.
- :func:`store_instance`: the one way received instances reach the disk: ``ROOT/STUDY/SERIES/SOP.dcm`` written
  atomically, an instance already stored left as it is (receiving a series again changes nothing).

Every failure — no association, a rejection, a failure status — raises :class:`~medseg.errors.PacsError` naming the
node, with the DICOM status in hexadecimal.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medseg.errors import PacsError
from medseg.pacs.address import RemoteNode
from medseg.utils.files import atomic_write

#: Seconds to wait for an association, a DIMSE response and network activity.
TIMEOUT_S = 30.0
#: Status of a successful DIMSE operation; C-FIND/C-GET/C-MOVE also answer "pending" (0xFF00/0xFF01) before it.
SUCCESS = 0x0000
_PENDING = (0xFF00, 0xFF01)
#: C-STORE warnings (coercion, elements discarded, data set does not match SOP class): the instance is stored.
_STORE_WARNINGS = (0xB000, 0xB006, 0xB007)

_write_lock = threading.Lock()


def _ae(calling_aet: str) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    return ae


def _associate(ae: Any, node: RemoteNode, **kwargs: Any) -> Any:
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, **kwargs)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "cannot be reached (or aborted the association)"
        raise PacsError(f"{node} {why} (calling AE title {ae.ae_title})")
    return assoc


def echo(node: RemoteNode, calling_aet: str = "MEDSEG") -> None:
    """C-ECHO ``node``.

    Raises:
        PacsError: No association or a failure status.
    """
    from pynetdicom.sop_class import Verification

    ae = _ae(calling_aet)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, node)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or int(status.Status) != SUCCESS:
        raise PacsError(f"{node} answered C-ECHO with status {_status(status)}")


def _status(status: Any) -> str:
    return f"0x{int(status.Status):04X}" if status and "Status" in status else "none (no response)"


def store_files(files: Sequence[str | Path], node: RemoteNode, calling_aet: str = "MEDSEG") -> None:
    """C-STORE every file to ``node`` on one association.

    Raises:
        PacsError: No association, no accepted presentation context for a file, or a failure status (the message
            names the file).
    """
    import pydicom

    if not files:
        return
    datasets = [pydicom.dcmread(str(f)) for f in files]
    ae = _ae(calling_aet)
    for context in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(context[0], [context[1]])
    assoc = _associate(ae, node)
    try:
        for path, ds in zip(files, datasets, strict=True):
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else -1
            if code != SUCCESS and code not in _STORE_WARNINGS:
                raise PacsError(f"{node} refused the instance with status {_status(status)}", path)
    finally:
        if assoc.is_established:
            assoc.release()


def _query(study_uid: str | None, series_uid: str | None, accession: str | None) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid or ""
    ds.SeriesInstanceUID = series_uid or ""
    ds.AccessionNumber = accession or ""
    ds.Modality = ""
    ds.SeriesNumber = ""
    ds.NumberOfSeriesRelatedInstances = ""
    return ds


def find_series(node: RemoteNode, *, study_uid: str | None = None, series_uid: str | None = None,
                accession: str | None = None, calling_aet: str = "MEDSEG") -> list[dict[str, str]]:
    """C-FIND the series matching a Study Instance UID, a Series Instance UID or an accession number.

    Returns:
        One ``{"study_uid", "series_uid", "modality", "instances"}`` per series, in the node's order.

    Raises:
        PacsError: Nothing to search by, no association, or a failure status.
    """
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as Find

    if not (study_uid or series_uid or accession):
        raise PacsError("a DIMSE source needs --study-uid, --series-uid or --accession")
    if series_uid and not study_uid and not accession:
        # the Study Root model needs the study above a series: find it first
        studies = _find_studies_of_series(node, series_uid, calling_aet)
        return [s for study in studies for s in find_series(node, study_uid=study, series_uid=series_uid,
                                                            calling_aet=calling_aet)]
    ae = _ae(calling_aet)
    ae.add_requested_context(Find)
    assoc = _associate(ae, node)
    found: list[dict[str, str]] = []
    try:
        for status, identifier in assoc.send_c_find(_query(study_uid, series_uid, accession), Find):
            code = int(status.Status) if status and "Status" in status else -1
            if code in _PENDING and identifier is not None:
                found.append({"study_uid": str(identifier.get("StudyInstanceUID", "")),
                              "series_uid": str(identifier.get("SeriesInstanceUID", "")),
                              "modality": str(identifier.get("Modality", "")),
                              "instances": str(identifier.get("NumberOfSeriesRelatedInstances", ""))})
            elif code != SUCCESS:
                raise PacsError(f"{node} answered C-FIND with status {_status(status)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return [s for s in found if s["series_uid"]]


def _find_studies_of_series(node: RemoteNode, series_uid: str, calling_aet: str) -> list[str]:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind as Find

    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    ae = _ae(calling_aet)
    ae.add_requested_context(Find)
    assoc = _associate(ae, node)
    studies: list[str] = []
    try:
        for status, identifier in assoc.send_c_find(ds, Find):
            code = int(status.Status) if status and "Status" in status else -1
            if code in _PENDING and identifier is not None and identifier.get("StudyInstanceUID"):
                studies.append(str(identifier.StudyInstanceUID))
            elif code not in _PENDING and code != SUCCESS:
                raise PacsError(f"{node} answered C-FIND with status {_status(status)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return list(dict.fromkeys(studies))


def store_instance(ds: Any, root: Path) -> tuple[Path, bool]:
    """Store a received instance as ``root/STUDY/SERIES/SOP.dcm`` (atomically), unless it is already there.

    Returns:
        The file and whether it is new.

    Raises:
        PacsError: The instance lacks its UIDs.
        OutputError: The file cannot be written.
    """
    from medseg.io.naming import case_id

    uids = [str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    if not all(uids):
        raise PacsError("a received instance lacks its Study, Series or SOP Instance UID")
    path = root / case_id(uids[0]) / case_id(uids[1]) / f"{case_id(uids[2])}.dcm"
    with _write_lock:
        if path.is_file():
            return path, False
        atomic_write(path, lambda h: ds.save_as(h, enforce_file_format=True))
    return path, True


def _storage_contexts() -> list[Any]:
    """Storage presentation contexts for the image classes a segmentation reads (C-GET roles, a SCP's offer)."""
    from pynetdicom import StoragePresentationContexts

    return list(StoragePresentationContexts)


def _on_store(root: Path, received: list[Path]) -> Any:
    def handle(event: Any) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path, _ = store_instance(ds, root)
        except Exception:
            return 0xA700  # out of resources: the sender keeps the instance and reports the failure
        received.append(path)
        return SUCCESS

    return handle


def get_series(node: RemoteNode, study_uid: str, series_uid: str, root: Path,
               calling_aet: str = "MEDSEG") -> list[Path]:
    """C-GET one series into ``root`` (:func:`store_instance`).

    Returns:
        The files of the series' instances.

    Raises:
        PacsError: No association or a failure status.
    """
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as Get

    ae = _ae(calling_aet)
    ae.add_requested_context(Get)
    roles = []
    for context in _storage_contexts()[: 127]:
        ae.add_requested_context(context.abstract_syntax)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    received: list[Path] = []
    assoc = _associate(ae, node, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, _on_store(root, received))])
    query = _query(study_uid, series_uid, None)
    try:
        for status, _ in assoc.send_c_get(query, Get):
            code = int(status.Status) if status and "Status" in status else -1
            if code not in _PENDING and code != SUCCESS:
                raise PacsError(f"{node} answered C-GET with status {_status(status)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return received


def move_series(node: RemoteNode, study_uid: str, series_uid: str, root: Path, *, calling_aet: str = "MEDSEG",
                move_port: int, bind: str = "0.0.0.0") -> list[Path]:
    """C-MOVE one series to ``calling_aet``, received by a temporary storage SCP on ``move_port``.

    Raises:
        PacsError: The port cannot be opened, no association, or a failure status (e.g. 0xA801: the node does not
            know ``calling_aet`` as a move destination).
    """
    from pynetdicom import evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

    received: list[Path] = []
    scp = _ae(calling_aet)
    scp.supported_contexts = _storage_contexts()
    try:
        server = scp.start_server((bind, move_port), block=False,
                                  evt_handlers=[(evt.EVT_C_STORE, _on_store(root, received))])
    except OSError as exc:
        raise PacsError(f"cannot receive the C-MOVE on port {move_port}: {exc.strerror or exc}") from None
    try:
        ae = _ae(calling_aet)
        ae.add_requested_context(Move)
        assoc = _associate(ae, node)
        try:
            for status, _ in assoc.send_c_move(_query(study_uid, series_uid, None), calling_aet, Move):
                code = int(status.Status) if status and "Status" in status else -1
                if code not in _PENDING and code != SUCCESS:
                    raise PacsError(f"{node} answered C-MOVE to {calling_aet} with status {_status(status)}")
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        server.shutdown()
    return received


def retrieve(node: RemoteNode, root: Path, *, study_uid: str | None = None, series_uid: str | None = None,
             accession: str | None = None, method: str = "get", calling_aet: str = "MEDSEG",
             move_port: int | None = None) -> dict[str, list[Path]]:
    """Find the series (C-FIND) and retrieve each (C-GET or C-MOVE) into ``root``.

    Returns:
        SeriesInstanceUID → its files.

    Raises:
        PacsError: Nothing matches, or a query or retrieval fails.
    """
    if method not in ("get", "move"):
        raise PacsError(f"--retrieve must be get or move, not {method!r}")
    if method == "move" and not move_port:
        raise PacsError("C-MOVE needs --move-port: the port the node sends the instances to")
    series = find_series(node, study_uid=study_uid, series_uid=series_uid, accession=accession,
                         calling_aet=calling_aet)
    if not series:
        asked = ", ".join(f"{k} {v}" for k, v in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                                                  ("AccessionNumber", accession)) if v)
        raise PacsError(f"{node} has no series for {asked}")
    out: dict[str, list[Path]] = {}
    for item in series:
        if method == "get":
            files = get_series(node, item["study_uid"], item["series_uid"], root, calling_aet)
        else:
            files = move_series(node, item["study_uid"], item["series_uid"], root, calling_aet=calling_aet,
                                move_port=int(move_port or 0))
        out[item["series_uid"]] = _series_files(root, item, files)
    return out


def _series_files(root: Path, item: dict[str, str], received: Iterable[Path]) -> list[Path]:
    """The files of a series under ``root`` (those stored before too: a re-run that receives nothing new)."""
    from medseg.io.naming import case_id

    folder = root / case_id(item["study_uid"]) / case_id(item["series_uid"])
    files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    return files or sorted(set(received))
